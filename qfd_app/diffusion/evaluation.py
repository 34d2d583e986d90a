"""Quality of the global model: samples, FID and diversity against
the held-out split."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from qfd_app.diffusion import ddpm, quality
from qfd_app.diffusion.data import DataSpec

# the data order the feature network trains on, its init, the sampling noise
EVAL_SEED = 0


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

    def __call__(self, model: torch.nn.Module) -> tuple[dict[str, float], torch.Tensor]:
        """Scores of `model` and the images they were computed on."""
        images = ddpm.sample(
            model,
            self.num_samples,
            steps=self.steps,
            seed=EVAL_SEED,
            device=self.device,
            eps_scale=self.eps_scale,
        )
        div = quality.diversity(self.net, images)
        scores = {
            "fid": quality.fid(self.net, images, self.test.pixels),
            "coverage": div.coverage,
            "class_entropy": div.entropy,
            "inception_score": div.inception_score,
        }
        return scores, images
