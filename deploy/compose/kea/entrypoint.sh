#!/bin/sh
# Create Kea's schema on first start (kea-admin db-init pgsql), render the config with the database
# password from the environment, check it, then run kea-dhcp4 in the foreground.
set -eu
: "${KEA_DB_PASSWORD:?set KEA_DB_PASSWORD}"
KEA_DB_HOST="${KEA_DB_HOST:-postgres}"
KEA_DB_NAME="${KEA_DB_NAME:-kea}"
KEA_DB_USER="${KEA_DB_USER:-kea}"
# The password also goes into the provisioner's DSN and into JSON: keep it URL- and JSON-safe.
case "$KEA_DB_PASSWORD" in
  *[!A-Za-z0-9_.~-]*) echo "KEA_DB_PASSWORD may only contain A-Z a-z 0-9 _ . ~ -" >&2; exit 2 ;;
esac

export KEA_PIDFILE_DIR=/run/kea KEA_LOCKFILE_DIR=/run/kea
mkdir -p /run/kea

admin() { kea-admin "$1" pgsql -h "$KEA_DB_HOST" -u "$KEA_DB_USER" -p "$KEA_DB_PASSWORD" -n "$KEA_DB_NAME"; }
if ! admin db-version >/dev/null 2>&1; then
  echo "kea: no schema in database $KEA_DB_NAME yet, running kea-admin db-init pgsql"
  admin db-init
fi
echo "kea: schema version $(admin db-version)"

sed -e "s|@KEA_DB_PASSWORD@|$KEA_DB_PASSWORD|g" \
    -e "s|@KEA_DB_HOST@|$KEA_DB_HOST|g" \
    -e "s|@KEA_DB_NAME@|$KEA_DB_NAME|g" \
    -e "s|@KEA_DB_USER@|$KEA_DB_USER|g" \
    /etc/lazaretto/kea/kea-dhcp4.json > /run/kea/kea-dhcp4.conf
chmod 0600 /run/kea/kea-dhcp4.conf
kea-dhcp4 -t /run/kea/kea-dhcp4.conf
exec kea-dhcp4 -c /run/kea/kea-dhcp4.conf
