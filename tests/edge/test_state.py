"""Device states: validated as reported, priced exactly as the solver's inputs."""

import math

import numpy as np
import pytest

from qfd_app.edge import load_scenario
from qfd_app.edge.devices import DeviceClass
from qfd_app.edge.problem import candidate_bits
from qfd_app.edge.state import DeviceState, fleet_state, solver_inputs

PHONE = DeviceClass(
    "phone",
    bits_min=4,
    bits_max=8,
    cpu_hz_min=5e8,
    cpu_hz_max=2e9,
    cycles_per_flop=0.25,
    kappa=1e-28,
    power_w_max=0.2,
)
STATE = DeviceState(
    PHONE, distance_m=120.0, gain=3e-12, num_examples=450, range_sq={48: 2.5}
)
WIDTHS = (*range(1, 17), 32)


def test_error_is_the_uniform_bound_of_the_reported_range_sums():
    for bits in (1, 3, 4, 8, 16):
        m = 48
        assert STATE.error(bits, m) == pytest.approx(
            STATE.range_sq[m] / (4 * (2**bits - 1) ** 2), rel=1e-15
        )
    assert math.isnan(DeviceState(**{**STATE.__dict__, "range_sq": {}}).error(4, 48))


def test_solver_inputs_price_work_payload_and_error_per_device_and_bit_width():
    scenario = load_scenario("smoke")
    fleet = scenario.fleet()
    states = [
        fleet_state(fleet, i, round_=3, num_examples=100 * (i + 1))
        for i in range(len(fleet))
    ]
    demand = (
        [s.device_class.bits_min for s in states],
        [s.device_class.bits_max for s in states],
    )
    devices, cand = solver_inputs(
        states,
        bits=candidate_bits(*demand, WIDTHS),
        epochs=2,
        flops_per_sample=1e6,
        gamma=1.0,
        payload_bits=lambda b: 1000.0 * b,
        error=lambda n, b: float(n + 1) / b,
    )
    np.testing.assert_allclose(devices.gain, fleet.gains(3))
    np.testing.assert_allclose(devices.weight, [1 / 6, 2 / 6, 3 / 6])
    for n, state in enumerate(states):
        bits = [b for b in cand.bits[n] if b]
        profile = state.device_class
        assert bits == [b for b in WIDTHS if profile.bits_min <= b <= profile.bits_max]
        for k, b in enumerate(bits):
            assert cand.work_cycles[n, k] == pytest.approx(
                2 * 100 * (n + 1) * 1e6 * profile.cycles_per_flop * b / 32
            )
            assert cand.payload_bits[n, k] == 1000.0 * b
            assert cand.error[n, k] == pytest.approx((n + 1) / b)
