"""UpdateAveraging: the weighted mean of accepted updates; bad replies booked, never fatal."""

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from qfd_app.ledger import Ledger, read_csv
from qfd_app.strategies.base import UpdateAveraging

SHAPES = {"conv.weight": (4, 2, 3, 3), "conv.bias": (4,)}


def metadata(node):
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")  # fmt: skip


def reply(node, update, num_examples, loss=0.5, metrics=None):
    metrics = metrics or {"num-examples": num_examples, "train-loss": loss, "partition-id": node}
    content = RecordDict({"update": ArrayRecord(torch_state_dict=update), "metrics": MetricRecord(metrics)})
    return Message(content=content, metadata=metadata(node))


def error_reply(node, reason):
    return Message(error=Error(code=2, reason=reason), metadata=metadata(node))


def random_state(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


@pytest.fixture
def strategy(tmp_path):
    s = UpdateAveraging(Ledger(tmp_path), fraction_train=1.0)
    s._global = random_state(0)
    s._sampled[1] = [1, 2, 3, 4, 5, 6]
    return s


def test_global_model_moves_by_the_example_weighted_mean_update(strategy):
    updates = {node: random_state(node) for node in (1, 2, 3)}
    examples = {1: 10, 2: 30, 3: 60}
    arrays, metrics = strategy.aggregate_train(1, [reply(n, updates[n], examples[n]) for n in updates])
    new = arrays.to_torch_state_dict()
    for name in SHAPES:
        expected = strategy._global[name].numpy() + np.average(
            [updates[n][name].numpy() for n in updates], axis=0, weights=[examples[n] for n in updates]
        )
        np.testing.assert_allclose(new[name].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert metrics["bytes-up"] == sum(ArrayRecord(torch_state_dict=updates[n]).count_bytes() for n in updates)


def test_bad_replies_are_rejected_with_reasons_and_the_round_goes_on(strategy, tmp_path):
    good = random_state(7)
    nan = random_state(8)
    nan["conv.bias"][0] = float("nan")
    wrong_shape = {**random_state(9), "conv.bias": torch.zeros(5)}
    missing_metric = {"num-examples": 3, "train-loss": 0.1}
    replies = [
        reply(1, good, 10),
        reply(2, nan, 10),
        reply(3, wrong_shape, 10),
        reply(4, random_state(10), 10, metrics=missing_metric),
        error_reply(5, "device crashed"),
    ]  # node 6 never answers
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


def test_a_round_without_usable_updates_keeps_the_model(strategy):
    assert strategy.aggregate_train(1, [error_reply(1, "x")]) == (None, None)


def test_replies_with_extra_metrics_or_float_counts_are_rejected_not_fatal(strategy):
    bad = {"num-examples": 2.5, "train-loss": 0.1, "partition-id": 1}
    arrays, _ = strategy.aggregate_train(1, [reply(1, random_state(1), 1, metrics=bad), reply(2, random_state(2), 4)])
    assert arrays is not None
    statuses = [r.status for r in strategy.ledger.of_round(1)]
    assert statuses.count("ok") == 1 and statuses.count("rejected") == 1
