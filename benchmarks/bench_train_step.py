"""Local training step benchmark: what fake quantization adds to a device's step.

Times `ddpm.train_local` on one default partition (the tiny UNet, batch 32, 1 thread,
as a ClientApp trains) in full precision and at 4 bits, computing in fp32 with the
clipping factors searched at every pass, every `CLIP_SEARCH_EVERY` passes (the default)
and never (min/max grids), and computing in bf16 (`low-bit-compute`, the default). At 4
bits the devices set the pace of most default rounds, so this is the price of quantized
training in wall time.

    # print the table
    python benchmarks/bench_train_step.py
    # also replace the block in docs/benchmarks.md
    python benchmarks/bench_train_step.py --write-docs
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from simrun import ROOT, machine, write_block

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.data import DataSpec
from qfd_app.quant import fake_quantized, fakequant


def ms_per_step(
    bits: int, dtype: torch.dtype, images: torch.Tensor, epochs: int, repeats: int
) -> float:
    """Median over `repeats` runs of the wall time per optimizer step, in ms."""
    # train_local leaves out a ragged last batch
    steps = epochs * max(len(images) // 32, 1)
    times = []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = ddpm.build_unet("tiny", 16)
        started = time.perf_counter()
        with fake_quantized(model, bits):
            ddpm.train_local(
                model,
                images,
                epochs=epochs,
                batch_size=32,
                learning_rate=2e-3,
                seed=0,
                device=torch.device("cpu"),
                warmup_steps=20,
                max_grad_norm=1.0,
                compute_dtype=dtype,
            )
        times.append((time.perf_counter() - started) / steps)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = DataSpec().load_partition(0, 10).pixels
    default_every, default_factors = fakequant.CLIP_SEARCH_EVERY, fakequant.CLIP_FACTORS
    fp32, bf16 = torch.float32, torch.bfloat16
    variants = {
        "fp32": (32, fp32, default_every, default_factors),
        "4 bits, fp32 compute, clipping factors searched at every pass": (
            4,
            fp32,
            1,
            default_factors,
        ),
        f"4 bits, fp32 compute, searched every {default_every} passes": (
            4,
            fp32,
            default_every,
            default_factors,
        ),
        "4 bits, fp32 compute, min/max grids (no search)": (
            4,
            fp32,
            default_every,
            torch.tensor([1.0]),
        ),
        f"4 bits, bf16 compute, searched every {default_every} passes (default)": (
            4,
            bf16,
            default_every,
            default_factors,
        ),
    }
    lines = ["| training | ms per step | vs fp32 |", "|---|---:|---:|"]
    baseline = None
    for name, (bits, dtype, every, factors) in variants.items():
        fakequant.CLIP_SEARCH_EVERY, fakequant.CLIP_FACTORS = every, factors
        ms = ms_per_step(bits, dtype, images, args.epochs, args.repeats)
        baseline = baseline or ms
        lines.append(f"| {name} | {ms:.1f} | {100 * (ms / baseline - 1):+.0f} % |")
    fakequant.CLIP_SEARCH_EVERY, fakequant.CLIP_FACTORS = default_every, default_factors
    text = (
        f"`python benchmarks/bench_train_step.py` on {machine()}; one default "
        f"partition (450 images), {args.epochs} epochs of batch 32, median of "
        f"{args.repeats}:\n\n" + "\n".join(lines)
    )
    print(text)
    if args.write_docs:
        write_block(ROOT / "docs" / "benchmarks.md", "train-step", text)


if __name__ == "__main__":
    main()
