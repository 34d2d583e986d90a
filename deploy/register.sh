#!/usr/bin/env bash
# Usage: deploy/register.sh CONNECTION KEY.pub...
# Registers each SuperNode public key with the SuperLink of CONNECTION (a [superlink.NAME]
# entry of $FLWR_HOME/config.toml; deploy/add-connection.sh). Unregistered keys are refused.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,4s/^# //p' "$0" >&2; exit 2; }
connection=$1; shift
for pub in "$@"; do
  flwr supernode register "$pub" "$connection"
done
