"""Device states: validated as reported, priced exactly as the solver's inputs."""

import math

import numpy as np
import pytest

from qfd_app.edge import load_scenario
from qfd_app.edge.state import DeviceState, StateError, fleet_state, parse_state, solver_inputs

STATE = DeviceState(
    device_class="phone", bits_min=4, bits_max=8, cpu_hz_min=5e8, cpu_hz_max=2e9, cycles_per_flop=0.25,
    kappa=1e-28, power_w_max=0.2, distance_m=120.0, gain=3e-12, num_examples=450, range_sq={64: 2.5, 256: 4.0},
)  # fmt: skip


def test_a_state_survives_its_record_unchanged():
    assert parse_state(STATE.to_mapping()) == STATE


@pytest.mark.parametrize(
    "key, value",
    [
        ("gain", math.nan),
        ("gain", -1e-12),
        ("distance-m", 0.0),
        ("cpu-hz-max", math.inf),
        ("kappa", "1e-28"),
        ("bits-min", 0),
        ("bits-max", 33),
        ("bits-min", 9),  # above bits-max
        ("bits-max", True),
        ("num-examples", 0),
        ("num-examples", 4.5),
        ("cpu-hz-min", 3e9),  # above cpu-hz-max
        ("range-sq-64", -1.0),
        ("range-sq-256", math.nan),
        ("device-class", ""),
    ],
)
def test_an_absurd_reported_value_is_rejected_naming_its_key(key, value):
    record = {**STATE.to_mapping(), key: value}
    with pytest.raises(StateError, match=key):
        parse_state(record)


@pytest.mark.parametrize("key", ["gain", "bits-min", "device-class", "num-examples"])
def test_a_missing_field_is_rejected_naming_it(key):
    record = STATE.to_mapping()
    del record[key]
    with pytest.raises(StateError, match=key):
        parse_state(record)


def test_error_is_the_uniform_bound_of_the_reported_range_sums():
    for bits in (1, 3, 4, 8, 16):
        m = 64 if bits <= 3 else 256
        assert STATE.error(bits, m) == pytest.approx(STATE.range_sq[m] / (4 * (2**bits - 1) ** 2), rel=1e-15)
    assert math.isnan(DeviceState(**{**STATE.__dict__, "range_sq": {}}).error(4, 256))


def test_solver_inputs_price_work_payload_and_error_per_device_and_bit_width():
    scenario = load_scenario("smoke")
    fleet = scenario.fleet()
    states = [fleet_state(fleet, i, round_=3, num_examples=100 * (i + 1)) for i in range(len(fleet))]
    devices, cand = solver_inputs(
        states, bits=None, epochs=2, flops_per_sample=1e6, gamma=1.0,
        payload_bits=lambda b: 1000.0 * b, error=lambda n, b: float(n + 1) / b,
    )  # fmt: skip
    np.testing.assert_allclose(devices.gain, fleet.gains(3))
    np.testing.assert_allclose(devices.weight, [1 / 6, 2 / 6, 3 / 6])
    for n, state in enumerate(states):
        bits = [b for b in cand.bits[n] if b]
        assert bits == [b for b in (*range(1, 17), 32) if state.bits_min <= b <= state.bits_max]
        for k, b in enumerate(bits):
            assert cand.work_cycles[n, k] == pytest.approx(2 * 100 * (n + 1) * 1e6 * state.cycles_per_flop * b / 32)
            assert cand.payload_bits[n, k] == 1000.0 * b
            assert cand.error[n, k] == pytest.approx((n + 1) / b)
