#!/usr/bin/env bash
# The GPU path, checked on a machine with a CUDA GPU and this repository (no internet needed
# beyond the package index): install a CUDA torch in its own venv, run the default app with
# a quarter GPU per ClientApp for a few rounds, and the `small` model at 32x32 for a few
# rounds, and write wall time per round, peak GPU memory and FID into a results file.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [ROUNDS]     (default: ./gpu-check, 3 rounds)
#
# OUT_DIR/results.md holds the table for docs/benchmarks.md; OUT_DIR/<case>/ the run
# directories and logs. Every process it starts is stopped by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="$(realpath -m "${1:-gpu-check}")"
ROUNDS="${2:-3}"
VENV="${GPU_VENV:-.venv-gpu}"
mkdir -p "$OUT"

command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi on this machine" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # torch from the package index is a CUDA build on Linux x86-64 (the CPU wheel is what the
  # README pins for CPU machines); the same version as the CPU path.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e .
fi
"$VENV/bin/python" - <<'EOF' | tee -a "$OUT/gpu.txt"
import torch
assert torch.cuda.is_available(), "this torch sees no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

export HF_HUB_OFFLINE=1 TORCHDYNAMO_DISABLE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
       FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

WATCH=""
trap '[ -n "$WATCH" ] && kill "$WATCH" 2>/dev/null || true' EXIT

run_case() {  # name, run-config, federation-config
  local name="$1" config="$2" federation="$3"
  mkdir -p "$OUT/$name"
  # a watcher samples the GPU's memory in use every half second while this case runs
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/$name/memory.csv" &
  WATCH=$!
  FLWR_HOME="$OUT/$name/flwr-home" "$VENV/bin/python" - "$OUT/$name" "$config" "$federation" <<'EOF'
import sys
from pathlib import Path
from qfd_app.runs.launch import flwr_run, superlink
out, config, federation = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with superlink(out / "flwr-home") as env, open(out / "run.log", "w") as log:
    done = flwr_run(env, f"{config} output-dir='{out / 'runs'}'", federation, timeout_s=3600,
                    on_line=lambda line: (log.write(line + "\n"), "[qfd]" in line and print(line)))
sys.exit(done.returncode)
EOF
  kill "$WATCH" 2>/dev/null || true
  WATCH=""
  echo "$name" >> "$OUT/cases.txt"
}

: > "$OUT/cases.txt"
run_case default-quarter-gpu "num-server-rounds=$ROUNDS eval-interval=$ROUNDS device='cuda'" \
  "num-supernodes=10 client-resources-num-cpus=1 client-resources-num-gpus=0.25"
run_case small-32 "num-server-rounds=$ROUNDS eval-interval=$ROUNDS device='cuda' model='small' image-size=32" \
  "num-supernodes=10 client-resources-num-cpus=1 client-resources-num-gpus=0.25"

"$VENV/bin/python" - "$OUT" <<'EOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])


def peak_mib(path):
    values = [float(v) for v in path.read_text().split() if v.replace(".", "", 1).isdigit()]
    return max(values, default=float("nan"))


lines = ["| case | rounds | wall s per round (mean) | peak GPU memory MiB (whole GPU) | final FID |",
         "|---|---:|---:|---:|---:|"]
for case in (out / "cases.txt").read_text().split("\n"):
    if not case.strip():
        continue
    name = case.split()[0]
    run = next((out / name / "runs").glob("*/summary.json")).parent
    rounds = list(csv.DictReader(open(run / "rounds.csv")))
    per_round = sum(float(r["round_s"]) for r in rounds) / len(rounds)
    summary = json.loads((run / "summary.json").read_text())
    lines.append(f"| {name} | {len(rounds)} | {per_round:.1f} | {peak_mib(out / name / 'memory.csv'):.0f} | "
                 f"{summary.get('final_fid', float('nan')):.2f} |")
gpu = (out / "gpu.txt").read_text().strip().replace("\n", "; ")
text = f"GPU check ({gpu}):\n\n" + "\n".join(lines) + "\n"
(out / "results.md").write_text(text)
print(text)
EOF
