"""From the devices' encoded replies to the next global model: decode,
check, clip, average.

Each update is decoded against the codec and bits assigned to *that* device and must
carry the global model's tensor names and shapes and finite values; each may be clipped
to an L2 norm to cap one device's influence; the example-weighted mean is added to
the global model in partition order, so that the sum does not depend on the order
the replies came in.
"""

from __future__ import annotations

import math

import torch
from flwr.app import Message

from qfd_app.protocol import UPDATE_KEY, UPDATE_META_KEY, ReplyError
from qfd_app.quant import decode_update, payload_bytes
from qfd_app.strategies.planner import Assignment

Update = dict[str, torch.Tensor]


def sent_bytes(reply: Message) -> int:
    """Bytes of encoded update the device sent (what its radio carried); 0 if none."""
    arrays = reply.content.array_records.get(UPDATE_KEY)
    return 0 if arrays is None else payload_bytes(arrays)


def decode_reply(
    reply: Message, plan: Assignment, shapes: dict[str, tuple[int, ...]]
) -> Update:
    """The update a reply carries, as fp32 tensors; `ValueError`
    (`ReplyError`, `PayloadError`) if the payload is not exactly `plan`'s codec and bits
    over `shapes`, or holds NaN or Inf."""
    arrays = reply.content.array_records.get(UPDATE_KEY)
    meta = reply.content.config_records.get(UPDATE_META_KEY)
    if arrays is None or meta is None:
        raise ReplyError(
            f"the reply lacks the ArrayRecord {UPDATE_KEY!r} or the ConfigRecord "
            f"{UPDATE_META_KEY!r}"
        )
    update = decode_update(
        arrays,
        meta,
        expected_codec=plan.codec,
        expected_bits=plan.bits,
        expected_shapes=shapes,
    )
    update = {name: t.float() for name, t in update.items()}
    for name, tensor in update.items():
        if not torch.isfinite(tensor).all():
            raise ReplyError(f"tensor {name!r} holds NaN or Inf")
    return update


def clipped(update: Update, max_norm: float) -> Update:
    """`update` scaled down to L2 norm `max_norm` if it is longer (0: unchanged)."""
    if not max_norm:
        return update
    norm = math.sqrt(sum(float(t.double().square().sum()) for t in update.values()))
    if norm <= max_norm:
        return update
    return {name: t * (max_norm / norm) for name, t in update.items()}


def add_mean_update(
    global_model: Update, accepted: list[tuple[int, int, Update]]
) -> tuple[Update, float]:
    """The global model plus the example-weighted mean of `accepted`
    (partition, examples, update), summed in partition order; and ‖Δ̄‖² of
    that mean update."""
    accepted = sorted(accepted, key=lambda item: item[0])
    total = sum(n for _, n, _ in accepted)
    new_global, sq_norm = {}, 0.0
    for name, weights in global_model.items():
        mean_update = sum(update[name] * (n / total) for _, n, update in accepted)
        sq_norm += float(mean_update.double().square().sum())
        new_global[name] = weights + mean_update.to(weights.dtype)
    return new_global, sq_norm
