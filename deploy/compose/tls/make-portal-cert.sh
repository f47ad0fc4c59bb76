#!/bin/sh
# A local CA and a certificate for the portal's name (RFC 8908: the API must be served over TLS a
# device can verify). Made once into $TLS_DIR and kept across restarts; install ca.pem on the devices
# that must trust the portal, or replace portal.pem/portal-key.pem with a publicly trusted pair.
#   make-portal-cert [--once]    (--once: make the files and exit instead of staying up for compose)
set -eu
NAME="${LAZARETTO_PORTAL_NAME:-portal.lazaretto.test}"
DIR="${TLS_DIR:-/tls}"
OWNER="${TLS_KEY_OWNER:-10001:10001}"   # the services' user in deploy/Dockerfile

if [ ! -s "$DIR/portal.pem" ] || [ ! -s "$DIR/portal-key.pem" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (
    umask 077
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -sha256 \
      -subj "/CN=Lazaretto local CA" -keyout "$DIR/ca-key.pem" -out "$DIR/ca.pem" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
      -subj "/CN=$NAME" -keyout "$DIR/portal-key.pem" -out "$work/portal.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' \
      "$NAME" >"$work/portal.ext"
    openssl x509 -req -in "$work/portal.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" \
      -CAcreateserial -CAserial "$work/ca.srl" -days 825 -sha256 -extfile "$work/portal.ext" \
      -out "$DIR/portal.pem" 2>/dev/null
  )
  chmod 0644 "$DIR/ca.pem" "$DIR/portal.pem"
  # Only the portal's user reads the key; the CA key stays with root in this volume.
  chown "$OWNER" "$DIR/portal-key.pem" 2>/dev/null || true
  echo "make-portal-cert: made a local CA ($DIR/ca.pem) and a certificate for $NAME"
fi

[ "${1:-}" = "--once" ] && exit 0
exec sleep infinity
