"""Round benchmark: where the wall time of a default round goes, phase by phase.

Runs the default app (10 virtual devices, 1 CPU each, 2 sampled per round, ondemand on the
default scenario) for a few rounds in Flower's simulation engine and reads the phase times
every run writes into rounds.csv: the server's query and solve, the slowest device's
training and encoding (host wall time), decoding (with the ledger), aggregation,
checkpoint, evaluation, and what is left (Flower messaging, Ray dispatch, model
(de)serialisation on both sides, cores idle while the other device finishes). The first
round is left out (it also discovers the devices).

    python benchmarks/bench_round.py                 # print the table
    python benchmarks/bench_round.py --write-docs    # also replace the block in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from simrun import ROOT, phase_table, simulate, write_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--run-config", default="", help="more run-config overrides")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = f"num-server-rounds={args.rounds} eval-interval=0 {args.run_config}"
        run_dir, peak, wall = simulate(Path(tmp), config, num_supernodes=10)
        table, mean = phase_table(run_dir)
    text = (
        f"`python benchmarks/bench_round.py --rounds {args.rounds}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; rounds 2–{args.rounds} of the default run (the last one evaluates):\n\n{table}\n\n"
        f"Non-training share (everything but the devices' training and the server's evaluation): "
        f"**{100 * mean['non_training_share']:.1f} %** of the round. Whole run: {wall:.0f} s, "
        f"peak memory of all its processes {peak / 2**30:.2f} GiB."
    )
    print(text)
    if args.write_docs:
        write_block(ROOT / "docs" / "benchmarks.md", "round", text)


if __name__ == "__main__":
    main()
