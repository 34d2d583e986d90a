"""One device, one bit-width: the optimal upload time against scipy, and
the least bandwidth."""

import math

import numpy as np
import pytest

from qfd_app.edge.energy import uplink_rate_bps
from qfd_app.edge.upload import (
    CPU_FLOOR,
    CPU_MAX,
    INFEASIBLE,
    INTERIOR,
    POWER_MAX,
    min_bandwidth_hz,
    optimal_upload,
)
from tests.edge.oracle import N0, One


def random_elements(rng, n):
    return {
        "payload_bits": 10 ** rng.uniform(4, 9, n),
        "work_cycles": 10 ** rng.uniform(7, 12, n),
        "bandwidth_hz": 10 ** rng.uniform(4, 7, n),
        "gain": 10 ** rng.uniform(-14, -8, n),
        "deadline_s": 10 ** rng.uniform(-1, 2.5, n),
        "cpu_hz_min": (fmin := 10 ** rng.uniform(7, 9, n)),
        "cpu_hz_max": fmin * 10 ** rng.uniform(0, 1, n),
        "power_w_max": 10 ** rng.uniform(-2, 0, n),
        "kappa": np.full(n, 1e-28),
    }


def test_optimal_upload_matches_scipy_bounded_minimisation_on_every_case():
    rng = np.random.default_rng(0)
    args = random_elements(rng, 1500)
    up = optimal_upload(noise_w_per_hz=N0, **args)
    seen = set()
    for i in range(1500):
        one = One(
            args["payload_bits"][i],
            args["work_cycles"][i],
            args["gain"][i],
            args["cpu_hz_min"][i],
            args["cpu_hz_max"][i],
            args["power_w_max"][i],
            args["kappa"][i],
            args["deadline_s"][i],
            N0,
        )
        best = one.least_energy(args["bandwidth_hz"][i])
        assert up.feasible[i] == math.isfinite(best), i
        seen.add(int(up.case[i]))
        if math.isfinite(best):
            assert up.energy_j[i] <= best * (1 + 1e-9), i
            assert up.energy_j[i] >= best * (1 - 1e-6), i
    assert seen == {INTERIOR, POWER_MAX, CPU_FLOOR, CPU_MAX, INFEASIBLE}


def test_the_plan_meets_the_deadline_within_the_limits():
    rng = np.random.default_rng(1)
    args = random_elements(rng, 5000)
    up = optimal_upload(noise_w_per_hz=N0, **args)
    ok = up.feasible
    assert np.all(
        up.compute_s[ok] + up.upload_s[ok] <= args["deadline_s"][ok] * (1 + 1e-9)
    )
    assert np.all(up.power_w[ok] <= args["power_w_max"][ok] * (1 + 1e-12))
    assert np.all(up.cpu_hz[ok] <= args["cpu_hz_max"][ok] * (1 + 1e-12))
    assert np.all(up.cpu_hz[ok] >= args["cpu_hz_min"][ok] * (1 - 1e-12))
    assert np.all(np.isinf(up.energy_j[~ok])) and np.all(np.isnan(up.cpu_hz[~ok]))


def test_a_warm_start_gives_the_same_answer():
    rng = np.random.default_rng(2)
    args = random_elements(rng, 2000)
    cold = optimal_upload(noise_w_per_hz=N0, **args)
    warm = optimal_upload(
        noise_w_per_hz=N0,
        upload_s_guess=cold.upload_s * rng.uniform(0.5, 1.5, 2000),
        **args,
    )
    np.testing.assert_allclose(
        warm.energy_j[cold.feasible], cold.energy_j[cold.feasible], rtol=1e-12
    )


def test_arguments_broadcast_over_devices_and_bit_widths():
    up = optimal_upload(
        payload_bits=np.array([[1e6, 2e6, 4e6]]),
        work_cycles=np.array([[1e9, 2e9, 4e9]]),
        bandwidth_hz=1e6,
        gain=np.array([[1e-11], [1e-10]]),
        noise_w_per_hz=N0,
        deadline_s=10.0,
        cpu_hz_min=3e8,
        cpu_hz_max=2e9,
        power_w_max=0.2,
        kappa=1e-28,
    )
    assert up.energy_j.shape == (2, 3)
    assert np.all(np.diff(up.energy_j, axis=1) > 0)  # more bits, more energy
    assert np.all(up.energy_j[1] < up.energy_j[0])  # better channel, less energy


def test_min_bandwidth_is_the_feasibility_boundary():
    rng = np.random.default_rng(3)
    args = random_elements(rng, 3000)
    radio = {
        k: args[k]
        for k in (
            "payload_bits",
            "work_cycles",
            "gain",
            "deadline_s",
            "cpu_hz_max",
            "power_w_max",
        )
    }
    need = min_bandwidth_hz(noise_w_per_hz=N0, **radio)
    finite = np.isfinite(need)
    assert 0.1 < finite.mean() < 0.99
    # at B_need the full-power rate uploads S in exactly the time the full clock leaves
    window = args["deadline_s"] - args["work_cycles"] / args["cpu_hz_max"]
    rate = uplink_rate_bps(
        need[finite], args["gain"][finite], args["power_w_max"][finite], N0
    )
    np.testing.assert_allclose(
        rate * window[finite], args["payload_bits"][finite], rtol=1e-9
    )
    rest = {k: v for k, v in args.items() if k != "bandwidth_hz"}
    at = optimal_upload(bandwidth_hz=need, noise_w_per_hz=N0, **rest)
    below = optimal_upload(bandwidth_hz=need * (1 - 1e-4), noise_w_per_hz=N0, **rest)
    assert at.feasible[finite].all()
    # (a saturated rate hardly moves with B)
    assert below.feasible[finite].mean() < 0.01
    # infinite need: even unlimited bandwidth fails (the compute alone or the rate
    # ceiling g p / (N0 ln 2))
    huge = optimal_upload(bandwidth_hz=1e15, noise_w_per_hz=N0, **rest)
    assert not huge.feasible[~finite].any()


@pytest.mark.parametrize("payload_bits", [1.0, 1e3, 1e10])
def test_extreme_payloads_stay_finite(payload_bits):
    up = optimal_upload(
        payload_bits=payload_bits,
        work_cycles=1e9,
        bandwidth_hz=1e6,
        gain=1e-10,
        noise_w_per_hz=N0,
        deadline_s=30.0,
        cpu_hz_min=3e8,
        cpu_hz_max=2e9,
        power_w_max=0.2,
        kappa=1e-28,
    )
    assert not up.feasible or np.isfinite(up.energy_j)
