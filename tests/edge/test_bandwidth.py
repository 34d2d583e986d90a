"""Admission to the round and the water-filling split of the band."""

import numpy as np
import pytest

from qfd_app.edge.bandwidth import admit_equal, admit_optimal, slopes, water_fill
from qfd_app.edge.upload import min_bandwidth_hz, optimal_upload
from tests.edge.oracle import N0


def test_equal_admission_keeps_the_most_devices_that_fit_their_share():
    need = np.array([4.0, 1.0, 2.5, 9.0, 2.0])
    admitted = admit_equal(need, 10.0)
    # 3 devices get 10/3 ≥ 1, 2, 2.5; a fourth would get 2.5 < 4
    assert admitted.tolist() == [False, True, True, False, True]
    assert admit_equal(np.array([np.inf, 1.0]), 10.0).tolist() == [False, True]


def test_optimal_admission_keeps_the_cheapest_devices_whose_needs_fit_the_band():
    need = np.array([4.0, 1.0, 2.5, 9.0, 2.0])
    assert admit_optimal(need, 10.0).tolist() == [True, True, True, False, True]
    assert admit_optimal(need, 5.4).tolist() == [False, True, False, False, True]


def population(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "payload_bits": 10 ** rng.uniform(5, 7, n),
        "work_cycles": 10 ** rng.uniform(8, 10, n),
        "gain": 10 ** rng.uniform(-13, -9, n),
        "noise_w_per_hz": N0,
        "deadline_s": 10.0,
        "cpu_hz_min": np.full(n, 3e8),
        "cpu_hz_max": np.full(n, 2e9),
        "power_w_max": np.full(n, 0.2),
        "kappa": np.full(n, 1e-28),
    }


@pytest.mark.parametrize("n", [2, 7, 500])
def test_water_filling_equalises_the_marginal_value_of_bandwidth(n):
    params = population(n, seed=n)
    radio = {
        k: params[k]
        for k in (
            "payload_bits",
            "work_cycles",
            "gain",
            "noise_w_per_hz",
            "deadline_s",
            "cpu_hz_max",
            "power_w_max",
        )
    }
    need = min_bandwidth_hz(**radio)
    keep = np.isfinite(need)
    params = {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in params.items()}
    need = need[keep]
    total = 3.0 * need.sum() + 1e5 * keep.sum()
    start = need + (total - need.sum()) / keep.sum()
    bw, up, mu = water_fill(params, total_hz=total, need_hz=need, start_hz=start)
    assert bw.sum() <= total * (1 + 1e-12) and bw.sum() >= total * (1 - 1e-9)
    assert np.all(bw >= need) and up.feasible.all()
    assert (
        up.energy_j.sum() <= optimal_upload(bandwidth_hz=start, **params).energy_j.sum()
    )
    d1, _ = slopes(up, {**params, "bandwidth_hz": bw})
    free = bw > need * (1 + 1e-6)
    # KKT: −e'(B) = μ off the floor
    np.testing.assert_allclose(-d1[free], mu, rtol=1e-4)
    assert np.all(-d1[~free] <= mu * (1 + 1e-4))  # at the floor: worth less than μ


def test_slopes_are_the_derivatives_of_the_least_energy():
    params = population(4000, seed=9)
    bw = 10 ** np.random.default_rng(9).uniform(5, 7, 4000)
    up = optimal_upload(bandwidth_hz=bw, **params)
    d1, d2 = slopes(up, {**params, "bandwidth_hz": bw})
    step = 1e-4 * bw
    plus, minus = (optimal_upload(bandwidth_hz=bw + s, **params) for s in (step, -step))
    same = (
        up.feasible & minus.feasible & (plus.case == up.case) & (minus.case == up.case)
    )
    fd1 = (plus.energy_j - minus.energy_j) / (2 * step)
    fd2 = (plus.energy_j - 2 * up.energy_j + minus.energy_j) / step**2
    np.testing.assert_allclose(d1[same], fd1[same], rtol=1e-4)
    # where the difference quotient resolves it
    big = same & (np.abs(fd2) > 1e-6 * np.abs(fd1) / bw)
    assert np.median(np.abs(d2[big] / fd2[big] - 1)) < 1e-3
