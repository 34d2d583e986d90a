"""Image quality without downloads: FID, KID, precision and recall on a small
classifier's features, and diversity.

Inception weights cannot be fetched here, so the FID is the Fréchet distance between
Gaussian fits of 64-d features of a small CNN trained (seeded) on the dataset's training
split, computed by torchmetrics' `FrechetInceptionDistance` with that CNN as its
`feature` module. Its absolute values are not comparable with Inception FIDs;
within one dataset it orders sample sets sensibly (real ≈ 1, blurred ≈ 4,
noise ≈ 60+). The value depends on the sample count, so runs are compared at one fixed
count (512 by default).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

FEATURES = 64
# bump when the network or its training changes: invalidates caches
_ARCH_VERSION = "cnn-gap64-v1"


class FeatureNet(nn.Module):
    """A small CNN digit classifier; its globally averaged last conv
    layer gives the features.

    Averaging over positions keeps the features' scale small, so that the Fréchet
    distance of two independent real sets is ≈ 1 at 512 images. `forward` takes images
    in [0, 1] (what torchmetrics passes with `normalize=True`) and returns features;
    `logits` takes images in [-1, 1], the models' range.
    """

    num_features = FEATURES

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, FEATURES, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, num_classes)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.body(images01 * 2 - 1)


def train_feature_net(
    pixels: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, epochs: int = 10
) -> FeatureNet:
    """Train the classifier deterministically (fixed seed, fixed order,
    one thread's math)."""
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1
    net = FeatureNet(pixels.shape[1], num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(net.logits(pixels[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def cache_dir() -> Path:
    """Where trained feature networks are kept: `$QFD_CACHE_DIR` or `~/.cache/qfd`."""
    return Path(
        os.environ.get("QFD_CACHE_DIR", Path.home() / ".cache" / "qfd")
    ).expanduser()


@functools.lru_cache(maxsize=4)
def _cached(key: str) -> FeatureNet | None:
    path = cache_dir() / f"featurenet-{key}.pt"
    if not path.exists():
        return None
    blob = torch.load(path, weights_only=True)
    net = FeatureNet(blob["channels"], blob["num_classes"])
    net.load_state_dict(blob["state"])
    return net.eval()


def feature_net_for(
    name: str, pixels: torch.Tensor, labels: torch.Tensor, *, seed: int = 0
) -> FeatureNet:
    """The feature network of a dataset, trained once and cached on disk and in memory.

    The cache key covers the dataset name, the exact training images and
    labels, the seed and the architecture version, so a different split never
    reuses a stale network.
    """
    digest = hashlib.sha256()
    for part in (name, _ARCH_VERSION, str(seed), str(tuple(pixels.shape))):
        digest.update(part.encode())
    digest.update(pixels.numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    key = digest.hexdigest()[:20]
    net = _cached(key)
    if net is not None:
        return net
    net = train_feature_net(pixels, labels, seed=seed)
    path = cache_dir() / f"featurenet-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(
        {
            "state": net.state_dict(),
            "channels": pixels.shape[1],
            "num_classes": net.head.out_features,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    _cached.cache_clear()
    return net


@torch.no_grad()
def fid(net: FeatureNet, fake: torch.Tensor, real: torch.Tensor) -> float:
    """Fréchet distance between `fake` and `real` images (both in [-1, 1]) on
    `net`'s features."""
    metric = FrechetInceptionDistance(feature=net, normalize=True)
    for start in range(0, len(real), 512):
        metric.update((real[start : start + 512] + 1) / 2, real=True)
    for start in range(0, len(fake), 512):
        metric.update((fake[start : start + 512] + 1) / 2, real=False)
    return float(metric.compute())


@torch.no_grad()
def kid(
    net: FeatureNet, fake: torch.Tensor, real: torch.Tensor, *, subsets: int = 50
) -> float:
    """Kernel distance (Bińkowski et al. 2018) between `fake` and `real` on `net`'s
    features: torchmetrics' `KernelInceptionDistance`, cubic polynomial kernel, the
    mean over `subsets` random subsets of the smaller set's size. Unbiased, so unlike
    FID its expected value does not depend on the number of images. The subsets are
    drawn from a fixed seed (the caller's random state is left as it was)."""
    size = min(len(fake), len(real))
    with warnings.catch_warnings():  # that it keeps the features: a few hundred
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance`")
        metric = KernelInceptionDistance(
            feature=net, subsets=subsets, subset_size=size, normalize=True
        )
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), 512):
            metric.update((images[start : start + 512] + 1) / 2, real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mean, _ = metric.compute()
    return float(mean)


@torch.no_grad()
def features(net: FeatureNet, images: torch.Tensor) -> torch.Tensor:
    """`net`'s features of `images` (in [-1, 1]), float64, one row per image."""
    return torch.cat(
        [net((images[s : s + 512] + 1) / 2) for s in range(0, len(images), 512)]
    ).double()


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets.

    Each set's manifold is the union of balls around its points, each ball reaching
    the point's k-th nearest neighbour within the set. Precision: the share of `fake`
    inside the real manifold (fidelity); recall: the share of `real` inside the fake
    manifold (diversity: how much of the data the samples cover).
    """

    def inside(points: torch.Tensor, centres: torch.Tensor) -> float:
        # k + 1: a centre is its own nearest neighbour at distance 0
        radii = torch.cdist(centres, centres).kthvalue(k + 1, dim=1).values
        return float((torch.cdist(points, centres) <= radii).any(dim=1).double().mean())

    return inside(fake, real), inside(real, fake)


@dataclass(frozen=True)
class Diversity:
    """How varied generated images are, seen by the classifier.

    coverage : fraction of classes predicted for at least 1% of the images.
    entropy : entropy of the predicted-class histogram divided by
        log(classes), in [0, 1].
    inception_score : exp(E_x KL(p(y|x) ‖ p(y))), the IS-like score
        (1 … number of classes).
    confidence : mean top-class probability: low for unrecognisable images.
    """

    coverage: float
    entropy: float
    inception_score: float
    confidence: float


@torch.no_grad()
def diversity(net: FeatureNet, images: torch.Tensor) -> Diversity:
    """Class coverage, normalised class entropy, IS-like score and
    confidence of `images`."""
    probs = torch.softmax(net.logits(images), dim=1).double()
    classes = probs.shape[1]
    hist = torch.bincount(probs.argmax(1), minlength=classes).double() / len(images)
    p_y = probs.mean(0)
    kl = (
        (probs * (probs.clamp_min(1e-12).log() - p_y.clamp_min(1e-12).log()))
        .sum(1)
        .mean()
    )
    nonzero = hist[hist > 0]
    entropy = float(
        -(nonzero * nonzero.log()).sum() / torch.log(torch.tensor(float(classes)))
    )
    return Diversity(
        coverage=float((hist >= 0.01).double().mean()),
        entropy=entropy,
        inception_score=float(kl.exp()),
        confidence=float(probs.max(1).values.mean()),
    )
