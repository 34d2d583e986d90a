"""What the model package offers, named without importing torch, for
settings validation.

The UNet presets, the learning-rate schedules, the embedded datasets and the
partitioners: `ddpm` and `data` import them from here, and `qfd_app.settings` checks a
run config against them before anything imports torch, diffusers or the datasets.
"""

from __future__ import annotations

# Presets of diffusers' UNet2DModel. `tiny` is the CPU default (~263k parameters);
# `ddpm-cifar10` is the 35.7M-parameter UNet of Ho et al. (2020), for planning and GPUs.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        add_attention=False,  # no attention anywhere, also not in the mid block
    ),
    "small": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        add_attention=False,  # no attention anywhere, also not in the mid block
    ),
    "base": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    ),
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        down_block_types=(
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    ),
}

# How the devices' learning rate moves over the rounds (`ddpm.round_learning_rate`).
LR_SCHEDULES = ("cosine", "constant")

# Datasets shipped with the app; `hf:<name or local path>` names a Hugging Face dataset.
EMBEDDED = ("mnist5k", "digits")
HF_PREFIX = "hf:"

# How the training data is split over the devices (`data.partitioner`).
PARTITIONERS = ("iid", "dirichlet")
