"""Throughput of the `uniform` codec against its previous format (fp32 min and step per
block of 64 values at b ≤ 3, 256 at b ≥ 4), interleaved in one process.

The old module is read from git (commit `OLD_COMMIT`, the last one before the two-level
scales), so only the codec's own work differs: both use today's bit-packing and
`Codec.decode` (the old decode's own output check is dropped, as `Codec.decode` does
it). Each repeat times every codec once in turn, so background load hits all alike.
Times are the CPU time of this (single) thread, `time.thread_time`, so waiting for a
core on a loaded machine does not count; the table reports medians, and new/old is the
number that transfers between machines.

Usage: ``python benchmarks/bench_uniform_vs_old.py [--values N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qfd_app.quant import get_codec  # noqa: E402

OLD_COMMIT = "36d5e17"
OLD_BLOCK = {2: 64, 4: 256, 8: 256}  # the old default block size at each b


def load_old_uniform() -> types.ModuleType:
    """The old `uniform` module, adapted to today's `Codec` interface."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:qfd_app/quant/uniform.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for before, after in [
        ("from .", "from qfd_app.quant."),
        ("    def decode(self, encoded", "    def _decode(self, encoded"),
        ("        self._check_finite_output(out)\n", ""),
        (
            "        return out.view(encoded.shape).to(encoded.dtype)",
            "        return out",
        ),
    ]:
        if before not in source:
            raise RuntimeError(f"The old module no longer contains {before!r}.")
        source = source.replace(before, after)
    module = types.ModuleType("uniform_old")
    exec(compile(source, f"{OLD_COMMIT}:uniform.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=4_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    old = load_old_uniform()
    x = torch.randn(args.values, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    megabytes = x.numel() * 4 / 1e6
    codecs = {}
    for bits in args.bits:
        codecs[bits, "old"] = old.UniformCodec(bits, OLD_BLOCK.get(bits, 256))
        codecs[bits, "new"] = get_codec("uniform", bits)
    encoded = {key: codec.encode(x, generator) for key, codec in codecs.items()}
    times = {key: ([], []) for key in codecs}
    for _ in range(args.repeats):
        for key, codec in codecs.items():
            start = time.thread_time()
            codec.encode(x, generator)
            middle = time.thread_time()
            codec.decode(encoded[key])
            end = time.thread_time()
            times[key][0].append(middle - start)
            times[key][1].append(end - middle)
    load = os.getloadavg()[0]
    print(
        f"{args.values:,} N(0,1) values, 1 thread, median thread CPU time of "
        f"{args.repeats} interleaved repeats, load average {load:.1f}; MB/s of "
        "float32 input"
    )
    print(
        "| b | encode old | encode new | new/old | decode old | decode new | new/old |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bits in args.bits:
        row = [str(bits)]
        for phase in (0, 1):
            old_rate, new_rate = (
                megabytes / statistics.median(times[bits, kind][phase])
                for kind in ("old", "new")
            )
            row += [
                f"{old_rate:,.0f}",
                f"{new_rate:,.0f}",
                f"{new_rate / old_rate:.2f}",
            ]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
