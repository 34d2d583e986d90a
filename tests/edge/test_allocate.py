"""The round solver: optimality against an independent oracle, its
constraints and properties."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from qfd_app.edge.allocate import (
    Candidates,
    Devices,
    Network,
    candidate_bits,
    downlink_rates,
    race_to_idle,
    solve_round,
)
from qfd_app.edge.energy import uplink_rate_bps
from tests.edge.oracle import (
    ONDEMAND_WIDTHS,
    One,
    best_bits,
    download_s,
    equal_split_oracle,
    optimal_split_energy,
    options,
    random_population,
)

RTOL = 1e-9


def assert_constraints(
    plan, devices: Devices, candidates: Candidates, network: Network
) -> None:
    """Every scheduled device's plan is physically consistent and within every limit."""
    on = plan.scheduled
    n = np.flatnonzero(on)
    assert np.all(plan.energy_j[~on] == 0) and np.all(plan.bits[~on] == 0)
    assert plan.bandwidth_hz.sum() <= network.bandwidth_hz * (1 + RTOL)
    if not n.size:
        return
    col = np.array(
        [int(np.flatnonzero(candidates.bits[i] == plan.bits[i])[0]) for i in n]
    )
    work, payload = candidates.work_cycles[n, col], candidates.payload_bits[n, col]
    # the download, at the oracle's rate, and its energy
    t_down = [
        download_s(devices, network, i, candidates.download_bits[i, k])
        for i, k in zip(n, col, strict=True)
    ]
    np.testing.assert_allclose(plan.download_s[n], t_down, rtol=1e-12)
    np.testing.assert_allclose(
        plan.energy_download_j[n], devices.receive_power_w[n] * plan.download_s[n]
    )
    np.testing.assert_array_equal(
        plan.download_bits[n], candidates.download_bits[n, col]
    )
    # deadline (download, training, upload), clock and power limits
    assert np.all(
        plan.download_s[n] + plan.compute_s[n] + plan.upload_s[n]
        <= network.deadline_s * (1 + RTOL)
    )
    assert np.all(plan.cpu_hz[n] <= devices.cpu_hz_max[n] * (1 + RTOL))
    assert np.all(plan.cpu_hz[n] >= devices.cpu_hz_min[n] * (1 - RTOL))
    assert np.all(plan.power_w[n] <= devices.power_w_max[n] * (1 + RTOL))
    assert np.all(plan.bandwidth_hz[n] > 0)
    # the payload fits through the link and the work through the CPU in the times given
    rate = uplink_rate_bps(
        plan.bandwidth_hz[n], devices.gain[n], plan.power_w[n], network.noise_w_per_hz
    )
    np.testing.assert_allclose(rate * plan.upload_s[n], payload, rtol=1e-7)
    np.testing.assert_allclose(plan.cpu_hz[n] * plan.compute_s[n], work, rtol=1e-9)
    # energies are the model's
    np.testing.assert_allclose(
        plan.energy_compute_j[n],
        devices.kappa[n] * work * plan.cpu_hz[n] ** 2,
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        plan.energy_upload_j[n], plan.power_w[n] * plan.upload_s[n], rtol=1e-9
    )
    np.testing.assert_allclose(
        plan.energy_j[n],
        plan.energy_download_j[n] + plan.energy_compute_j[n] + plan.energy_upload_j[n],
        rtol=1e-12,
    )
    # the error budget, with weights renormalised over the scheduled devices
    weight = devices.weight[n] / devices.weight[n].sum()
    np.testing.assert_allclose(plan.weight_used[n], weight)
    total = float(np.sum(weight**2 * candidates.error[n, col]))
    assert math.isclose(plan.total_error, total, rel_tol=1e-12)
    if plan.budget_met:
        assert total <= network.error_budget_abs * (1 + 1e-12)


def assert_exclusions(plan, devices, candidates, network) -> None:
    """A scheduled device can meet the deadline; an excluded one cannot, even at
    b_min, f_max, p_max."""
    k = int(plan.scheduled.sum())
    for i in np.flatnonzero(~plan.scheduled):
        first = options(candidates, i)[0]
        one = One.of(devices, candidates, network, i, first)
        assert plan.reason[i], "an excluded device carries its reason"
        if network.bandwidth_policy == "equal":
            assert one.window(network.bandwidth_hz / (k + 1)) is None
        else:
            used = sum(
                One.of(
                    devices, candidates, network, j, options(candidates, j)[0]
                ).least_bandwidth(network.bandwidth_hz)
                for j in np.flatnonzero(plan.scheduled)
            )
            assert (
                one.least_bandwidth(network.bandwidth_hz) > network.bandwidth_hz - used
            )


def test_equal_split_matches_brute_force_over_bits_and_scipy_over_upload_time():
    rng = np.random.default_rng(2024)
    compared = unmet = 0
    for case in range(240):
        devices, candidates, network = random_population(rng)
        plan = solve_round(devices, candidates, network)
        assert_constraints(plan, devices, candidates, network)
        assert_exclusions(plan, devices, candidates, network)
        rows = [int(i) for i in np.flatnonzero(plan.scheduled)]
        if not rows:
            continue
        best, met = equal_split_oracle(devices, candidates, network, rows)
        assert plan.budget_met == met, f"case {case}"
        if met:
            assert plan.energy_j.sum() <= best * (1 + 1e-4), (
                f"case {case}: {plan.energy_j.sum()} > {best}"
            )
            compared += 1
        else:  # every device at its most precise bit-width that meets the deadline
            share = network.bandwidth_hz / len(rows)
            for i in rows:
                feasible = [
                    candidates.bits[i, k]
                    for k in options(candidates, i)
                    if One.of(devices, candidates, network, i, k).window(share)
                    is not None
                ]
                assert plan.bits[i] == max(feasible), f"case {case}"
            unmet += 1
    assert compared >= 200 and unmet >= 1


@pytest.mark.parametrize("downlink, seed, minimum", [(False, 7, 8), (True, 8, 6)])
def test_optimal_split_matches_brute_force_over_bits_and_scipy_over_the_shares(
    downlink, seed, minimum
):
    """Also with downloads (the oracle adds their time and energy from the
    definitions)."""
    rng = np.random.default_rng(seed)
    compared = 0
    for case in range(12):
        devices, candidates, network = random_population(
            rng, max_devices=3, max_width=2, policy="optimal", downlink=downlink
        )
        plan = solve_round(devices, candidates, network)
        assert_constraints(plan, devices, candidates, network)
        assert_exclusions(plan, devices, candidates, network)
        rows = [int(i) for i in np.flatnonzero(plan.scheduled)]
        if not rows:
            continue
        best, met = best_bits(
            devices,
            candidates,
            network,
            rows,
            lambda combo: optimal_split_energy(
                devices, candidates, network, rows, combo
            ),
        )
        if met:
            assert plan.energy_j.sum() <= best * (1 + 1e-4), f"case {case}"
            compared += 1
    assert compared >= minimum


def test_with_downloads_the_equal_split_matches_the_oracle():
    """The deadline holds the download (t_down + t_cmp + τ ≤ T, per bit-width when
    S_down depends on b) and the receive energy is charged: checked against the oracle,
    which adds both from the definitions."""
    rng = np.random.default_rng(31)
    compared = excluded = 0
    for case in range(160):
        devices, candidates, network = random_population(rng, downlink=True)
        plan = solve_round(devices, candidates, network)
        assert_constraints(plan, devices, candidates, network)
        assert_exclusions(plan, devices, candidates, network)
        excluded += int((~plan.scheduled).sum())
        rows = [int(i) for i in np.flatnonzero(plan.scheduled)]
        if not rows:
            continue
        best, met = equal_split_oracle(devices, candidates, network, rows)
        assert plan.budget_met == met, f"case {case}"
        if met:
            assert plan.energy_j.sum() <= best * (1 + 1e-4), (
                f"case {case}: {plan.energy_j.sum()} > {best}"
            )
            assert plan.energy_download_j.sum() > 0
            compared += 1
    assert compared >= 100 and excluded >= 10


def test_race_to_idle_counts_the_download_in_its_deadline_and_energy():
    rng = np.random.default_rng(5)
    for _ in range(40):
        devices, candidates, network = random_population(
            rng, max_devices=6, downlink=True
        )
        plan = race_to_idle(devices, candidates, network)
        assert_constraints(plan, devices, candidates, network)
        k = int(plan.scheduled.sum())
        for i in np.flatnonzero(~plan.scheduled):
            top = options(candidates, i)[-1]
            one = One.of(devices, candidates, network, i, top)
            assert one.window(network.bandwidth_hz / (k + 1)) is None


@pytest.mark.slow
def test_optimal_split_matches_the_oracle_on_more_populations():
    rng = np.random.default_rng(11)
    compared = 0
    for case in range(60):
        devices, candidates, network = random_population(
            rng, max_devices=4, max_width=3, policy="optimal"
        )
        plan = solve_round(devices, candidates, network)
        assert_constraints(plan, devices, candidates, network)
        rows = [int(i) for i in np.flatnonzero(plan.scheduled)]
        if rows:
            best, met = best_bits(
                devices,
                candidates,
                network,
                rows,
                lambda combo: optimal_split_energy(
                    devices, candidates, network, rows, combo
                ),
            )
            if met:
                assert plan.energy_j.sum() <= best * (1 + 1e-4), f"case {case}"
                compared += 1
    # 50 of the 60 populations of this seed schedule a device and meet the budget
    assert compared >= 45


@pytest.mark.parametrize("policy", ["equal", "optimal"])
def test_energy_never_increases_when_the_deadline_or_the_budget_is_relaxed(policy):
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(80):
        devices, candidates, network = random_population(
            rng, max_devices=8, policy=policy
        )
        base = solve_round(devices, candidates, network)
        if not base.scheduled.any() or not base.budget_met:
            continue
        later = solve_round(
            devices,
            candidates,
            dataclasses.replace(network, deadline_s=network.deadline_s * 1.5),
        )
        looser = solve_round(
            devices,
            candidates,
            dataclasses.replace(network, error_budget=network.error_budget * 2),
        )
        # admission ignores the budget
        assert np.array_equal(looser.scheduled, base.scheduled)
        assert looser.energy_j.sum() <= base.energy_j.sum() * (1 + 1e-9)
        # same devices: compare like for like
        if np.array_equal(later.scheduled, base.scheduled):
            assert later.energy_j.sum() <= base.energy_j.sum() * (1 + 1e-9)
            checked += 1
    assert checked >= 30


def test_the_optimised_split_never_costs_more_than_the_equal_split():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(80):
        devices, candidates, network = random_population(rng, max_devices=8)
        equal = solve_round(devices, candidates, network)
        best = solve_round(
            devices,
            candidates,
            dataclasses.replace(network, bandwidth_policy="optimal"),
        )
        if (
            equal.budget_met
            and equal.scheduled.any()
            and np.array_equal(equal.scheduled, best.scheduled)
        ):
            assert best.energy_j.sum() <= equal.energy_j.sum() * (1 + 1e-9)
            assert best.price_bandwidth > 0
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("policy", ["equal", "optimal"])
def test_a_single_bit_width_demand_gets_exactly_that_bit_width(policy):
    rng = np.random.default_rng(9)
    for _ in range(30):
        devices, candidates, network = random_population(
            rng, max_devices=6, max_width=1, policy=policy
        )
        plan = solve_round(devices, candidates, network)
        on = plan.scheduled
        assert np.array_equal(plan.bits[on], candidates.bits[on, 0])


def _identical_devices(
    n: int, gamma: float, bits: int, deadline_s: float = 30.0
) -> tuple:
    # at the 0.3 GHz floor: 15 s of the 30 s
    work = 100 * 9e7 * 0.5 * (bits / 32) ** gamma
    devices = Devices(
        np.full(n, 3e8),
        np.full(n, 1e9),
        np.full(n, 1e-28),
        np.full(n, 0.1),
        np.geomspace(1e-12, 1e-10, n),
        np.full(n, 1.0 / n),
    )
    candidates = Candidates(
        np.full((n, 1), bits),
        np.full((n, 1), work),
        np.full((n, 1), bits * 2.6e5 + 8e3),
        np.full((n, 1), 1e-3 / (2.0**bits - 1) ** 2),
    )
    return devices, candidates, Network(1e7, 10 ** (-20.4), deadline_s)


def test_with_gamma_zero_compute_energy_at_the_clock_floor_or_at_f_max_does_not_depend_on_bits():  # noqa: E501
    for plan_of in (solve_round, race_to_idle):
        energies = []
        for bits in (2, 4, 8, 16):
            devices, candidates, network = _identical_devices(5, gamma=0.0, bits=bits)
            plan = plan_of(devices, candidates, network)
            assert plan.scheduled.all()
            energies.append(plan.energy_compute_j)
        for e in energies[1:]:
            np.testing.assert_allclose(e, energies[0], rtol=1e-12)
    # and with γ = 1 it does (work grows with b)
    low = solve_round(*_identical_devices(5, gamma=1.0, bits=2)).energy_compute_j
    high = solve_round(*_identical_devices(5, gamma=1.0, bits=8)).energy_compute_j
    assert np.all(high > 3.9 * low)


def test_a_device_that_cannot_train_in_time_is_excluded_with_the_reason():
    devices, candidates, network = _identical_devices(3, gamma=1.0, bits=8)
    slow = dataclasses.replace(
        devices,
        cpu_hz_max=np.array([1e9, 1e9, 1e5]),
        cpu_hz_min=np.array([3e8, 3e8, 1e5]),
    )
    plan = solve_round(slow, candidates, network)
    assert list(plan.status) == ["scheduled", "scheduled", "excluded"]
    assert "training alone takes" in plan.reason[2] and "deadline" in plan.reason[2]
    assert plan.weight_used[:2].sum() == pytest.approx(1.0)
    assert any("cannot meet" in w for w in plan.warnings)


@pytest.mark.parametrize("plan_of", [solve_round, race_to_idle])
def test_a_device_whose_download_alone_exceeds_the_deadline_is_excluded_saying_so(
    plan_of,
):
    devices, candidates, network = _identical_devices(3, gamma=1.0, bits=8)
    devices = dataclasses.replace(devices, receive_power_w=np.full(3, 1.3))
    # device 2 receives 10 Gbit: at ~4 Mbit/s that alone is far over the 30 s
    sizes = np.array([[3.2e7], [3.2e7], [1e10]])
    candidates = dataclasses.replace(candidates, download_bits=sizes)
    plan = plan_of(devices, candidates, network)
    assert list(plan.status) == ["scheduled", "scheduled", "excluded"]
    assert "the download alone" in plan.reason[2]
    assert "over the 30 s deadline" in plan.reason[2]
    assert plan.energy_download_j[2] == 0 and plan.download_s[2] == 0
    assert np.all(plan.energy_download_j[:2] > 0)


def test_a_download_that_leaves_too_little_time_to_train_excludes_saying_so():
    devices, candidates, network = _identical_devices(3, gamma=1.0, bits=8)
    # training at 8 bits takes 1.1 s at f_max; device 2's download takes ~29.5 s
    rate = float(downlink_rates(devices, network)[2])
    sizes = np.array([[1e6], [1e6], [29.5 * rate]])
    candidates = dataclasses.replace(candidates, download_bits=sizes)
    plan = solve_round(devices, candidates, network)
    assert plan.status[2] == "excluded"
    assert "the download takes 29.5 s and training" in plan.reason[2]


def test_a_download_that_grows_with_the_bits_pushes_the_device_to_fewer_bits():
    devices, candidates, network = _identical_devices(1, gamma=0.0, bits=8)
    # the same device at 4 or 8 bits; receiving the 8-bit model would not leave time
    bits = np.array([[4, 8]])
    rate = float(downlink_rates(devices, network)[0])
    candidates = Candidates(
        bits,
        np.repeat(candidates.work_cycles, 2, axis=1),
        np.array([[4 * 2.6e5, 8 * 2.6e5]]),
        np.array([[1e-4, 1e-6]]),
        np.array([[10 * rate, 40 * rate]]),  # 10 s and 40 s of a 30 s deadline
    )
    plan = solve_round(devices, candidates, network)
    assert plan.scheduled[0] and plan.bits[0] == 4
    assert plan.download_s[0] == pytest.approx(10.0)


def test_a_round_nobody_can_make_excludes_everyone_without_raising():
    devices, candidates, network = _identical_devices(
        3, gamma=1.0, bits=8, deadline_s=1e-3
    )
    for policy in ("equal", "optimal"):
        plan = solve_round(
            devices, candidates, dataclasses.replace(network, bandwidth_policy=policy)
        )
        assert not plan.scheduled.any() and plan.energy_j.sum() == 0
        assert all(plan.reason)


def test_an_unmeetable_budget_gives_every_device_its_most_precise_bits_and_a_warning():
    rng = np.random.default_rng(1)
    devices, candidates, network = random_population(rng, max_devices=5)
    network = dataclasses.replace(
        network, deadline_s=1e4, bandwidth_hz=1e8, error_budget=1e-30
    )
    plan = solve_round(devices, candidates, network)
    on = plan.scheduled
    assert on.all() and not plan.budget_met
    assert np.array_equal(plan.bits, candidates.bits.max(axis=1))
    assert any("error budget" in w for w in plan.warnings)


def test_race_to_idle_runs_at_full_clock_and_power_on_equal_shares():
    rng = np.random.default_rng(4)
    devices, candidates, network = random_population(rng, max_devices=6)
    plan = race_to_idle(devices, candidates, network)
    on = plan.scheduled
    top = candidates.bits.max(axis=1)
    assert np.array_equal(plan.bits[on], top[on])
    np.testing.assert_array_equal(plan.cpu_hz[on], devices.cpu_hz_max[on])
    np.testing.assert_array_equal(plan.power_w[on], devices.power_w_max[on])
    np.testing.assert_allclose(plan.bandwidth_hz[on], network.bandwidth_hz / on.sum())
    assert_constraints(plan, devices, candidates, network)


def test_the_solver_is_deterministic():
    rng = np.random.default_rng(12)
    devices, candidates, network = random_population(
        rng, max_devices=6, policy="optimal"
    )
    first, second = (
        solve_round(devices, candidates, network),
        solve_round(devices, candidates, network),
    )
    for field in ("bits", "cpu_hz", "power_w", "bandwidth_hz", "energy_j"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))


@pytest.mark.parametrize("policy", ["equal", "optimal"])
def test_thousands_of_devices_solve_within_every_constraint(policy):
    rng = np.random.default_rng(0)
    n = 3000
    bits_min = rng.choice([2, 4, 8], n)
    bits = candidate_bits(bits_min, bits_min * 2, ONDEMAND_WIDTHS)
    valid = bits > 0
    work = np.where(valid, 4e10 * rng.uniform(0.1, 0.5, n)[:, None] * bits / 32, 0.0)
    devices = Devices(
        np.full(n, 3e8),
        np.full(n, 2e9),
        np.full(n, 1e-28),
        np.full(n, 0.2),
        10 ** rng.uniform(-14, -9, n),
        np.full(n, 1.0 / n),
    )
    levels = np.exp2(np.maximum(bits, 1)) - 1
    candidates = Candidates(
        bits,
        work,
        np.where(valid, bits * 2.7e5 + 1e4, 0.0),
        np.where(valid, 1.0 / (4 * levels**2), 0.0),
    )
    network = Network(
        1e9, 10 ** (-20.4), 10.0, error_budget=2e-6, bandwidth_policy=policy
    )
    plan = solve_round(devices, candidates, network)
    assert plan.budget_met and plan.scheduled.sum() > 0.9 * n
    assert_constraints(plan, devices, candidates, network)
    assert plan.total_error > 0.5 * network.error_budget_abs  # the budget binds


def test_candidate_bits_lists_codec_bit_widths_only():
    bits = candidate_bits([1, 14, 32], [3, 32, 32], ONDEMAND_WIDTHS)
    assert bits.shape == (3, 4)  # padded to the longest demand
    assert [row[row > 0].tolist() for row in bits] == [
        [1, 2, 3],
        [14, 15, 16, 32],
        [32],
    ]


def test_inputs_of_the_wrong_shape_are_rejected_with_the_field_named():
    devices, candidates, network = _identical_devices(3, gamma=1.0, bits=8)
    with pytest.raises(ValueError, match="devices.gain"):
        solve_round(dataclasses.replace(devices, gain=np.ones(2)), candidates, network)
    with pytest.raises(ValueError, match="candidates.error"):
        solve_round(
            devices, dataclasses.replace(candidates, error=np.ones((3, 2))), network
        )
    with pytest.raises(ValueError, match="bandwidth_policy"):
        Network(1e6, 1e-20, 1.0, bandwidth_policy="fair")
    with pytest.raises(ValueError, match="deadline_s"):
        Network(1e6, 1e-20, -1.0)
