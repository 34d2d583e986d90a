#!/usr/bin/env bash
# Usage: deploy/make-keys.sh OUT_DIR NAME...
# One ECDSA P-384 key pair per SuperNode (OUT_DIR/NAME, OUT_DIR/NAME.pub), as Flower's SuperNode
# authentication needs. NAME goes to its SuperNode (--auth-supernode-private-key); NAME.pub is
# registered with the SuperLink (deploy/register.sh).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,5s/^# //p' "$0" >&2; exit 2; }
out=$1; shift
mkdir -p "$out"
for name in "$@"; do
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "qfd-$name" -f "$out/$name"
done
echo "$out: $* (+ .pub)"
