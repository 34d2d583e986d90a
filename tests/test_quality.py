"""FID, KID, precision, recall and diversity on the feature CNN: they order image sets
the way a person would."""

import math

import numpy as np
import pytest
import torch

from qfd_app.diffusion import quality
from qfd_app.diffusion.data import DataSpec


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = DataSpec()
        train, test = spec.load_train(), spec.load_test()
        # module-scoped, so not the function-scoped `monkeypatch`: the same, undone
        # after this module's tests
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("QFD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
            net = quality.feature_net_for("mnist5k", train.pixels, train.labels, seed=0)
            yield net, train, test
    finally:
        torch.set_num_threads(threads)


def gaussian_blur(images, sigma):
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :])[None, None]
    padded = torch.nn.functional.pad(images, (radius,) * 4, mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel)


def uniform_noise(n: int) -> torch.Tensor:
    """n images of uniform noise in the model's range [-1, 1], seeded."""
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_classifier_recognises_held_out_digits(mnist):
    net, _, test = mnist
    accuracy = (net.logits(test.pixels).argmax(1) == test.labels).float().mean()
    assert accuracy > 0.9


def test_fid_of_real_vs_real_is_small_and_of_noise_is_large(mnist):
    net, train, test = mnist
    real = quality.fid(net, train.pixels[:512], test.pixels)
    noise = quality.fid(net, uniform_noise(512), test.pixels)
    assert real < 3.0
    assert noise > 50 * real


def test_fid_grows_monotonically_with_blur(mnist):
    net, train, test = mnist
    scores = [
        quality.fid(net, gaussian_blur(train.pixels[:512], s), test.pixels)
        for s in (0.3, 0.6, 0.9, 1.2)
    ]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_fid_of_half_the_classes_is_worse_than_all_classes(mnist):
    net, train, test = mnist
    half = train.pixels[train.labels < 5][:512]
    assert quality.fid(net, half, test.pixels) > 5 * quality.fid(
        net, train.pixels[:512], test.pixels
    )


def test_diversity_separates_all_classes_from_one_class(mnist):
    net, train, _ = mnist
    everything = quality.diversity(net, train.pixels[:512])
    ones = quality.diversity(net, train.pixels[train.labels == 1][:300])
    assert everything.coverage == 1.0 and everything.entropy > 0.95
    assert everything.inception_score > 6
    assert ones.coverage <= 0.5 * everything.coverage and ones.entropy < 0.2
    assert math.isclose(ones.inception_score, 1.0, abs_tol=0.5)


def test_feature_network_is_trained_once_then_read_from_the_cache(mnist):
    net, train, test = mnist
    again = quality.feature_net_for("mnist5k", train.pixels, train.labels, seed=0)
    assert again is not net  # read back from disk/memory, not retrained
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert len(list(quality.cache_dir().glob("featurenet-*.pt"))) == 1


def test_feature_network_training_is_deterministic():
    spec = DataSpec(dataset="digits")
    train = spec.load_train()
    a = quality.train_feature_net(
        train.pixels[:300], train.labels[:300], seed=3, epochs=1
    )
    b = quality.train_feature_net(
        train.pixels[:300], train.labels[:300], seed=3, epochs=1
    )
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def brute_force_precision_recall(real, fake, k):
    """Kynkäänniemi et al.'s definition, point by point, with sklearn's exact
    neighbours: an independent reference for `quality.precision_recall`."""
    from sklearn.neighbors import NearestNeighbors

    def inside(points, centres):
        # k + 1 neighbours: the first is the centre itself
        radii = NearestNeighbors(n_neighbors=k + 1).fit(centres).kneighbors(centres)[0]
        radii = radii[:, -1]
        hits = 0
        for p in points:
            hits += any(
                np.linalg.norm(p - c) <= r for c, r in zip(centres, radii, strict=True)
            )
        return hits / len(points)

    return inside(fake, real), inside(real, fake)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_the_definition_point_by_point(k):
    rng = np.random.default_rng(k)
    for _ in range(5):
        real = rng.normal(size=(60, 4))
        # a shifted, narrower fake set: neither metric is 0 or 1
        fake = rng.normal(0.7, 0.6, size=(50, 4))
        ours = quality.precision_recall(
            torch.from_numpy(real), torch.from_numpy(fake), k
        )
        assert ours == pytest.approx(brute_force_precision_recall(real, fake, k))


def test_precision_and_recall_tell_fidelity_from_diversity(mnist):
    net, train, test = mnist
    real = quality.features(net, test.pixels)
    same = quality.precision_recall(real, quality.features(net, train.pixels[:500]))
    one_class = quality.precision_recall(
        real, quality.features(net, train.pixels[train.labels == 1][:500])
    )
    noise = quality.precision_recall(
        real,
        quality.features(
            net, torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        ),
    )
    assert min(same) > 0.6  # real digits: faithful and diverse
    # faithful, but one mode: recall falls, precision does not
    assert one_class[0] > 0.6 and one_class[1] < 0.5 * same[1]
    assert noise[0] < 0.1  # nothing like a digit: low precision


def test_kid_is_the_unbiased_mmd_of_the_features(mnist):
    """With subsets as large as both sets, every subset is the whole set, so the KID is
    the unbiased MMD² with the cubic kernel, computed here in numpy."""
    net, train, test = mnist
    fake = gaussian_blur(train.pixels[:500], 1.0)
    x = quality.features(net, fake).numpy()
    y = quality.features(net, test.pixels[:500]).numpy()

    def kernel(a, b):
        return (a @ b.T / a.shape[1] + 1) ** 3

    def off_diagonal_mean(m):
        return (m.sum() - np.trace(m)) / (len(m) * (len(m) - 1))

    mmd = (
        off_diagonal_mean(kernel(x, x))
        + off_diagonal_mean(kernel(y, y))
        - 2 * kernel(x, y).mean()
    )
    assert quality.kid(net, fake, test.pixels[:500], subsets=3) == pytest.approx(
        mmd, rel=1e-4
    )


def test_kid_of_real_vs_real_is_near_zero_and_of_noise_is_large(mnist):
    net, train, test = mnist
    real = quality.kid(net, train.pixels[:500], test.pixels)
    noise = quality.kid(net, uniform_noise(500), test.pixels)
    assert abs(real) < 0.01 * noise
