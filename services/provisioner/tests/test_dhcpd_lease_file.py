"""Parsing dhcpd's leases file (pure logic; the real file is read in test_dhcpd_lease_history.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from provisioner.dhcpd_leases import parse_blocks

# As dhcpd 4.4 writes it (dhcpd.leases(5)): a lease, an OMAPI subclass, a rewritten lease, a block cut short.
FILE = b"""# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;

lease 10.77.0.100 {
  starts 2 2026/12/01 00:10:00;
  ends 2 2026/12/01 00:20:00;
  cltt 2 2026/12/01 00:10:00;
  binding state active;
  next binding state free;
  hardware ethernet 02:00:00:AA:00:01;
  uid "\\001\\002\\000\\000\\252\\000\\001";
}
subclass "quarantine" 01:02:00:00:aa:00:01 { dynamic; }
lease 10.77.0.100 {
  starts epoch 1796084400; # Mon Dec 01 00:20:00 2026
  ends never;
  binding state free;
  hardware ethernet 02:00:00:aa:00:01;
}
lease 10.77.0.101 {
  starts 2 2026/12/01 00:21:00;
"""


def test_complete_blocks_in_file_order_and_a_block_being_written_is_left_for_later() -> None:
    blocks, consumed = parse_blocks(FILE)
    assert [(b.ip, b.state, b.mac) for b in blocks] == [
        ("10.77.0.100", "active", "02:00:00:aa:00:01"),
        ("10.77.0.100", "free", "02:00:00:aa:00:01"),
    ]
    assert blocks[0].starts == datetime(2026, 12, 1, 0, 10, tzinfo=UTC)
    assert blocks[0].ends == datetime(2026, 12, 1, 0, 20, tzinfo=UTC)
    assert blocks[1].starts == datetime(2026, 12, 1, 0, 20, tzinfo=UTC)
    assert blocks[1].ends is not None
    assert blocks[1].ends.year == 9999
    assert FILE[consumed:].lstrip().startswith(b"lease 10.77.0.101 {")
    # The rest, once dhcpd finished writing it, parses on its own
    rest, _ = parse_blocks(
        FILE[consumed:] + b"  binding state active;\n  hardware ethernet 02:00:00:aa:00:02;\n}\n"
    )
    assert [(b.ip, b.mac) for b in rest] == [("10.77.0.101", "02:00:00:aa:00:02")]
    assert rest[0].ends is None
