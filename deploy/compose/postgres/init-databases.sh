#!/bin/sh
# Runs once, on an empty data directory (docker-entrypoint-initdb.d): a database and a role of its own
# for each stateful service (policy's cases, cmts-agent's inventory, provisioner's desired state; PUBLIC may not connect, so neither
# service can read the other's tables), and Kea's role and database (its schema is created by
# `kea-admin db-init` in the kea container). Passwords come from the container's environment, never
# from this file.
set -eu
: "${LAZARETTO_POLICY_DB_PASSWORD:?set LAZARETTO_POLICY_DB_PASSWORD}"
: "${LAZARETTO_CMTS_DB_PASSWORD:?set LAZARETTO_CMTS_DB_PASSWORD}"
: "${LAZARETTO_PROVISIONER_DB_PASSWORD:?set LAZARETTO_PROVISIONER_DB_PASSWORD}"
: "${KEA_DB_PASSWORD:?set KEA_DB_PASSWORD}"

# psql variables (:'name') quote the passwords as SQL literals.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v policy_password="$LAZARETTO_POLICY_DB_PASSWORD" -v cmts_password="$LAZARETTO_CMTS_DB_PASSWORD" \
     -v provisioner_password="$LAZARETTO_PROVISIONER_DB_PASSWORD" \
     -v kea_password="$KEA_DB_PASSWORD" <<'SQL'
CREATE ROLE lazaretto_policy LOGIN PASSWORD :'policy_password';
CREATE DATABASE lazaretto_policy OWNER lazaretto_policy;
CREATE ROLE lazaretto_cmts LOGIN PASSWORD :'cmts_password';
CREATE DATABASE lazaretto_cmts OWNER lazaretto_cmts;
CREATE ROLE lazaretto_provisioner LOGIN PASSWORD :'provisioner_password';
CREATE DATABASE lazaretto_provisioner OWNER lazaretto_provisioner;
CREATE ROLE kea LOGIN PASSWORD :'kea_password';
CREATE DATABASE kea OWNER kea;
-- The provisioner (role kea) writes host reservations and reads leases in this database.
REVOKE ALL ON DATABASE kea FROM PUBLIC;
REVOKE ALL ON DATABASE lazaretto_policy FROM PUBLIC;
REVOKE ALL ON DATABASE lazaretto_cmts FROM PUBLIC;
REVOKE ALL ON DATABASE lazaretto_provisioner FROM PUBLIC;
SQL
