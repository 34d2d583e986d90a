"""Final-evaluation benchmark: how the noise of the final scores falls with the number
of draws, and what each draw costs; it chose `final-eval-samples`.

Scores the exported model of finished runs (`<run dir>/final`) with the run's own
evaluation settings in `--draws` draws of `eval-samples` images (draw d samples seed
d's noise, as the ServerApp does), and reports per score the spread of one draw, the
standard error of a mean over D draws (spread/√D), and the seconds it costs. Compare
the errors with the spread of final FIDs over training seeds: more draws stop paying
once their error is well below that.

    python benchmarks/bench_final_eval.py ~/qfd-runs/<run> [<run> ...] --draws 8
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.evaluation import DRAWN, Evaluator
from qfd_app.settings import run_dir_settings


def score_draws(run_dir: Path, draws: int) -> tuple[dict[str, list[float]], float]:
    """Every score of every draw of the run's final model, and seconds per draw."""
    settings = run_dir_settings(run_dir)
    evaluator = Evaluator(
        settings.data,
        settings.eval_samples,
        settings.sample_steps,
        ddpm.pick_device("cpu"),
        eps_scale=settings.sample_eps_scale,
    )
    model = UNet2DModel.from_pretrained(run_dir / "final" / "unet")
    values: dict[str, list[float]] = {k: [] for k in DRAWN}
    started = time.perf_counter()
    for draw in range(draws):
        scores, _ = evaluator(model, draw)
        for key in DRAWN:
            values[key].append(scores[key])
        print(f"{run_dir.name} draw {draw}: " + ", ".join(
            f"{k} {scores[k]:.4g}" for k in DRAWN), flush=True)  # fmt: skip
    return values, (time.perf_counter() - started) / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("final-eval-noise.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for run in args.runs:
        values, seconds = score_draws(run, args.draws)
        results[str(run)] = {"per_draw": values, "seconds_per_draw": seconds}
    args.out.write_text(json.dumps(results, indent=1) + "\n")

    print("\n| run | score | mean | sd of one draw | SE at D = 1 / 2 / 4 / 8 |")
    print("|---|---|---:|---:|---|")
    for run, result in results.items():
        for key, xs in result["per_draw"].items():
            sd = statistics.stdev(xs)
            errors = " / ".join(f"{sd / math.sqrt(d):.3g}" for d in (1, 2, 4, 8))
            print(
                f"| {Path(run).name} | {key} | {statistics.fmean(xs):.4g} "
                f"| {sd:.3g} | {errors} |"
            )
    seconds = statistics.fmean(r["seconds_per_draw"] for r in results.values())
    print(
        f"\nseconds per draw (mean over runs): {seconds:.1f}; D draws cost D times it"
    )


if __name__ == "__main__":
    main()
