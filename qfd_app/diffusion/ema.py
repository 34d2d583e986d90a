"""The model a run evaluates and exports: an exponential moving average
of the global models.

After every round the new global model is folded into a moving average with diffusers'
`EMAModel`, whose decay at round r is min(`ema-decay`, r / (9 + r)) (0 at round 1: the
average starts at the first global model; 0.5 at round 9, 0.8 at round 36), so the
average follows the early rounds closely and smooths the late ones, where one round
of devices training at few bits can set the model back (docs/training-recipe.md). The
devices always train from the global model itself; only what is evaluated, checkpointed
beside it and exported as `final/` is the average. `ema-decay = 0` evaluates and
exports the global model.
"""

from __future__ import annotations

import copy

import torch
from diffusers.training_utils import EMAModel
from torch import nn


class RoundAverage:
    """The moving average of the global models after each round.

    Parameters
    ----------
    model : nn.Module
        The initial global model (its weights start the average).
    decay : float
        The largest decay, in [0, 1); 0 turns averaging off.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.ema = EMAModel(model.parameters(), decay=decay) if decay else None
        self.model = copy.deepcopy(model) if decay else model

    def update(self, global_model: nn.Module) -> nn.Module:
        """Fold in the global model after a round; returns the averaged model."""
        if self.ema is None:
            return global_model
        self.ema.step(global_model.parameters())
        self.ema.copy_to(self.model.parameters())
        return self.model

    def state(self) -> tuple[dict[str, torch.Tensor], int] | None:
        """The averaged weights by parameter name and the number of rounds
        folded in (None: off)."""
        if self.ema is None:
            return None
        names = [name for name, _ in self.model.named_parameters()]
        return dict(
            zip(names, self.ema.shadow_params, strict=True)
        ), self.ema.optimization_step

    def restore(self, weights: dict[str, torch.Tensor], rounds: int) -> None:
        """Go on from a `state()`."""
        if self.ema is None:
            return
        self.ema.shadow_params = [
            weights[name].clone() for name, _ in self.model.named_parameters()
        ]
        self.ema.optimization_step = rounds
        self.ema.copy_to(self.model.parameters())
