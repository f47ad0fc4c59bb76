-- The packet filter's mail block of a spam-only case (`smtp`, an address) and a household's modem
-- handed the filtered config file (`modem`, a MAC) are recorded per layer like the other elements.
ALTER TABLE garden_desired DROP CONSTRAINT garden_desired_kind_check;
ALTER TABLE garden_desired ADD CONSTRAINT garden_desired_kind_check
    CHECK (kind IN ('mac', 'ip', 'smtp', 'modem'));
