"""Data: embedded datasets, held-out split, flwr-datasets partitioning, HF
datasets from disk."""

from collections import Counter

import numpy as np
import pytest
import torch

from qfd_app.diffusion.data import DataSpec


def rows(images):
    """Each image as hashable bytes, to compare sets of images."""
    return Counter(bytes(x.numpy().tobytes()) for x in images.pixels)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover_the_training_split(partitioner):
    spec = DataSpec(partitioner=partitioner, alpha=0.3, seed=1)
    train = rows(spec.load_train())
    parts = [rows(spec.load_partition(i, 7)) for i in range(7)]
    union = sum(parts, Counter())
    # complete, and no image in two partitions (multiset equality)
    assert union == train
    assert sum(sum(p.values()) for p in parts) == sum(train.values())


def test_held_out_split_is_never_in_the_training_split():
    spec = DataSpec()
    train, test = rows(spec.load_train()), rows(spec.load_test())
    assert not set(train) & set(test)
    assert sum(test.values()) == 500 and sum(train.values()) == 4500


def test_the_held_out_split_is_the_same_whatever_the_seed_while_partitions_follow_it():
    # FIDs of runs with different seeds must be measured against the same images
    a, b = DataSpec(seed=0), DataSpec(seed=7)
    assert rows(a.load_test()) == rows(b.load_test())
    assert rows(a.load_partition(0, 10)) != rows(b.load_partition(0, 10))


def test_embedded_mnist_is_16px_in_minus_one_to_one():
    images = DataSpec().load_partition(0, 10)
    assert images.pixels.shape[1:] == (1, 16, 16)
    assert images.pixels.min() == -1 and images.pixels.max() == 1
    assert set(images.labels.tolist()) == set(range(10))


def test_digits_dataset_resizes_to_the_requested_size():
    images = DataSpec(dataset="digits", image_size=24).load_partition(0, 3)
    assert images.pixels.shape[1:] == (1, 24, 24)


def label_skew(alpha, seed, n=10):
    """Mean total-variation distance between partitions' label distributions
    and the global one."""
    spec = DataSpec(partitioner="dirichlet", alpha=alpha, seed=seed)
    overall = np.bincount(spec.load_train().labels.numpy(), minlength=10) / 4500
    tv = []
    for i in range(n):
        labels = spec.load_partition(i, n).labels.numpy()
        tv.append(
            0.5
            * np.abs(np.bincount(labels, minlength=10) / len(labels) - overall).sum()
        )
    return float(np.mean(tv))


def test_label_skew_grows_as_dirichlet_alpha_shrinks():
    alphas = [100.0, 1.0, 0.1]
    skew = [np.mean([label_skew(a, seed) for seed in range(3)]) for a in alphas]
    assert skew[0] < skew[1] < skew[2]
    assert skew[0] < 0.1 and skew[2] > 0.5
    iid = DataSpec(partitioner="iid")
    sizes = [len(iid.load_partition(i, 10)) for i in range(10)]
    assert sizes == [450] * 10


def test_hugging_face_path_loads_a_local_dataset_through_federated_dataset(tmp_path):
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        images = [
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
            for _ in range(n)
        ]
        Dataset.from_dict(
            {"image": images, "label": list(rng.integers(0, 10, n))}
        ).to_parquet(tmp_path / f"{split}.parquet")
    spec = DataSpec(dataset=f"hf:{tmp_path}", image_size=16)
    parts = [spec.load_partition(i, 4) for i in range(4)]
    assert sum(len(p) for p in parts) == 40
    assert parts[0].pixels.shape[1:] == (1, 16, 16)
    assert len(spec.load_test()) == 12
    assert torch.all(parts[0].pixels.abs() <= 1)
