"""Device placement and the seeded channel."""

import numpy as np
import pytest

from qfd_app.edge.devices import DeviceClass, Fleet, path_loss_db, place_uniform_disc

IOT = DeviceClass("iot", 2, 4, 3e8, 1e9, 0.5, 1e-28, 0.1)
NEAR = DeviceClass("near", 8, 16, 8e8, 3e9, 0.125, 1e-28, 0.2, distance_m=50.0)


def fleet(seed=0, n=2000, sigma=8.0):
    return Fleet.build(
        (IOT, NEAR),
        [0] * (n - 2) + [1, 1],
        cell_radius_m=500.0,
        min_distance_m=10.0,
        shadowing_db=sigma,
        seed=seed,
    )


def test_path_loss_is_128_1_at_one_km_and_grows_37_6_db_per_decade():
    assert path_loss_db(1000.0) == pytest.approx(128.1)
    assert path_loss_db(100.0) == pytest.approx(128.1 - 37.6)


def test_placement_is_uniform_in_area_within_the_annulus():
    d = place_uniform_disc(np.random.default_rng(0), 100_000, 500.0, 10.0)
    assert d.min() >= 10.0 and d.max() <= 500.0
    # uniform in area: P(d ≤ r) = (r² − d_min²)/(R² − d_min²)
    assert np.mean(d <= 250.0) == pytest.approx(
        (250**2 - 100) / (500**2 - 100), abs=0.01
    )


def test_same_seed_and_round_give_the_same_gains():
    np.testing.assert_array_equal(fleet(3).gains(5), fleet(3).gains(5))


def test_fading_changes_every_round_while_distance_and_shadowing_stay():
    f = fleet(3)
    assert not np.allclose(f.gains(1), f.gains(2))
    ratio = f.gains(1) / f.gains(2)
    np.testing.assert_allclose(ratio, f.fading(1) / f.fading(2))
    assert not np.allclose(fleet(4).distance_m, f.distance_m)


def test_fading_is_exponential_with_mean_one_and_shadowing_has_the_given_sigma():
    f = fleet(0, n=50_000)
    fading = np.concatenate([f.fading(r) for r in range(4)])
    assert fading.mean() == pytest.approx(1.0, abs=0.01)
    # exponential's median
    assert np.median(fading) == pytest.approx(np.log(2), abs=0.01)
    assert f.shadowing_db.std() == pytest.approx(8.0, rel=0.02)


def test_classes_with_a_fixed_distance_sit_there_and_columns_follow_the_class():
    f = fleet()
    np.testing.assert_array_equal(f.distance_m[-2:], [50.0, 50.0])
    assert f.column("power_w_max")[0] == 0.1 and f.column("power_w_max")[-1] == 0.2
    assert f.class_names[-1] == "near"


def test_gains_follow_path_loss_shadowing_and_fading():
    f = fleet(1, sigma=0.0)
    expected = 10 ** (-path_loss_db(f.distance_m) / 10) * f.fading(7)
    np.testing.assert_allclose(f.gains(7), expected)
