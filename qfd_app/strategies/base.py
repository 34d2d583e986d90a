"""What every qfd strategy shares: devices upload encoded updates, the server validates and averages them.

Flower's `FedAvg` averages whatever arrays come back and aborts the whole run when one
reply's records differ from the others'. Here each device is told a codec and a bit-width,
trains at that precision and replies with its **update** (local − global weights) encoded
with that codec, plus a fixed set of metrics. Every reply is decoded and checked on its
own (`qfd_app.quant.decode_update`); a bad one is booked as rejected with its reason and
left out, and the new global model is the old one plus the example-weighted mean of the
accepted updates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from qfd_app.ledger import FAILED, OK, REJECTED, DeviceRecord, Ledger
from qfd_app.quant import decode_update, get_codec, payload_bytes

UPDATE_KEY, UPDATE_META_KEY, METRICS_KEY = "update", "update-meta", "metrics"
# The metrics every train reply carries, with their types: one schema, so replies never differ.
REPLY_METRICS = {"num-examples": int, "train-loss": float, "partition-id": int}


class ReplyError(ValueError):
    """A device's train reply that cannot be aggregated; the message says why."""


class UpdateAveraging(FedAvg):
    """FedAvg over validated device updates, with every device's round booked in a ledger.

    Parameters
    ----------
    ledger : Ledger
        Receives one `DeviceRecord` per sampled device and round.
    codec : str
        Upload codec of every device (`qfd_app.quant.codec_names()`); `fp32` is no compression.
    bits : int
        Bit-width of every device: the precision it trains at (fake quantization below 16
        bits) and the width its update is encoded at.
    fraction_train : float
        Fraction of connected devices sampled each round (at least `min_train_nodes`).
    min_train_nodes, min_available_nodes : int
        As in Flower's `FedAvg`.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        codec: str,
        bits: int,
        fraction_train: float,
        min_train_nodes: int = 1,
        min_available_nodes: int = 1,
    ):
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,  # quality is measured centrally on the held-out split
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
        )
        self.ledger = ledger
        self.codec, self.bits = get_codec(codec, bits=bits).name, bits  # fails early on a bad pair
        self._global: dict[str, torch.Tensor] = {}
        self._sampled: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ configure
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample devices and send each the global model, codec and bits; remember them for aggregation."""
        self._global = arrays.to_torch_state_dict()
        config["codec"], config["bits"] = self.codec, self.bits
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sampled[server_round] = [m.metadata.dst_node_id for m in messages]
        self.ledger.book_broadcast(server_round, arrays.count_bytes() * len(messages))
        return messages

    # ------------------------------------------------------------------ aggregate
    def decode_update(self, server_round: int, reply: Message) -> dict[str, torch.Tensor]:
        """The update carried by a reply, as fp32 tensors; raises `ValueError` if unusable.

        The payload must be encoded with exactly the codec and bits this strategy assigned
        and carry the global model's tensor names and shapes (`PayloadError` says why not).
        """
        arrays = reply.content.array_records.get(UPDATE_KEY)
        meta = reply.content.config_records.get(UPDATE_META_KEY)
        if arrays is None or meta is None:
            raise ReplyError(f"the reply lacks the ArrayRecord {UPDATE_KEY!r} or the ConfigRecord {UPDATE_META_KEY!r}")
        shapes = {name: tuple(t.shape) for name, t in self._global.items()}
        update = decode_update(arrays, meta, expected_codec=self.codec, expected_bits=self.bits, expected_shapes=shapes)
        return {name: t.float() for name, t in update.items()}

    def payload_bytes(self, reply: Message) -> int:
        """Bytes of encoded update the device sent (what its radio carried)."""
        return payload_bytes(reply.content.array_records[UPDATE_KEY])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each reply, book it, and add the weighted mean update to the global model."""
        replies = list(replies)
        accepted: list[tuple[int, dict[str, torch.Tensor]]] = []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                self._book(server_round, node, FAILED, reply.error.reason)
                continue
            try:
                metrics = _reply_metrics(reply)
                update = self.decode_update(server_round, reply)
                _check_finite(update)
                sent = self.payload_bytes(reply)
            except (ReplyError, KeyError, TypeError, ValueError) as err:
                log(WARNING, "Round %d: rejected the update of node %d: %s", server_round, node, err)
                self._book(server_round, node, REJECTED, str(err))
                continue
            self._book(server_round, node, OK, "", metrics, sent)
            accepted.append((metrics["num-examples"], update))
        for node in self._sampled.get(server_round, []):
            if node not in answered:
                self._book(server_round, node, FAILED, "no reply before the round's timeout")

        summary = self.ledger.summarise(server_round)
        log(INFO, "Round %d: %d updates aggregated, %d failed, %d rejected", server_round,
            summary["devices_ok"], summary["devices_failed"], summary["devices_rejected"])  # fmt: skip
        if not accepted:
            log(WARNING, "Round %d: no usable update; the global model stays as it was.", server_round)
            return None, None
        total = sum(n for n, _ in accepted)
        new_global = {}
        for name, weights in self._global.items():
            mean_update = sum(update[name] * (n / total) for n, update in accepted)
            new_global[name] = weights + mean_update.to(weights.dtype)
        metrics = MetricRecord({"train-loss": summary["train_loss"], "bytes-up": summary["bytes_up"]})
        return ArrayRecord(torch_state_dict=new_global), metrics

    def _book(self, server_round: int, node: int, status: str, reason: str, metrics: dict | None = None, sent: int = 0):
        metrics = metrics or {"partition-id": -1, "num-examples": 0, "train-loss": float("nan")}
        self.ledger.book(
            DeviceRecord(
                round=server_round,
                node_id=node,
                partition_id=metrics["partition-id"],
                status=status,
                reason=reason,
                num_examples=metrics["num-examples"],
                train_loss=metrics["train-loss"],
                bytes_up=sent,
            )
        )


def _reply_metrics(reply: Message) -> dict:
    record = reply.content.metric_records.get(METRICS_KEY)
    if record is None:
        raise ReplyError(f"no MetricRecord {METRICS_KEY!r} in the reply")
    out = {}
    for key, kind in REPLY_METRICS.items():
        if key not in record:
            raise ReplyError(f"metric {key!r} is missing")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ReplyError(f"metric {key!r} must be {kind.__name__}, got {value!r}")
        if not math.isfinite(value):
            raise ReplyError(f"metric {key!r} is not finite: {value!r}")
        out[key] = kind(value)
    if out["num-examples"] <= 0:
        raise ReplyError(f"metric 'num-examples' must be positive, got {out['num-examples']}")
    return out


def _check_finite(update: dict[str, torch.Tensor]) -> None:
    for name, tensor in update.items():
        if not torch.isfinite(tensor).all():
            raise ReplyError(f"tensor {name!r} holds NaN or Inf")
