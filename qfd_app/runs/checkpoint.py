"""Checkpoints: after every round the global model, the strategy's state and
the ledger, atomically.

``checkpoints/round_XXX/`` of a run directory holds

    model.safetensors        the global model after round XXX
    average.safetensors      the moving average of the global models (`ema.py`), if the
                             run keeps one
    strategy.safetensors     tensors the strategy keeps (the devices' model copies
                             of the `delta` downlink), if any
    state.json               the round, the strategy's estimates, the wall time so far,
                             the last scores
    devices.csv, rounds.csv  the ledger up to and including round XXX

It is written as ``round_XXX.tmp/`` and renamed into place (one `rename`, atomic on
POSIX), so a run killed at any moment leaves a complete checkpoint, never a half-written
one; only the latest is kept. No random-number state is saved because none carries over
between rounds: the sampling, the channel draws, the local training and the stochastic
rounding draw from generators seeded by (seed, round, partition), so a resumed round
draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LEDGER_FILES = ("devices.csv", "rounds.csv")
MODEL_FILE, AVERAGE_FILE, STRATEGY_FILE, STATE_FILE = (
    "model.safetensors",
    "average.safetensors",
    "strategy.safetensors",
    "state.json",
)


class ResumeError(ValueError):
    """A run directory that cannot be resumed; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    """What a run needs to go on after round `round`."""

    round: int
    model: dict[str, torch.Tensor]
    state: dict
    average: dict[str, torch.Tensor] | None = None
    strategy_tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def stage_checkpoint(
    run_dir: Path,
    server_round: int,
    model: dict[str, torch.Tensor],
    state: dict,
    average: dict[str, torch.Tensor] | None = None,
    strategy_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the model, its average, the strategy's tensors and the state of
    `server_round` to a temporary folder; `commit_checkpoint` finishes."""
    staged = _folder(run_dir, server_round).with_suffix(".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.items()}, staged / MODEL_FILE)
    for tensors, name in ((average, AVERAGE_FILE), (strategy_tensors, STRATEGY_FILE)):
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, staged / name)
    (staged / STATE_FILE).write_text(
        json.dumps({"round": server_round, **state}, indent=1) + "\n"
    )
    return staged


def commit_checkpoint(run_dir: Path, staged: Path) -> Path:
    """Add the ledger as it is now to a staged checkpoint, move it into
    place, drop older ones."""
    for name in LEDGER_FILES:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, staged / name)
    final = staged.with_suffix("")
    if final.exists():  # only when a round is redone after an earlier resume
        shutil.rmtree(final)
    os.rename(staged, final)
    for old in final.parent.iterdir():
        if old != final:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return final


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The latest complete checkpoint of `run_dir`; its ledger files replace the run's.

    Rows that a killed run booked after its last checkpoint (a round half done) are thus
    dropped, and the resumed run books that round again.

    Raises
    ------
    ResumeError
        If the run directory holds no complete checkpoint.
    """
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise ResumeError(
            f"{run_dir} holds no complete checkpoint "
            "(checkpoints/round_XXX/) to resume from"
        )
    state = json.loads((latest / STATE_FILE).read_text())
    for name in LEDGER_FILES:
        target = run_dir / name
        if (latest / name).exists():
            shutil.copy2(latest / name, target.with_suffix(".restoring"))
            os.replace(target.with_suffix(".restoring"), target)
        elif target.exists():
            target.unlink()
    average = (
        load_file(latest / AVERAGE_FILE) if (latest / AVERAGE_FILE).exists() else None
    )
    strategy_tensors = (
        load_file(latest / STRATEGY_FILE) if (latest / STRATEGY_FILE).exists() else {}
    )
    return Checkpoint(
        round=int(state.pop("round")),
        model=load_file(latest / MODEL_FILE),
        state=state,
        average=average,
        strategy_tensors=strategy_tensors,
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder of the latest complete checkpoint of `run_dir`, or None."""
    folders = [
        p
        for p in (run_dir / "checkpoints").glob("round_*")
        if p.is_dir() and p.suffix != ".tmp"
    ]
    return max(folders, key=lambda p: int(p.name.removeprefix("round_")), default=None)


def _folder(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round_{server_round:03d}"
