"""Two checkouts' local training step, timed in turns: did the code get slower?

Runs `ddpm.train_local` (the tiny UNet on partition 0 of 10, batch 32, one thread, as a
ClientApp trains; bf16 compute below 16 bits) in a fresh process per turn, alternating
between the checkouts, and reports the CPU time of that process per optimizer step. CPU
time and turns make the comparison fair on a machine that is busy with something else
(both checkouts share the load alike); wall time is printed beside it.

    git worktree add /tmp/qfd-old f334485 --detach
    python benchmarks/bench_step_ab.py /tmp/qfd-old . --bits 4 --turns 5

A checkout from before the `diffusion/` layout (2026-11-26) is timed as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(bits: int, epochs: int) -> None:
    """One turn, in the checkout on sys.path: prints ms per step as JSON."""
    import torch

    try:
        from qfd_app.diffusion import ddpm
        from qfd_app.diffusion.data import DataSpec
    except ImportError:  # the layout before 2026-11-27
        from qfd_app import ddpm
        from qfd_app.data import DataSpec
    from qfd_app.quant import fake_quantized

    torch.set_num_threads(1)
    images = DataSpec().load_partition(0, 10).pixels
    steps = epochs * (len(images) // 32)  # train_local leaves out a ragged batch
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    wall, cpu = time.perf_counter(), time.process_time()
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
            compute_dtype=torch.bfloat16 if bits < 16 else torch.float32,
        )
    per_step = 1e3 / steps
    print(
        json.dumps(
            {
                "cpu_ms": per_step * (time.process_time() - cpu),
                "wall_ms": per_step * (time.perf_counter() - wall),
            }
        )
    )


def turn(checkout: Path, bits: int, epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    args = [sys.executable, __file__, "--child", str(bits), str(epochs)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout of the older commit")
    parser.add_argument("new", type=Path, help="a checkout of the newer commit")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[dict]] = {"old": [], "new": []}
    for number in range(1, args.turns + 1):
        for name in times:
            times[name].append(turn(getattr(args, name), args.bits, args.epochs))
            print(f"turn {number}/{args.turns} {name}: {times[name][-1]}", flush=True)
    cpu = {
        name: statistics.median(t["cpu_ms"] for t in runs)
        for name, runs in times.items()
    }
    print(
        f"{args.bits} bits, {args.epochs} epochs, {args.turns} turns; CPU ms per step, "
        f"median: old {cpu['old']:.1f}, new {cpu['new']:.1f} "
        f"({100 * (cpu['new'] / cpu['old'] - 1):+.0f} %)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
