#!/bin/sh
# Healthy when kea-dhcp4 answers status-get on its control socket with result 0.
set -eu
reply=$(printf '{"command": "status-get"}' | socat -t 3 - UNIX-CONNECT:/run/kea/kea4.sock)
echo "$reply" | grep -Eq '"result": *0'
