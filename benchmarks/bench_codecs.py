"""Codec benchmark: throughput, bits per parameter on the wire and relative error.

For every codec (and `uniform` at b ∈ {1, 2, 3, 4, 6, 8, 12, 16}, with fp32 and bf16
scales) it encodes and decodes one tensor of 10M float32 values (a seeded standard
normal, the shape of a model update) and reports

- encode / decode throughput in MB/s of float32 input (10M values = 40 MB), best of
  `--repeats` runs interleaved across codecs, for each thread count in `--threads`;
- bits per parameter on the wire (`size_bytes` · 8 / n) and the part of it that is
  scales (bits/param − b);
- the relative squared error ‖x̂ − x‖² / ‖x‖².

Run from the repository root::

    # print the table
    .venv/bin/python benchmarks/bench_codecs.py
    # and put it in docs/benchmarks.md
    .venv/bin/python benchmarks/bench_codecs.py --write

On a machine shared with other work, prefix ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP
workers otherwise stall every multi-threaded op behind the other processes (measured
here: uniform b = 4 encode with 2 threads 180 MB/s spinning, 620 MB/s passive).

`--write` replaces the block between ``<!-- codecs:start -->`` and
``<!-- codecs:end -->``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from qfd_app.quant import get_codec  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START, END = "<!-- codecs:start -->", "<!-- codecs:end -->"
UNIFORM_BITS = (1, 2, 3, 4, 6, 8, 12, 16)
# Targets of issue 3, on this 2-core CPU, for uniform at b = 4 (overhead: every b).
TARGET_ENCODE_MBS, TARGET_DECODE_MBS = 400, 1000
TARGET_OVERHEAD = {"float32": 0.251, "bfloat16": 0.23}  # + a short last super-block


@dataclass
class Row:
    label: str
    bits: int
    scales: str
    bits_per_param: float
    relative_mse: float
    encode_mbs: dict[int, float]
    decode_mbs: dict[int, float]
    reference: bool = False  # a timing reference, not a codec


def codec_specs():
    """(label, codec, scales) for every row of the table."""
    for scale_dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        for bits in UNIFORM_BITS:
            yield "uniform", get_codec("uniform", bits, scale_dtype=scale_dtype), short
    for name in ("fp32", "bf16", "fp16"):
        yield name, get_codec(name), "–"
    for name in ("bnb-blockwise8", "bnb-nf4", "bnb-fp4"):
        codec = get_codec(name)
        yield name, codec, f"fp32 absmax / {codec.block_size}"


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(specs, values, threads, repeats) -> list[Row]:
    """Time every codec `repeats` times and keep the best run of each.

    The runs are interleaved (round r times every codec once before round r + 1), so a
    burst of load from other work depresses one run of many codecs rather than every
    run of one codec.
    """
    megabytes = values.numel() * 4 / 1e6
    generator = torch.Generator().manual_seed(0)
    rows, encodings = [], []
    for label, codec, scales in specs:
        encoded = codec.encode(values, generator)  # also warms up (first-call costs)
        decoded = codec.decode(encoded)
        error = (decoded.double() - values.double()).square().sum()
        rows.append(
            Row(
                label,
                codec.bits,
                scales,
                bits_per_param=encoded.nbytes * 8 / values.numel(),
                relative_mse=float(error / values.double().square().sum()),
                encode_mbs={count: 0.0 for count in threads},
                decode_mbs={count: 0.0 for count in threads},
            )
        )
        encodings.append(encoded)
    # reference: allocating and first-touching a float32 output as large as the input,
    # which every decode pays (page faults), so its speed caps decode throughput
    reference = Row(
        "(allocate + fill output)",
        bits=32,
        scales="–",
        bits_per_param=32.0,
        relative_mse=0.0,
        encode_mbs={count: 0.0 for count in threads},
        decode_mbs={count: 0.0 for count in threads},
        reference=True,
    )
    for _ in range(repeats):
        for count in threads:
            torch.set_num_threads(count)
            fill = megabytes / seconds(lambda: torch.empty(values.numel()).fill_(0))
            reference.decode_mbs[count] = max(reference.decode_mbs[count], fill)
            for row, (_, codec, _), encoded in zip(rows, specs, encodings, strict=True):
                encode = megabytes / seconds(lambda: codec.encode(values, generator))
                decode = megabytes / seconds(lambda: codec.decode(encoded))
                row.encode_mbs[count] = max(row.encode_mbs[count], encode)
                row.decode_mbs[count] = max(row.decode_mbs[count], decode)
    return [*rows, reference]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read())
            model = names[0].strip() if names else model
    except OSError:
        pass
    import bitsandbytes

    return (
        f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}"
    )


def table(rows: list[Row], threads: list[int]) -> str:
    speed_headers = [
        f"{kind} MB/s ({count} thr)"
        for count in threads
        for kind in ("encode", "decode")
    ]
    header = [
        "codec",
        "b",
        "scales",
        "bits/param",
        "overhead",
        "rel. MSE",
        *speed_headers,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        speeds = [
            f"{mbs[count]:,.0f}" if mbs[count] else "–"
            for count in threads
            for mbs in (row.encode_mbs, row.decode_mbs)
        ]
        cells = [
            row.label,
            str(row.bits),
            row.scales,
            f"{row.bits_per_param:.3f}",
            f"{row.bits_per_param - row.bits:.3f}",
            f"{row.relative_mse:.2e}",
        ]
        if row.reference:
            cells = [row.label] + ["–"] * 5
        cells += speeds
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_summary(rows: list[Row], threads: list[int]) -> list[str]:
    """One line per target of the issue, with the measured value and pass/miss."""
    lines = []
    for row in rows:
        if row.label != "uniform" or row.bits != 4:
            continue
        scale_dtype = "float32" if row.scales == "fp32" else "bfloat16"
        overhead = row.bits_per_param - row.bits
        verdict = "met" if overhead <= TARGET_OVERHEAD[scale_dtype] else "MISSED"
        lines.append(
            f"- uniform b = 4, {row.scales} scales: overhead {overhead:.3f} bits/param "
            f"(target ≤ {TARGET_OVERHEAD[scale_dtype]}): {verdict}"
        )
        if row.scales == "fp32":
            for count in threads:
                encode, decode = row.encode_mbs[count], row.decode_mbs[count]
                encode_verdict = "met" if encode >= TARGET_ENCODE_MBS else "MISSED"
                decode_verdict = "met" if decode >= TARGET_DECODE_MBS else "MISSED"
                lines.append(
                    f"- uniform b = 4, {count} thread(s): encode {encode:,.0f} "
                    f"MB/s (target ≥ {TARGET_ENCODE_MBS}: {encode_verdict}), "
                    f"decode {decode:,.0f} MB/s (target ≥ {TARGET_DECODE_MBS}: "
                    f"{decode_verdict})"
                )
    return lines


def report(rows, threads, args, load_before, load_after) -> str:
    policy = os.environ.get("OMP_WAIT_POLICY")
    command = " ".join(
        ([f"OMP_WAIT_POLICY={policy}"] if policy else [])
        + [".venv/bin/python benchmarks/bench_codecs.py", *sys.argv[1:]]
    )
    return "\n".join(
        [
            f"Measured {datetime.date.today().isoformat()} on {machine()}.",
            "",
            f"Command: `{command}`",
            "",
            f"Input: {args.values:,} float32 values drawn from a standard normal (seed "
            f"0); throughput is MB of float32 input per second, best of {args.repeats} "
            "runs (interleaved across codecs). bits/param counts every byte "
            "`size_bytes` puts on the wire; overhead = bits/param − b (the scales). "
            "uniform uses sub-blocks of 48 values in super-blocks of 3072 at every b "
            "(two-level scales, see uniform.py); bf16 super-block scales save 1/48 "
            "bit per value. Machine: a 2-core CPU VM under shared load.",
            "",
            f"Load average (1 min) before / after: {load_before:.2f} / "
            f"{load_after:.2f}. Other work shared this 2-core machine while it ran, "
            "so throughput may be depressed, above all with 2 threads: every parallel "
            "op waits for both cores. OpenMP's default of spinning while waiting "
            "makes that much worse under contention; `OMP_WAIT_POLICY=PASSIVE` (in "
            "the command when set) avoids it. Decoding writes a fresh 40 MB output "
            "whose first touch costs page faults; the last row times just that, "
            "which caps every decode column and varies with the machine's memory "
            "state between runs.",
            "",
            table(rows, threads),
            "",
            "Targets (issue 3):",
            "",
            *target_summary(rows, threads),
        ]
    )


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} lacks the markers {START} … {END}.")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=10_000_000, help="tensor size")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="torch threads"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs; the best is kept"
    )
    parser.add_argument(
        "--write", action="store_true", help="update docs/benchmarks.md"
    )
    args = parser.parse_args()

    values = torch.randn(args.values, generator=torch.Generator().manual_seed(0))
    load_before = os.getloadavg()[0]
    rows = measure(list(codec_specs()), values, args.threads, args.repeats)
    text = report(rows, args.threads, args, load_before, os.getloadavg()[0])
    print("\n" + text)
    if args.write:
        write_doc(text)
        print(f"\nWrote the table into {DOC}.")


if __name__ == "__main__":
    main()
