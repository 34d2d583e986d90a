#!/usr/bin/env bash
# Usage: deploy/start-supernode.sh --superlink HOST:PORT --ca CA_CRT --key PRIVATE_KEY
#          --partition-id I --num-partitions N [--port 9094]
#          [--device-class CLASS] [--distance-m M] [--bits-min B] [--bits-max B]
# Runs one flower-supernode in the foreground (exec: this PID is the SuperNode's), over TLS
# (CA_CRT verifies the SuperLink) and authenticated by PRIVATE_KEY (registered beforehand).
# Its device profile goes into --node-config; each profile key overrides the scenario's row
# for partition I (qfd_app/device.py). --port is the node's local runtime API: one per node
# on a host.
set -euo pipefail
[[ $# -ge 10 ]] || { sed -n '2,9s/^# //p' "$0" >&2; exit 2; }
port=9094 config=""
while (($#)); do
  case $1 in
    --superlink) superlink=$2 ;;
    --ca) ca=$2 ;;
    --key) key=$2 ;;
    --port) port=$2 ;;
    --partition-id | --num-partitions | --distance-m | --bits-min | --bits-max) config+=" ${1#--}=$2" ;;
    --device-class) config+=" device-class=\"$2\"" ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
exec flower-supernode --superlink "$superlink" --root-certificates "$ca" --auth-supernode-private-key "$key" \
  --port "$port" --node-config "${config# }"
