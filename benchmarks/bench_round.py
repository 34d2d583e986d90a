"""Round benchmark: where the wall time of a default round goes, phase by phase.

Runs the default app (10 virtual devices, 1 CPU each, 2 sampled per round, ondemand
on the default scenario) for a few rounds in Flower's simulation engine and reads
the phase times every run writes into rounds.csv: the server's query and solve, the
slowest device's training and encoding (host wall time), decoding (with the ledger),
aggregation, checkpoint, evaluation, and what is left (Flower messaging, Ray dispatch,
model (de)serialisation on both sides, cores idle while the other device finishes). The
first round is left out (it also discovers the devices).

    # print the table
    python benchmarks/bench_round.py
    # also replace the block in docs/benchmarks.md
    python benchmarks/bench_round.py --write-docs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from simrun import ROOT, machine, phase_table, simulate, write_block


def per_message_costs(repeats: int = 5) -> str:
    """Median wall time of each step a device or the server repeats for every
    message (in-process)."""
    import statistics
    import time

    import torch
    from flwr.app import ArrayRecord

    from qfd_app.diffusion import ddpm
    from qfd_app.edge.state import device_state
    from qfd_app.quant import (
        decode_update,
        encode_update,
        fake_quantized,
        get_codec,
        range_sq_sums,
    )
    from qfd_app.settings import load_settings

    torch.set_num_threads(1)
    settings = load_settings({})
    started = time.perf_counter()
    settings.data.load_partition(0, 10)
    first_load = time.perf_counter() - started
    model = ddpm.build_unet(settings.model, settings.image_size, 1)
    state = model.state_dict()
    update = {k: torch.randn_like(v) * 1e-3 for k, v in state.items()}
    codec = get_codec("uniform", bits=4)
    arrays, meta = encode_update(update, codec, torch.Generator().manual_seed(0))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    record = ArrayRecord(torch_state_dict=state)

    def fake_quant_on_and_off() -> None:
        with fake_quantized(model, 4):
            pass

    steps = {
        "settings validation (run config and scenario file)": lambda: load_settings({}),
        "partition load (partitioner cached)": lambda: settings.data.load_partition(
            3, 10
        ),
        "UNet construction and load_state_dict": lambda: ddpm.build_unet(
            "tiny", 16, 1
        ).load_state_dict(state),
        "device state for the query (scenario fleet, channel)": lambda: device_state(
            settings.load_scenario(), 3, 10, 1, 450, {}, {}
        ),
        "fake quantization on and off (4 bits)": fake_quant_on_and_off,
        "range sums of the update (block sizes 64, 256)": lambda: range_sq_sums(update),
        "encode the update, uniform 4 bits": lambda: encode_update(
            update, codec, torch.Generator().manual_seed(1)
        ),
        "decode and validate it (server)": lambda: decode_update(
            arrays,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        ),
        "ArrayRecord to state dict (server)": record.to_torch_state_dict,
    }
    lines = [
        "| step | median ms |",
        "|---|---:|",
        "| first partition load in a worker process (MNIST-5k, partitioner; cached "
        f"after) | {1e3 * first_load:.1f} |",
    ]
    for name, step in steps.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        lines.append(f"| {name} | {1e3 * statistics.median(times):.1f} |")
    return "\n".join(lines)


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
    costs = per_message_costs()
    text = (
        f"`python benchmarks/bench_round.py --rounds {args.rounds}` on {machine()}; "
        f"rounds 2–{args.rounds} of the default run (the last one evaluates):\n\n"
        f"{table}\n\nNon-training share (everything but the devices' training and "
        f"the server's evaluation): **{100 * mean['non_training_share']:.1f} %** "
        f"of the round. Whole run: {wall:.0f} s, peak memory of all its processes "
        f"{peak / 2**30:.2f} GiB.\n\nWhat a device and the server repeat for every "
        f"message, timed in-process (1 thread, median of 5):\n\n{costs}"
    )
    print(text)
    if args.write_docs:
        write_block(ROOT / "docs" / "benchmarks.md", "round", text)


if __name__ == "__main__":
    main()
