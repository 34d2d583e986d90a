"""The device side: its profile from the scenario or its node config, and its
update's range sums."""

import math

import pytest
import torch

from qfd_app.edge import load_scenario
from qfd_app.edge.devices import path_loss_db
from qfd_app.edge.state import ProfileError, device_state
from qfd_app.quant import (
    decode_update,
    encode_update,
    get_codec,
    range_sq_sums,
)


@pytest.fixture(scope="module")
def scenario():
    return load_scenario("default")


def test_in_simulation_a_device_is_its_row_of_the_scenario_fleet(scenario):
    fleet = scenario.fleet(10)
    for partition in range(10):
        state = device_state(
            scenario,
            partition,
            10,
            server_round=4,
            num_examples=450,
            node_config={},
            range_sq={},
        )
        cls = fleet.classes[fleet.class_index[partition]]
        assert state.device_class == cls
        assert (
            state.gain == fleet.gains(4)[partition]
            and state.distance_m == fleet.distance_m[partition]
        )


def test_the_channel_changes_every_round_but_not_between_runs(scenario):
    gains = [device_state(scenario, 0, 10, r, 450, {}, {}).gain for r in (1, 2, 1)]
    assert gains[0] != gains[1] and gains[0] == gains[2]


def test_node_config_names_the_class_distance_and_demand_of_a_deployed_device(scenario):
    node_config = {
        "device-class": "edge",
        "distance-m": 80.0,
        "bits-min": 9,
        "bits-max": 12,
    }
    base = device_state(scenario, 0, 10, 2, 450, {}, {})
    state = device_state(scenario, 0, 10, 2, 450, node_config, {64: 1.0})
    profile = state.device_class
    assert (profile.name, profile.bits_min, profile.bits_max, state.distance_m) == (
        "edge",
        9,
        12,
        80.0,
    )
    assert profile.cpu_hz_max == 3.0e9 and state.range_sq == {64: 1.0}
    # same shadowing and fading, other path loss
    assert 10 * math.log10(state.gain / base.gain) == pytest.approx(
        float(path_loss_db(base.distance_m) - path_loss_db(80.0)), rel=1e-9
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("device-class", "laptop"),
        ("distance-m", -5.0),
        ("bits-min", 0),
        ("bits-max", "8"),
    ],
)
def test_a_bad_profile_key_is_refused_naming_it(scenario, key, value):
    with pytest.raises(ProfileError, match=key):
        device_state(scenario, 0, 10, 1, 450, {key: value}, {})


def test_range_sums_price_the_codec_error_exactly_as_its_own_bound():
    g = torch.Generator().manual_seed(0)
    update = {
        "a": torch.randn(33, 17, generator=g) * 1e-3,
        "b": torch.randn(300, generator=g),
    }
    sums = range_sq_sums(update)
    for bits in (2, 4, 8):
        codec = get_codec("uniform", bits)
        bound = sum(codec.error_bound(t) for t in update.values())
        assert sums[48] / (4 * (2**bits - 1) ** 2) == pytest.approx(bound, rel=1e-12)


def test_the_codec_squared_error_stays_within_the_reported_bound_on_average():
    g = torch.Generator().manual_seed(1)
    update = {"w": torch.randn(4096, generator=g)}
    bound = range_sq_sums(update)[48] / (4 * (2**4 - 1) ** 2)
    codec, shapes = get_codec("uniform", bits=4), {"w": (4096,)}
    errors = []
    for seed in range(20):
        arrays, meta = encode_update(update, codec, torch.Generator().manual_seed(seed))
        decoded = decode_update(
            arrays,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )
        errors.append(float((decoded["w"] - update["w"]).square().sum()))
    assert sum(errors) / len(errors) <= bound


@pytest.mark.parametrize(
    "range_sq, message",
    [
        ({48: 10**400}, "range sum of block size 48 must be a float"),
        ({48: float("nan")}, "range sum of block size 48"),
        ({48: -1.0}, "range sum of block size 48"),
        ({0: 1.0}, "range-sum block size must be an int"),
    ],
)
def test_stored_range_sums_beyond_float_range_are_refused_with_a_reason(
    scenario, range_sq, message
):
    with pytest.raises(ValueError, match=message):
        device_state(scenario, 0, 10, 2, 450, {}, range_sq)
