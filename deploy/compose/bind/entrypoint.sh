#!/bin/sh
# Write the TSIG key from the environment, seed the dynamic policy zones on first start (they live
# in a volume: quarantine entries survive restarts), render the portal's address record, then run
# named in the foreground as user bind, logging to stderr.
set -eu
: "${LAZARETTO_TSIG_SECRET:?set LAZARETTO_TSIG_SECRET (base64, e.g. openssl rand -base64 32)}"
TSIG_KEY_NAME=lazaretto-rpz  # named.conf grants updates to this key name
TSIG_ALGORITHM="${LAZARETTO_TSIG_ALGORITHM:-hmac-sha256}"
PORTAL_IP="${LAZARETTO_PORTAL_IP:-127.0.0.1}"
case "$LAZARETTO_TSIG_SECRET" in
  *[!A-Za-z0-9+/=]*) echo "LAZARETTO_TSIG_SECRET must be base64" >&2; exit 2 ;;
esac

CONF=/etc/lazaretto/bind
RUN=/run/named
ZONES=/var/lib/bind/lazaretto
install -d -o bind -g bind -m 0750 "$RUN" "$ZONES"

umask 027
printf 'key "%s" {\n    algorithm %s;\n    secret "%s";\n};\n' \
  "$TSIG_KEY_NAME" "$TSIG_ALGORITHM" "$LAZARETTO_TSIG_SECRET" > "$RUN/tsig.key"
printf '$TTL 300\n@ SOA localhost. hostmaster.localhost. ( 1 3600 600 86400 60 )\n  NS localhost.\nportal A %s\n' \
  "$PORTAL_IP" > "$RUN/lazaretto.test.db"
chown root:bind "$RUN/tsig.key" "$RUN/lazaretto.test.db"

for zone in allow.rpz quarantine.rpz; do
  if [ ! -e "$ZONES/$zone.db" ]; then
    cp "$CONF/$zone.db" "$ZONES/$zone.db"
    chown bind:bind "$ZONES/$zone.db"
  fi
done

named-checkconf -z "$CONF/named.conf"
exec named -g -u bind -c "$CONF/named.conf"
