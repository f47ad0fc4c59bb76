#!/bin/sh
# Runs once, on an empty data directory (docker-entrypoint-initdb.d): the application role and
# database, and Kea's role and database (its schema is created by `kea-admin db-init` in the kea
# container). Passwords come from the container's environment, never from this file.
set -eu
: "${LAZARETTO_DB_PASSWORD:?set LAZARETTO_DB_PASSWORD}"
: "${KEA_DB_PASSWORD:?set KEA_DB_PASSWORD}"

# psql variables (:'name') quote the passwords as SQL literals.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v lazaretto_password="$LAZARETTO_DB_PASSWORD" -v kea_password="$KEA_DB_PASSWORD" <<'SQL'
CREATE ROLE lazaretto LOGIN PASSWORD :'lazaretto_password';
CREATE DATABASE lazaretto OWNER lazaretto;
CREATE ROLE kea LOGIN PASSWORD :'kea_password';
CREATE DATABASE kea OWNER kea;
-- The provisioner (role kea) writes host reservations and reads leases in this database.
REVOKE ALL ON DATABASE kea FROM PUBLIC;
REVOKE ALL ON DATABASE lazaretto FROM PUBLIC;
SQL
