#!/usr/bin/env bash
# Usage: deploy/make-certs.sh OUT_DIR ADDRESS...
# A private CA (ca.key, ca.crt) and a SuperLink certificate signed by it (server.key, server.pem)
# valid for every ADDRESS (IPs and/or DNS names: what SuperNodes and `flwr` dial) and for
# 127.0.0.1, which the SuperLink's own SuperExec dials when it listens on 0.0.0.0 or 127.0.0.1.
# Copy ca.crt to every SuperNode and `flwr` host; the keys never leave this host.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,6s/^# //p' "$0" >&2; exit 2; }
out=$1; shift
san=()
for a in "$@" 127.0.0.1; do
  if [[ $a =~ ^[0-9.]+$ || $a == *:* ]]; then entry="IP:$a"; else entry="DNS:$a"; fi
  [[ " ${san[*]} " == *" $entry "* ]] || san+=("$entry")
done
san=$(IFS=,; echo "${san[*]}")
mkdir -p "$out" && cd "$out"
openssl req -x509 -newkey rsa:4096 -sha256 -days 3650 -nodes -keyout ca.key -out ca.crt \
  -subj "/CN=qfd CA" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -keyout server.key -out server.csr -subj "/CN=$1" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem -days 825 \
  -sha256 -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$san") 2>/dev/null
rm -f server.csr ca.srl
chmod 600 ca.key server.key
echo "$out: ca.crt server.pem server.key ($san)"
