"""The protocol: a device's state and its train reply are checked as received, and
survive their records."""

import math

import pytest

from qfd_app.protocol import (
    REPLY_METRICS,
    ReplyError,
    StateError,
    TrainConfig,
    parse_state,
    reply_host,
    reply_metrics,
    reported_partition,
    state_record,
)
from tests.edge.test_state import STATE  # a phone's state, with its range sums

METRICS = {
    "num-examples": 10,
    "train-loss": 0.5,
    "partition-id": 3,
    "train-s": 1.0,
    "encode-s": 0.1,
    "range-sq-48": 12.5,
}


def test_a_state_survives_its_record_unchanged():
    assert parse_state(state_record(7, STATE)) == (7, STATE)


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
        ("range-sq-48", -1.0),
        ("range-sq-48", math.nan),
        ("device-class", ""),
    ],
)
def test_an_absurd_reported_value_is_rejected_naming_its_key(key, value):
    record = {**state_record(7, STATE), key: value}
    with pytest.raises(StateError, match=key):
        parse_state(record)


@pytest.mark.parametrize("key", ["gain", "bits-min", "device-class", "num-examples"])
def test_a_missing_field_is_rejected_naming_it(key):
    record = state_record(7, STATE)
    del record[key]
    with pytest.raises(StateError, match=key):
        parse_state(record)


@pytest.mark.parametrize("value", [10**400, -(10**400), float("inf")])
@pytest.mark.parametrize("key", ["gain", "range-sq-48"])
def test_a_number_beyond_float_range_is_a_state_error_not_an_overflow(key, value):
    with pytest.raises(StateError, match=f"{key}.* must be a float"):
        parse_state({**state_record(7, STATE), key: value})


def test_a_negative_partition_id_is_refused():
    with pytest.raises(StateError, match="partition-id.*-1"):
        parse_state({**state_record(7, STATE), "partition-id": -1})


def test_a_train_config_survives_its_record():
    config = TrainConfig(3, 10, "uniform", 4, 1.5e9, 0.2, 1e6)
    assert TrainConfig.from_record(config.to_record()) == config


def test_reply_metrics_pass_and_convert():
    assert reply_metrics(METRICS) == {**METRICS, "train-loss": 0.5}
    assert set(REPLY_METRICS) == set(METRICS)


@pytest.mark.parametrize(
    "key, value",
    [
        ("num-examples", 0),
        ("num-examples", 2.5),
        ("train-loss", math.nan),
        ("train-loss", [0.5]),
        ("partition-id", True),
        ("train-s", -1.0),
        ("range-sq-48", math.inf),
    ],
)
def test_a_bad_reply_metric_is_refused_naming_key_value_and_what_is_allowed(key, value):
    with pytest.raises(ReplyError, match=rf"Reply metric '{key}' must be .*; got "):
        reply_metrics({**METRICS, key: value})


def test_a_reply_without_metrics_or_with_one_missing_is_refused():
    with pytest.raises(ReplyError, match="lacks the MetricRecord"):
        reply_metrics(None)
    with pytest.raises(ReplyError, match="'encode-s' is missing"):
        reply_metrics({k: v for k, v in METRICS.items() if k != "encode-s"})


def test_a_refused_state_still_names_its_partition_when_that_key_is_valid():
    assert reported_partition({**state_record(7, STATE), "gain": math.nan}) == 7
    for bad in (-1, "7", 7.0, True, None):
        assert (
            reported_partition({**state_record(7, STATE), "partition-id": bad}) is None
        )


def test_the_ray_node_of_a_reply_is_a_hex_id_or_nothing():
    node = "a3" * 28
    assert reply_host({"ray-node": node}) == node
    assert reply_host(None) == reply_host({}) == reply_host({"ray-node": ""}) == ""
    for bad in ("node-1", "A3" * 28, "a" * 65, 7):
        with pytest.raises(
            ReplyError, match="Reply host 'ray-node' must be a Ray node id"
        ):
            reply_host({"ray-node": bad})
