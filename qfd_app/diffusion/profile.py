"""What the planner needs of the UNet, measured rather than guessed: its parameter
shapes and its training FLOPs per sample.

The model is built on the `meta` device, so nothing is allocated or computed: a
35.7M-parameter UNet is profiled in a second.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelProfile:
    """The UNet `preset` at `image_size`² × `channels`: its tensors' shapes and φ."""

    preset: str
    image_size: int
    channels: int
    shapes: tuple[tuple[int, ...], ...]
    flops_per_sample: float

    @property
    def parameters(self) -> int:
        """d, the number of values in an update."""
        return int(sum(math.prod(s) for s in self.shapes))


@functools.lru_cache(maxsize=8)
def model_profile(preset: str, image_size: int, channels: int) -> ModelProfile:
    """Measure `build_unet(preset, image_size, channels)` on the meta device.

    φ is the FLOPs of one forward and one backward pass of a batch of one image
    (`edge.energy.training_flops`: torch's FLOP counter, 2 per multiply-add of matmuls
    and convolutions; element-wise ops are not counted).
    """
    import torch

    from qfd_app.diffusion.ddpm import build_unet
    from qfd_app.edge.energy import training_flops

    with torch.device("meta"):
        model = build_unet(preset, image_size, channels)
        # a batch of one image
        images = torch.zeros(1, channels, image_size, image_size)
        timesteps = torch.zeros(1, dtype=torch.long)
    flops = training_flops(model, images, timesteps)
    shapes = tuple(tuple(p.shape) for p in model.parameters() if p.requires_grad)
    return ModelProfile(preset, image_size, channels, shapes, flops)
