"""Scale benchmark: 1 000 registered devices, 50 sampled per round, on one machine.

Runs `scenarios/many-devices.toml` (1 000 devices) with `fraction-train = 0.05` for
2 rounds in Flower's simulation engine and records the wall time per round, the phase
times of rounds.csv and the peak resident memory of every process of the run (SuperLink,
ServerApp, Ray and its workers; from /proc, so Linux only).

    # print the table
    python benchmarks/bench_scale.py
    # also replace the block in docs/benchmarks.md
    python benchmarks/bench_scale.py --write-docs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from simrun import ROOT, machine, per_round_table, simulate, write_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--run-config", default="local-epochs=1", help="more run-config overrides"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = (
            f"scenario='many-devices' num-server-rounds={args.rounds} "
            f"fraction-train={args.fraction} eval-interval=0 eval-samples=64 "
            f"final-eval-samples=0 sample-steps=10 {args.run_config}"
        )
        run_dir, peak, wall = simulate(Path(tmp), config, num_supernodes=args.devices)
        table = per_round_table(run_dir)
    text = (
        f"`python benchmarks/bench_scale.py` ({args.devices} devices registered, "
        f"{round(args.devices * args.fraction)} sampled per round, {args.rounds} "
        f"rounds, `{args.run_config}`) on {machine()}: whole run {wall:.0f} s, **peak "
        f"memory of all its processes {peak / 2**30:.2f} GiB**. Seconds per phase and "
        f"round (round 1 also queries all {args.devices} devices once to learn who "
        f"they are; the last round evaluates):\n\n{table}"
    )
    print(text)
    if args.write_docs:
        write_block(ROOT / "docs" / "benchmarks.md", "scale", text)


if __name__ == "__main__":
    main()
