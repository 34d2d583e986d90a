"""The run directory: its creation with config.json, checkpoints, and the after-round hook."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from safetensors.torch import save_file

from qfd_app.evaluation import Evaluator
from qfd_app.ledger import Ledger
from qfd_app.report import save_grid
from qfd_app.settings import Settings


def create_run_dir(settings: Settings, run_id: int | str) -> Path:
    """A new, absolute directory `<output-dir>/<time>-<strategy>-<run id>` with config.json."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(settings.output_dir).expanduser() / f"{stamp}-{settings.strategy}-{run_id}"
    path.mkdir(parents=True, exist_ok=False)
    (path / "config.json").write_text(json.dumps(settings.to_run_config(), indent=2) + "\n")
    return path


def save_checkpoint(run_dir: Path, server_round: int, state: dict[str, torch.Tensor]) -> Path:
    """Write the global model after `server_round` atomically; keep only the latest."""
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    path = folder / f"round_{server_round:03d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"round": str(server_round)})
    tmp.replace(path)
    for old in folder.glob("round_*.safetensors"):
        if old != path:
            old.unlink()
    return path


# What the progress line of a round shows (rounds.csv has everything).
LOGGED = ("devices_ok", "devices_failed", "devices_rejected", "devices_excluded", "deadline_misses", "train_loss",
          "energy_j", "bytes_up", "fid", "coverage", "round_s", "wall_s")  # fmt: skip


@dataclass
class AfterRound:
    """Flower's `evaluate_fn`: after every round checkpoint, evaluate when due, write rounds.csv.

    Evaluates every `eval_interval` rounds and always after the last one
    (`eval_interval = 0`: only after the last).
    """

    run_dir: Path
    model: torch.nn.Module
    ledger: Ledger
    evaluator: Evaluator
    eval_interval: int
    num_rounds: int
    started: float = field(default_factory=time.time)
    last_scores: dict[str, float] = field(default_factory=dict)
    _round_started: float = field(default_factory=time.perf_counter)

    def due(self, server_round: int) -> bool:
        every = self.eval_interval and server_round % self.eval_interval == 0
        return bool(every) or server_round == self.num_rounds

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # before training: nothing to book, the first round starts now
            self._round_started = time.perf_counter()
            return None
        begun = time.perf_counter()
        state = arrays.to_torch_state_dict()
        self.model.load_state_dict(state)
        save_checkpoint(self.run_dir, server_round, state)
        checkpointed = time.perf_counter()
        self.ledger.book_phases(server_round, checkpoint_s=checkpointed - begun)
        if self.due(server_round):
            scores, images = self.evaluator(self.model)
            save_grid(images[:64], self.run_dir / "samples" / f"round_{server_round:03d}.png")
            self.ledger.book_phases(server_round, evaluate_s=time.perf_counter() - checkpointed)
            self.last_scores = scores
        else:
            scores = {}
        now = time.perf_counter()
        self.ledger.book_phases(server_round, round_s=now - self._round_started)
        self._round_started = now
        row = {**self.ledger.summarise(server_round), **scores}
        row["wall_s"] = round(time.time() - self.started, 2)
        self.ledger.write_round(row)
        shown = ", ".join(f"{k} {row[k]:.4g}" for k in LOGGED if isinstance(row.get(k), (int, float)))
        log(INFO, "[qfd] round %d/%d: %s", server_round, self.num_rounds, shown)
        return MetricRecord({k: float(v) for k, v in row.items() if k != "round"})
