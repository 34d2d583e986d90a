#!/usr/bin/env bash
# Usage: [SUPERLINK_HOST=0.0.0.0] [SUPERLINK_PORT=9091] deploy/start-superlink.sh CERT_DIR DATABASE [FLAG...]
# Runs flower-superlink in the foreground (exec: this PID is the SuperLink's) with TLS from
# CERT_DIR (ca.crt, server.pem, server.key; deploy/make-certs.sh), SuperNode authentication
# (only registered keys connect), its state in the DATABASE file, and no `uv sync` of app
# dependencies (the host's environment has them). SuperNodes and `flwr` both use HOST:PORT.
# FLAGs go to flower-superlink as they are (e.g. --log-file superlink.log).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,7s/^# //p' "$0" >&2; exit 2; }
certs=$1 database=$2; shift 2
exec flower-superlink \
  --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
  --enable-supernode-auth --database "$database" --disable-runtime-dependency-installation \
  --host "${SUPERLINK_HOST:-0.0.0.0}" --port "${SUPERLINK_PORT:-9091}" "$@"
