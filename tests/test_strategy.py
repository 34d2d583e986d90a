"""EdgeStrategy's aggregation: the weighted mean of accepted updates, bad replies
booked, never fatal, and each device's energy booked from its plan and the
bytes it really sent."""

import math
import time

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from qfd_app.downlink import Broadcaster, digest
from qfd_app.edge import Network
from qfd_app.edge.energy import uplink_rate_bps
from qfd_app.quant import decode_update, encode_update, get_codec, payload_bytes
from qfd_app.runs.ledger import Ledger, read_csv
from qfd_app.strategies import planner
from qfd_app.strategies.base import EdgeStrategy
from qfd_app.strategies.fixed import FixedBits
from qfd_app.strategies.planner import Assignment, History, RoundPhysics

SHAPES = {"conv.weight": (4, 2, 3, 3), "conv.bias": (4,)}


def metadata(node):
    return Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="x",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )


def reply(
    node,
    update,
    num_examples,
    loss=0.5,
    metrics=None,
    codec="fp32",
    bits=32,
    start=None,
):
    metrics = metrics or {
        "num-examples": num_examples,
        "train-loss": loss,
        "partition-id": node,
        "train-s": 1.5,
        "encode-s": 0.01,
        "range-sq-48": 2.0,
    }
    arrays, meta = encode_update(
        update, get_codec(codec, bits=bits), torch.Generator().manual_seed(node)
    )
    content = RecordDict(
        {
            "update": arrays,
            "update-meta": meta,
            "metrics": MetricRecord(metrics),
            # trained from the model it was sent (the strategy's global, fp32)
            "start": ConfigRecord({"digest": start or digest(random_state(0))}),
        }
    )
    return Message(content=content, metadata=metadata(node))


def error_reply(node, reason):
    return Message(error=Error(code=2, reason=reason), metadata=metadata(node))


def random_state(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


NETWORK = Network(bandwidth_hz=1e6, noise_w_per_hz=4e-21, deadline_s=30.0)


def assignment(node, codec, bits, *, bandwidth_hz=2e5, gain=1e-11, compute_s=10.0):
    return Assignment(
        partition_id=node,
        device_class="phone",
        codec=codec,
        bits=bits,
        bits_min=4,
        bits_max=8,
        cpu_hz=1e9,
        power_w=0.1,
        bandwidth_hz=bandwidth_hz,
        gain=gain,
        compute_s=compute_s,
        energy_compute_j=0.5,
    )


def make_strategy(tmp_path, codec="fp32", bits=32, **plan):
    physics = RoundPhysics(
        NETWORK,
        epochs=1,
        flops_per_sample=1e6,
        gamma=1.0,
        shapes=tuple(SHAPES.values()),
    )
    s = EdgeStrategy(
        FixedBits(codec=codec, bits=bits),
        Ledger(tmp_path),
        physics,
        fraction_train=1.0,
        seed=0,
    )
    s._global = random_state(0)
    s._assigned[1] = {
        node: assignment(node, codec, bits, **plan) for node in range(1, 7)
    }
    s._downloads[1] = Broadcaster("fp32", seed=0).downloads(
        1, s._global, {node: (codec, bits) for node in range(1, 7)}, held={}
    )
    return s


@pytest.fixture
def strategy(tmp_path):
    return make_strategy(tmp_path)


def test_global_model_moves_by_the_example_weighted_mean_update(strategy):
    updates = {node: random_state(node) for node in (1, 2, 3)}
    examples = {1: 10, 2: 30, 3: 60}
    arrays, metrics = strategy.aggregate_train(
        1, [reply(n, updates[n], examples[n]) for n in updates]
    )
    new = arrays.to_torch_state_dict()
    for name in SHAPES:
        expected = strategy._global[name].numpy() + np.average(
            [updates[n][name].numpy() for n in updates],
            axis=0,
            weights=[examples[n] for n in updates],
        )
        np.testing.assert_allclose(new[name].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert metrics["bytes-up"] == sum(
        4 * sum(v.numel() for v in updates[n].values()) for n in updates
    )
    # each device is booked the fp32 model it was sent, answered or not
    model_bytes = 4 * sum(math.prod(s) for s in SHAPES.values())
    rows = strategy.ledger.of_round(1)
    assert len(rows) == 6 and all(r.bytes_down == model_bytes for r in rows)


def test_bad_replies_are_rejected_with_reasons_and_the_round_goes_on(
    strategy, tmp_path
):
    good = random_state(7)
    nan = reply(2, random_state(8), 10)
    # the fp32 codec's buffer: raw float32 bytes
    bias = nan.content["update"]["conv.bias"]
    nan.content["update"]["conv.bias"] = Array(
        dtype=bias.dtype,
        shape=bias.shape,
        stype=bias.stype,
        data=np.full(4, np.nan, np.float32).tobytes(),
    )
    wrong_shape = {**random_state(9), "conv.bias": torch.zeros(5)}
    missing_metric = {"num-examples": 3, "train-loss": 0.1}
    replies = [
        reply(1, good, 10),
        nan,
        reply(3, wrong_shape, 10),
        reply(4, random_state(10), 10, metrics=missing_metric),
        error_reply(5, "device crashed"),
        # a device that trained from another model than the one it was sent
        reply(7, random_state(11), 10, start=digest(random_state(12))),
    ]  # node 6 never answers
    strategy._assigned[1][7] = assignment(7, "fp32", 32)
    strategy._downloads[1][7] = strategy._downloads[1][1]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    for name in SHAPES:  # only node 1's update counts
        torch.testing.assert_close(new[name], strategy._global[name] + good[name])
    rows = {int(r["node_id"]): r for r in read_csv(tmp_path / "devices.csv")}
    assert rows[1]["status"] == "ok"
    assert rows[2]["status"] == "rejected" and "NaN" in rows[2]["reason"]
    assert rows[3]["status"] == "rejected" and "shape" in rows[3]["reason"]
    assert rows[4]["status"] == "rejected" and "partition-id" in rows[4]["reason"]
    assert rows[5]["status"] == "failed" and rows[5]["reason"] == "device crashed"
    assert rows[6]["status"] == "failed" and "no reply" in rows[6]["reason"]
    assert rows[7]["status"] == "rejected"
    assert "trained from a model" in rows[7]["reason"]


def test_a_round_without_usable_updates_keeps_the_model(strategy):
    assert strategy.aggregate_train(1, [error_reply(1, "x")]) == (None, None)


def test_replies_with_extra_metrics_or_float_counts_are_rejected_not_fatal(strategy):
    bad = {
        "num-examples": 2.5,
        "train-loss": 0.1,
        "partition-id": 1,
        "train-s": 1.0,
        "encode-s": 0.1,
    }
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, random_state(1), 1, metrics=bad), reply(2, random_state(2), 4)]
    )
    assert arrays is not None
    statuses = [r.status for r in strategy.ledger.of_round(1)]
    assert statuses.count("ok") == 1 and statuses.count("rejected") == 1


def test_quantized_updates_are_decoded_and_averaged_at_the_assigned_bits(tmp_path):
    strategy = make_strategy(tmp_path, codec="uniform", bits=4)
    updates = {node: random_state(node) for node in (1, 2)}
    replies = [reply(n, updates[n], 10 * n, codec="uniform", bits=4) for n in updates]
    shapes = {k: tuple(v.shape) for k, v in strategy._global.items()}
    decoded = {
        n: decode_update(
            r.content["update"],
            r.content["update-meta"],
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )
        for n, r in zip(updates, replies)
    }
    arrays, metrics = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    for name in SHAPES:
        expected = (
            strategy._global[name]
            + (10 * decoded[1][name] + 20 * decoded[2][name]) / 30
        )
        torch.testing.assert_close(new[name], expected)
    assert metrics["bytes-up"] == sum(
        payload_bytes(r.content["update"]) for r in replies
    )
    # 152 values in 4 small tensors: 4 bits each plus each tensor's fixed scales
    assert metrics["bytes-up"] < 0.25 * sum(
        4 * v.numel() for u in updates.values() for v in u.values()
    )


def test_an_update_at_other_bits_than_assigned_is_rejected(tmp_path):
    strategy = make_strategy(tmp_path, codec="uniform", bits=4)
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(1, random_state(1), 5, codec="uniform", bits=8),
            reply(2, random_state(2), 5, codec="uniform", bits=4),
        ],
    )
    rows = {r.node_id: r for r in strategy.ledger.of_round(1)}
    assert (
        rows[1].status == "rejected" and "8" in rows[1].reason and "4" in rows[1].reason
    )
    assert rows[2].status == "ok" and arrays is not None


def test_a_traceback_in_an_error_reply_is_booked_as_its_one_line_message(
    strategy, tmp_path
):
    traceback = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n    '
        "raise\nClientAppException:\nException ClientAppException occurred. "
        "Message: out of memory\n"
    )
    strategy.aggregate_train(1, [error_reply(1, traceback)])
    rows = read_csv(tmp_path / "devices.csv")
    assert (
        rows[0]["reason"]
        == "Exception ClientAppException occurred. Message: out of memory"
    )


def test_energy_is_booked_from_the_plan_and_the_bytes_really_received(tmp_path):
    strategy = make_strategy(tmp_path, codec="uniform", bits=4)
    sent = reply(1, random_state(1), 5, codec="uniform", bits=4)
    strategy.aggregate_train(1, [sent, error_reply(2, "crashed")])
    rows = {r.node_id: r for r in strategy.ledger.of_round(1)}
    plan = assignment(1, "uniform", 4)
    received = payload_bytes(sent.content["update"])
    rate = float(
        uplink_rate_bps(
            plan.bandwidth_hz, plan.gain, plan.power_w, NETWORK.noise_w_per_hz
        )
    )
    assert (
        rows[1].bytes_up
        == received
        == planner.payload_bits("uniform", 4, strategy.physics.shapes) / 8
    )
    assert rows[1].upload_s == pytest.approx(8 * received / rate, rel=1e-12)
    assert rows[1].energy_upload_j == pytest.approx(
        plan.power_w * 8 * received / rate, rel=1e-12
    )
    assert rows[1].energy_compute_j == 0.5 and not rows[1].deadline_missed
    assert (
        rows[2].status == "failed" and rows[2].energy_j == 0 and rows[2].bytes_up == 0
    )


def test_an_upload_that_breaks_the_deadline_is_flagged(tmp_path):
    # ~1 ms upload, 0.1 ms left
    strategy = make_strategy(tmp_path, compute_s=NETWORK.deadline_s - 1e-4)
    strategy.aggregate_train(
        1, [reply(1, random_state(1), 5), reply(2, random_state(2), 5)]
    )
    rows = [r for r in strategy.ledger.of_round(1) if r.status == "ok"]
    assert len(rows) == 2
    assert all(
        r.deadline_missed and r.compute_s + r.upload_s > NETWORK.deadline_s
        for r in rows
    )
    assert strategy.ledger.summarise(1)["deadline_misses"] == 2


# --------------------------------------------------------------------- planning a round


class Planned:
    """`ondemand`'s rules, the tiny model's physics and a history, planning
    smoke-scenario rounds."""

    def __init__(self, epsilon):
        from qfd_app.diffusion.profile import model_profile
        from qfd_app.strategies.ondemand import OnDemand

        profile = model_profile("tiny", 16, 1)
        network = Network(
            bandwidth_hz=10e6,
            noise_w_per_hz=4e-21,
            deadline_s=300.0,
            error_budget=epsilon,
        )
        self.physics = RoundPhysics(
            network,
            epochs=1,
            flops_per_sample=profile.flops_per_sample,
            gamma=1.0,
            shapes=profile.shapes,
        )
        self.rules, self.history, self.excluded = OnDemand(), History(), 0

    @property
    def update_sq_norm(self):
        return self.history.update_sq_norm

    @update_sq_norm.setter
    def update_sq_norm(self, value):
        self.history.update_sq_norm = value


def smoke_states(range_sq):
    from dataclasses import replace

    from qfd_app.edge import load_scenario
    from qfd_app.edge.state import fleet_state

    fleet = load_scenario("smoke").fleet()
    return [
        replace(fleet_state(fleet, i, 1, 450), range_sq=dict(range_sq))
        for i in range(len(fleet))
    ]


def plan_bits(strategy, states):
    plan = planner.plan_round(
        strategy.rules, strategy.physics, dict(enumerate(states)), strategy.history
    )
    strategy.excluded += len(states) - len(plan.assignments)
    return [plan.assignments[i].bits for i in range(len(states))]


def test_without_a_previous_aggregate_every_device_gets_its_cheapest_bits(tmp_path):
    # a budget nothing meets, but ‖Δ̄‖² is unknown
    strategy = Planned(epsilon=1e-9)
    assert plan_bits(strategy, smoke_states({48: 1.0})) == [2, 4, 8]


def test_a_tight_budget_raises_the_bits_within_each_demand(tmp_path):
    strategy = Planned(epsilon=0.05)
    strategy.update_sq_norm = 1.0
    loose = plan_bits(strategy, smoke_states({48: 1e-6}))
    tight = plan_bits(strategy, smoke_states({48: 50.0}))
    assert loose == [2, 4, 8]
    assert all(t >= lo for t, lo in zip(tight, loose)) and tight != loose
    assert all(lo <= b <= hi for b, (lo, hi) in zip(tight, [(2, 4), (4, 8), (8, 16)]))
    assert strategy.excluded == 0  # nobody excluded


def test_a_device_that_has_not_trained_is_priced_like_the_others(tmp_path):
    strategy = Planned(epsilon=0.05)
    strategy.update_sq_norm = 1.0
    states = smoke_states({48: 50.0})
    fresh = [
        states[0],
        states[1],
        type(states[2])(**{**states[2].__dict__, "range_sq": {}}),
    ]
    assert plan_bits(strategy, fresh) == plan_bits(strategy, states)


def test_a_metric_of_the_wrong_type_rejects_the_reply_naming_the_metric(strategy):
    metrics = {
        "num-examples": 10,
        "train-loss": [0.5, 0.4],
        "partition-id": 1,
        "train-s": 1.0,
        "encode-s": 0.1,
        "range-sq-48": 1.0,
    }
    strategy.aggregate_train(
        1,
        [reply(1, random_state(1), 10, metrics=metrics), reply(2, random_state(2), 4)],
    )
    rejected = [r for r in strategy.ledger.of_round(1) if r.status == "rejected"]
    assert [r.node_id for r in rejected] == [
        1
    ] and "'train-loss' must be a float" in rejected[0].reason


def test_the_aggregate_does_not_depend_on_the_order_replies_arrive_in(tmp_path):
    updates = {node: random_state(20 + node) for node in (1, 2, 3, 4)}
    results = []
    for order in ([1, 2, 3, 4], [4, 2, 1, 3], [3, 1, 4, 2]):
        (folder := tmp_path / "-".join(map(str, order))).mkdir()
        strategy = make_strategy(folder)
        arrays, _ = strategy.aggregate_train(
            1, [reply(n, updates[n], 7 * n) for n in order]
        )
        results.append(arrays.to_torch_state_dict())
    for other in results[1:]:
        # bitwise
        assert all(torch.equal(results[0][name], other[name]) for name in SHAPES)


def test_updates_longer_than_max_update_norm_are_scaled_down_to_it(tmp_path):
    strategy = make_strategy(tmp_path)
    short = {k: v * 1e-3 for k, v in random_state(1).items()}
    long = {k: v * 100 for k, v in random_state(2).items()}

    def norm(update):
        return float(
            np.sqrt(
                sum(
                    np.square(t.numpy().astype(np.float64)).sum()
                    for t in update.values()
                )
            )
        )

    strategy.max_update_norm = bound = 2 * norm(short)
    assert norm(long) > 10 * bound
    arrays, _ = strategy.aggregate_train(1, [reply(1, short, 10), reply(2, long, 10)])
    new = arrays.to_torch_state_dict()
    # the mean of the short update and the long one cut to the bound
    for name in SHAPES:
        expected = (
            strategy._global[name]
            + 0.5 * short[name]
            + 0.5 * long[name] * (bound / norm(long))
        )
        torch.testing.assert_close(new[name], expected, rtol=1e-5, atol=1e-6)


def test_the_server_remembers_each_partitions_range_sums_from_its_reply(strategy):
    metrics = {
        "num-examples": 10,
        "train-loss": 0.5,
        "partition-id": 3,
        "train-s": 1.0,
        "encode-s": 0.1,
        "range-sq-48": 12.5,
    }
    strategy.aggregate_train(1, [reply(3, random_state(3), 10, metrics=metrics)])
    assert strategy.history.range_sq == {3: {48: 12.5}}
