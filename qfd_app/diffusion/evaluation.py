"""Quality of the global model: samples, FID, KID, precision, recall and diversity
against the held-out split."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

import torch

from qfd_app.diffusion import ddpm, quality
from qfd_app.diffusion.data import DataSpec

# the data order the feature network trains on, its init, the sampling noise
EVAL_SEED = 0
# the scores of the final evaluation's draws that get a mean and a standard error
DRAWN = ("fid", "kid", "precision", "recall")


@dataclass
class Evaluator:
    """Samples a model with DDIM and scores the images on the dataset's feature network.

    The feature network is trained once per dataset split (cached on disk); the
    reference is the held-out split, which no device trains on. None of it depends on
    the run's seed — the network trains on the training split in `EVAL_SEED`'s order,
    and every evaluation samples the same noise — so FIDs of runs with different
    seeds are on one scale.
    """

    data: DataSpec
    num_samples: int
    steps: int
    device: torch.device
    eps_scale: float = 1.0  # DDIM's epsilon scaling (`ddpm.sample`)

    def __post_init__(self) -> None:
        data = replace(self.data, seed=EVAL_SEED)
        self.test = data.load_test()
        train = data.load_train()
        self.net = quality.feature_net_for(
            data.dataset, train.pixels, train.labels, seed=EVAL_SEED
        )
        # The floor: training images vs the held-out split at the same count.
        self.reference_fid = quality.fid(
            self.net, train.pixels[: self.num_samples], self.test.pixels
        )
        self.real_features = quality.features(self.net, self.test.pixels)

    def __call__(
        self, model: torch.nn.Module, draw: int = 0
    ) -> tuple[dict[str, float], torch.Tensor]:
        """Scores of `num_samples` images of `model` and the images; draw d samples
        the noise of seed `EVAL_SEED + d` (every round's evaluation is draw 0)."""
        images = ddpm.sample(
            model,
            self.num_samples,
            steps=self.steps,
            seed=EVAL_SEED + draw,
            device=self.device,
            eps_scale=self.eps_scale,
        )
        div = quality.diversity(self.net, images)
        precision, recall = quality.precision_recall(
            self.real_features, quality.features(self.net, images)
        )
        scores = {
            "fid": quality.fid(self.net, images, self.test.pixels),
            "kid": quality.kid(self.net, images, self.test.pixels),
            "precision": precision,
            "recall": recall,
            "coverage": div.coverage,
            "class_entropy": div.entropy,
            "inception_score": div.inception_score,
        }
        return scores, images

    def final(
        self,
        model: torch.nn.Module,
        draws: int,
        first: dict[str, float] | None = None,
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """The last round's closer look: `draws` draws of `num_samples` images (draws
        0, 1, …; `first`: draw 0's scores, already computed), and for each score of
        `DRAWN` its mean over the draws and the standard error of that mean.

        Every draw has the per-round evaluation's size, so FIDs — which depend on the
        number of images — stay on one scale with the rounds'; the draws only make the
        final number less noisy. Returns the means and errors (`fid_mean`, `fid_se`, …,
        `draws`) and the scores of every draw.
        """
        per_draw = [first or self(model)[0]]
        per_draw += [self(model, draw)[0] for draw in range(1, draws)]
        values = {k: [scores[k] for scores in per_draw] for k in DRAWN}
        summary: dict[str, float] = {"draws": draws}
        for key, xs in values.items():
            summary[f"{key}_mean"] = statistics.fmean(xs)
            summary[f"{key}_se"] = (
                statistics.stdev(xs) / math.sqrt(draws) if draws > 1 else math.nan
            )
        return summary, values
