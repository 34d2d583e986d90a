"""The run directory: a new one with config.json or a killed one to resume, and the
after-round hook."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log

from qfd_app.diffusion.ema import RoundAverage
from qfd_app.diffusion.evaluation import Evaluator
from qfd_app.runs.checkpoint import (
    Checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    stage_checkpoint,
)
from qfd_app.runs.ledger import Ledger
from qfd_app.runs.report import save_grid
from qfd_app.runs.tensorboard import TensorBoardLog
from qfd_app.settings import RESUMABLE, Settings, SettingsError


def create_run_dir(settings: Settings, run_id: int | str) -> Path:
    """A new, absolute directory `<output-dir>/<time>-<strategy>-<run id>`
    with config.json."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = (
        Path(settings.output_dir).expanduser() / f"{stamp}-{settings.strategy}-{run_id}"
    )
    path.mkdir(parents=True, exist_ok=False)
    (path / "config.json").write_text(
        json.dumps(settings.to_run_config(), indent=2) + "\n"
    )
    return path


def open_run_dir(
    settings: Settings, run_id: int | str
) -> tuple[Path, Checkpoint | None]:
    """A new run directory, or, with `resume`, the run to go on with and its
    latest checkpoint."""
    run_dir = resume_target(settings)
    if run_dir is None:
        return create_run_dir(settings, run_id), None
    return run_dir, load_checkpoint(run_dir)


def resume_target(settings: Settings) -> Path | None:
    """The run directory the `resume` setting names (None: a new run), checked to go on.

    Raises
    ------
    SettingsError
        If `resume` names no run directory, one that finished or has no checkpoint, or
        one trained with other settings (the message names the keys that differ).
    """
    if not settings.resume:
        return None
    run_dir = (
        _last_unfinished(settings)
        if settings.resume == "last"
        else Path(settings.resume).expanduser()
    )
    saved = _saved_config(run_dir)
    now = settings.to_run_config()
    differ = [k for k, v in now.items() if k not in RESUMABLE and saved.get(k) != v]
    if differ:
        shown = ", ".join(
            f"{k!r} ({saved.get(k)!r} there, {now[k]!r} now)" for k in differ
        )
        raise SettingsError(
            f"The 'resume' setting names {run_dir}, trained with other "
            f"settings: {shown}."
        )
    if (run_dir / "summary.json").exists():
        raise SettingsError(
            f"The 'resume' setting names {run_dir}, which finished (it "
            "has summary.json)."
        )
    if latest_checkpoint(run_dir) is None:
        raise SettingsError(
            f"The 'resume' setting names {run_dir}, which holds no complete "
            "checkpoint to go on from."
        )
    return run_dir


def _saved_config(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise SettingsError(
            f"The 'resume' setting must name a run directory with a config.json; {err}"
        ) from None


def _last_unfinished(settings: Settings) -> Path:
    """The newest run in `output-dir` with these settings, a checkpoint
    and no summary.json."""
    wanted = {k: v for k, v in settings.to_run_config().items() if k not in RESUMABLE}
    candidates = [
        p.parent
        for p in Path(settings.output_dir).expanduser().glob("*/config.json")
        if not (p.parent / "summary.json").exists()
        and (p.parent / "checkpoints").is_dir()
    ]
    matching = [
        p
        for p in candidates
        if all(_saved_config(p).get(k) == v for k, v in wanted.items())
    ]
    if not matching:
        raise SettingsError(
            f"The 'resume' setting is 'last', but {settings.output_dir} holds no "
            "unfinished run with these settings (a config.json equal to them, a "
            "checkpoint and no summary.json)."
        )
    return max(matching, key=lambda p: (p / "config.json").stat().st_mtime)


def final_evaluation(
    run_dir: Path,
    evaluator: Evaluator,
    model: torch.nn.Module,
    draws: int,
    first: dict[str, float] | None = None,
) -> dict[str, float]:
    """`Evaluator.final` of `model`, kept in `run_dir/final-eval.json` with every
    draw's scores; returns the means and errors."""
    summary, per_draw = evaluator.final(model, draws, first)
    (run_dir / "final-eval.json").write_text(
        json.dumps(
            {
                **summary,
                "samples_per_draw": evaluator.num_samples,
                "per_draw": per_draw,
            },
            indent=1,
        )
        + "\n"
    )
    return summary


# What the progress line of a round shows (rounds.csv has everything).
LOGGED = (
    "devices_ok",
    "devices_failed",
    "devices_rejected",
    "devices_excluded",
    "deadline_misses",
    "train_loss",
    "energy_j",
    "bytes_up",
    "fid",
    "coverage",
    "round_s",
    "wall_s",
)


@dataclass
class AfterRound:
    """Flower's `evaluate_fn`: after every round fold the global model into the average,
    evaluate the average when due, write rounds.csv, checkpoint.

    Evaluates every `eval_interval` rounds and always after the last one
    (`eval_interval = 0`: only after the last), then in `final_draws` draws
    (`Evaluator.final`; 0: one like the others), kept in final-eval.json and among the
    last scores. Flower counts rounds from 1; in a
    resumed run `first_round` is the checkpoint's round + 1, and the rounds booked are
    the run's. The checkpoint is committed last, so a complete checkpoint of round r
    always holds round r's ledger rows.
    """

    run_dir: Path
    model: torch.nn.Module
    ledger: Ledger
    evaluator: Evaluator
    eval_interval: int
    num_rounds: int
    strategy_state: Callable[[], dict]
    average: RoundAverage
    final_draws: int = 0
    # tensors the strategy keeps (checkpointed beside the model)
    strategy_tensors: Callable[[], dict[str, torch.Tensor]] = dict
    tensorboard: TensorBoardLog | None = None
    first_round: int = 1
    wall_before_s: float = 0.0  # what the run took before it was resumed
    last_scores: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _round_started: float = field(default_factory=time.perf_counter)

    def due(self, server_round: int) -> bool:
        every = self.eval_interval and server_round % self.eval_interval == 0
        return bool(every) or server_round == self.num_rounds

    def wall_s(self) -> float:
        return self.wall_before_s + time.time() - self.started

    def _final_evaluation(
        self, model: torch.nn.Module, first: dict[str, float]
    ) -> dict[str, float]:
        log(INFO, "[qfd] final evaluation: %d draws", self.final_draws)
        return final_evaluation(
            self.run_dir, self.evaluator, model, self.final_draws, first
        )

    def __call__(self, flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # before training: nothing to book, the first round starts now
        if flower_round == 0:
            self._round_started = time.perf_counter()
            return None
        server_round = flower_round + self.first_round - 1
        begun = time.perf_counter()
        state = arrays.to_torch_state_dict()
        self.model.load_state_dict(state)
        averaged = self.average.update(self.model)
        images = None
        if self.due(server_round):
            scores, images = self.evaluator(averaged)
            if server_round == self.num_rounds and self.final_draws:
                scores = {**scores, **self._final_evaluation(averaged, scores)}
            save_grid(
                images[:64], self.run_dir / "samples" / f"round_{server_round:03d}.png"
            )
            self.ledger.book_phases(
                server_round, evaluate_s=time.perf_counter() - begun
            )
            self.last_scores = scores
        else:
            scores = {}
        checkpointing = time.perf_counter()
        run_state = {
            "wall_s": self.wall_s(),
            "last_scores": self.last_scores,
            "strategy": self.strategy_state(),
        }
        average = self.average.state()
        if average is not None:
            run_state["average_rounds"] = average[1]
        staged = stage_checkpoint(
            self.run_dir,
            server_round,
            state,
            run_state,
            average and average[0],
            self.strategy_tensors(),
        )
        now = time.perf_counter()
        self.ledger.book_phases(
            server_round,
            checkpoint_s=now - checkpointing,
            round_s=now - self._round_started,
        )
        self._round_started = now
        row = {**self.ledger.summarise(server_round), **scores}
        row["wall_s"] = round(self.wall_s(), 2)
        self.ledger.write_round(row)
        if self.tensorboard is not None:
            assigned = [r.bits for r in self.ledger.of_round(server_round) if r.bits]
            self.tensorboard.round(server_round, row, assigned, images)
        commit_checkpoint(self.run_dir, staged)
        shown = ", ".join(
            f"{k} {row[k]:.4g}" for k in LOGGED if isinstance(row.get(k), (int, float))
        )
        log(INFO, "[qfd] round %d/%d: %s", server_round, self.num_rounds, shown)
        return MetricRecord({k: float(v) for k, v in row.items() if k != "round"})
