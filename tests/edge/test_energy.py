"""The formulas of docs/model.md, checked against their definitions."""

import numpy as np
import pytest

from qfd_app.edge.energy import (
    compute_energy_j,
    compute_time_s,
    dbm_to_w,
    power_for_rate_w,
    precision_factor,
    quantization_error,
    training_flops,
    uplink_rate_bps,
    upload_energy_j,
    w_to_dbm,
    work_cycles,
)
from qfd_app.quant.registry import codec_bits


def test_dbm_conversions_round_trip_and_hit_the_usual_points():
    assert dbm_to_w(30.0) == pytest.approx(1.0)
    assert dbm_to_w(20.0) == pytest.approx(0.1)
    assert dbm_to_w(-174.0) == pytest.approx(3.98e-21, rel=1e-3)  # N0 in W/Hz
    x = np.array([-50.0, 0.0, 23.0])
    np.testing.assert_allclose(w_to_dbm(dbm_to_w(x)), x)


def test_precision_factor_is_proportional_to_bits_for_gamma_one_and_flat_for_zero():
    np.testing.assert_allclose(precision_factor([8, 16, 32], 1.0), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(precision_factor([2, 8, 32], 0.0), [1.0, 1.0, 1.0])


def test_work_is_epochs_times_samples_times_flops_times_cycles_times_precision():
    w = work_cycles(
        epochs=2,
        samples=450,
        flops_per_sample=9e7,
        cycles_per_flop=0.5,
        bits=8,
        gamma=1.0,
    )
    assert w == pytest.approx(2 * 450 * 9e7 * 0.5 * 0.25)


def test_compute_time_and_energy_follow_the_cmos_model():
    assert compute_time_s(2e9, 1e9) == 2.0
    assert compute_energy_j(1e-28, 2e9, 1e9) == pytest.approx(1e-28 * 2e9 * 1e18)
    assert upload_energy_j(0.1, 3.0) == pytest.approx(0.3)


def test_power_for_rate_inverts_the_shannon_rate():
    rng = np.random.default_rng(0)
    b, g, p = (
        10 ** rng.uniform(4, 7, 50),
        10 ** rng.uniform(-14, -8, 50),
        rng.uniform(1e-3, 1, 50),
    )
    rate = uplink_rate_bps(b, g, p, 4e-21)
    np.testing.assert_allclose(power_for_rate_w(rate, b, g, 4e-21), p, rtol=1e-9)


def test_the_rate_grows_with_bandwidth_towards_the_infinite_bandwidth_limit():
    g, p, n0 = 1e-11, 0.1, 4e-21
    rates = uplink_rate_bps(np.geomspace(1e3, 1e12, 20), g, p, n0)
    assert np.all(np.diff(rates) > 0)
    assert rates[-1] == pytest.approx(g * p / (n0 * np.log(2)), rel=1e-3)


def test_quantization_error_is_the_stochastic_rounding_variance_bound():
    sizes, ranges = [256, 256, 10], [1.0, 2.0, 0.5]
    expected = (256 * 1.0 + 256 * 4.0 + 10 * 0.25) / (4 * 15**2)
    assert quantization_error(4, sizes, ranges) == pytest.approx(expected)
    v = quantization_error(np.array(codec_bits()), sizes, ranges)
    assert np.all(np.diff(v) < 0)  # more bits, less error


def test_the_bound_holds_for_actual_stochastic_rounding():
    rng = np.random.default_rng(1)
    x = rng.normal(size=256)
    lo, step = x.min(), (x.max() - x.min()) / 15
    # unbiased rounding to 4 bits
    q = lo + step * np.floor((x - lo) / step + rng.random((2000, 256)))
    measured = np.mean(np.sum((q - x) ** 2, axis=1))
    assert measured <= quantization_error(4, [256], [x.max() - x.min()])


def test_codec_bit_widths_are_1_to_16_and_32():
    assert codec_bits() == (
        *range(1, 17),
        32,
    )  # the codec registry's widths: 17–31 have none


def test_training_flops_counts_forward_and_backward_with_torch():
    import torch

    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    )
    x = torch.zeros(3, 8)
    # forward: 2·3·(8·4 + 4·2) = 240; backward: weight grads of both layers (240)
    # plus the input grad of the second layer (2·3·4·2 = 48); the input itself needs
    # no grad
    assert training_flops(model, x) == 240 + 240 + 48
