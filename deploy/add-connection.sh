#!/usr/bin/env bash
# Usage: deploy/add-connection.sh NAME HOST:PORT CA_CRT
# Adds the TLS connection NAME to the SuperLink at HOST:PORT to $FLWR_HOME/config.toml
# (default ~/.flwr/config.toml), for `flwr run . NAME`, `flwr supernode register KEY.pub NAME`, ...
set -euo pipefail
[[ $# -eq 3 ]] || { sed -n '2,4s/^# //p' "$0" >&2; exit 2; }
config=${FLWR_HOME:-$HOME/.flwr}/config.toml
mkdir -p "$(dirname "$config")"
printf '\n[superlink.%s]\naddress = "%s"\nroot-certificates = "%s"\n' "$1" "$2" "$(realpath "$3")" >>"$config"
echo "$config: [superlink.$1] -> $2"
