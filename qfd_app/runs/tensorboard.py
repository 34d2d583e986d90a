"""TensorBoard event files of a run: what rounds.csv books, the sample grids, the
assigned bit-widths.

Every run writes into `<run dir>/tensorboard/<label>/`, the label naming the strategy
and the seed (e.g. `ondemand-seed0`, `fixed:4-seed1`, `fedavg:optimal-seed2`), so that
`tensorboard --logdir ~/qfd-runs` lists the runs of a comparison side by side:

- per round, every number of the rounds.csv row as the scalar `rounds/<column>`;
- per evaluation, the sample grid as the images `samples`;
- per round, the bit-widths the plan assigned as the histogram `bits/assigned`;
- at the end, the run's settings as hparams with the final scores.

TensorBoard is the format, not a service: qfd starts no server. The log is never what
stops a run: a writer that fails (a full disk, a read-only folder) is logged once with
its reason and switched off, and the run finishes with its CSVs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log


class TensorBoardLog:
    """Writes one run's events; every method is a no-op once writing has failed."""

    def __init__(self, run_dir: Path, label: str):
        self.folder = Path(run_dir) / "tensorboard" / label
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        except Exception as err:  # noqa: BLE001 — the log must never stop the run
            self._failed(err)

    def round(
        self,
        server_round: int,
        row: Mapping[str, Any],
        bits: Sequence[int],
        images: torch.Tensor | None = None,
    ) -> None:
        """The scalars of a rounds.csv row, the assigned bit-widths and, after an
        evaluation, its samples (N×C×H×W in [-1, 1])."""
        if self.writer is None:
            return
        try:
            for key, value in row.items():
                if key != "round" and _is_number(value):
                    self.writer.add_scalar(f"rounds/{key}", float(value), server_round)
            if len(bits):
                self.writer.add_histogram(
                    "bits/assigned", np.asarray(bits, dtype=np.float64), server_round
                )
            if images is not None:
                grid = (images[:64].detach().float().cpu().clamp(-1, 1) + 1) / 2
                self.writer.add_images("samples", grid, server_round)
            self.writer.flush()
        except Exception as err:  # noqa: BLE001
            self._failed(err)

    def finish(self, settings: Mapping[str, Any], scores: Mapping[str, Any]) -> None:
        """The run's settings as hparams, with its final scores;
        then close the files."""
        if self.writer is None:
            return
        try:
            hparams = {
                k: v
                for k, v in settings.items()
                if isinstance(v, (bool, int, float, str))
            }
            metrics = {
                f"final/{k}": float(v) for k, v in scores.items() if _is_number(v)
            }
            self.writer.add_hparams(hparams, metrics, run_name=".")
            self.writer.close()
        except Exception as err:  # noqa: BLE001
            self._failed(err)

    def _failed(self, err: Exception) -> None:
        log(
            WARNING,
            "[qfd] TensorBoard events are off for this run (%s: %s); the "
            "CSVs are complete",
            type(err).__name__,
            err,
        )
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001, S110 — already failing
                pass
        self.writer = None


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
