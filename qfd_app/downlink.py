"""The global model on its way down: what the server sends each device, and the model
the device rebuilds from it and trains from.

Schemes (the `downlink` setting, `strategies.planner.DOWNLINKS`):

- ``fp32``, ``fp16``: the global model w, cast; ``assigned``: w encoded by the device's
  upload codec at its assigned bits (`planner.download_codec`). One encoding per
  distinct (codec, bits) of the round, shared by every device that receives it.
- ``delta``: the server keeps, per device, a copy of the model the device holds, its
  *mirror* m. It sends Q_b(w − m) at the device's bits, and both sides add the decoded
  difference to their copy (`add_delta`, the same float operations on both), so that
  they stay equal; what the quantization left out stays in w − m and goes down with
  the next download (error feedback). A device's first download is w in fp32 (the
  planner prices it as a `resync`). A device that lost its copy (it restarted, or the
  run was resumed) is sent the mirror in fp32 besides the difference, so that it trains
  from exactly the model it would have: that costs bytes the plan did not price, and
  the ledger books them.

A device trains from the model it rebuilt and uploads its update relative to that model;
the server adds the mean update to its exact w.

The train message carries, besides `protocol.TrainConfig` (which names the scheme and,
for a delta, the round of the copy it applies to, `base-round`, 0 for a full model):

    model, model-meta   ArrayRecord and ConfigRecord of the download (`quant.payload`
                        format: self-describing, validated on the device)
    base, base-meta     delta only, to a device that lost its copy: the mirror, fp32

The device keeps the model it trained from in its node state (`context.state`,
`HELD_KEY`, and the round it came in) and reports that round when queried. Its train
reply carries the `digest` of the model it trained from; the server refuses an update
whose digest is not that of the model it sent (`Download.digest`): such an update is a
difference from something else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from qfd_app.protocol import TrainConfig
from qfd_app.quant import decode_update, encode_update, get_codec, payload_bytes
from qfd_app.quant.codec import PayloadError
from qfd_app.strategies.planner import DOWNLINKS, download_codec

MODEL_KEY, MODEL_META_KEY = "model", "model-meta"
BASE_KEY, BASE_META_KEY = "base", "base-meta"
# node state of a device: the model it trained from last, and the round it came in
HELD_KEY, HELD_ROUND_KEY = "held-model", "held-round"
Model = dict[str, torch.Tensor]


class DownlinkError(ValueError):
    """A download the device cannot use; the message says why."""


def add_delta(model: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]):
    """m + Δ, tensor by tensor in fp32: the one sum the server (its mirror) and the
    device (its copy) both compute, so the two stay bit-identical."""
    return {name: model[name] + delta[name].float() for name in model}


def digest(model: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a model's tensors (names and bytes, in name order), hex."""
    sha = hashlib.sha256()
    for name in sorted(model):
        sha.update(name.encode())
        sha.update(model[name].detach().cpu().contiguous().view(-1).numpy().tobytes())
    return sha.hexdigest()


def round_generator(seed: int, server_round: int, key: int) -> torch.Generator:
    """The rounding draws of one download: seeded by (seed, round, key), so a resumed
    round sends exactly what the uninterrupted one would have."""
    return torch.Generator().manual_seed(
        (seed * 1_000_003 + server_round * 10_007 + key) * 7 + 3
    )


@dataclass(frozen=True)
class Download:
    """What one device receives in a round."""

    codec: str
    bits: int
    base_round: int  # delta: the round of the copy it applies to; 0: a full model
    model: tuple[ArrayRecord, ConfigRecord]
    digest: str  # of the model the device rebuilds from it
    base: tuple[ArrayRecord, ConfigRecord] | None = None

    @property
    def num_bytes(self) -> int:
        """Encoded bytes on the air (the model, and the base if one goes with it)."""
        parts = [self.model] + ([self.base] if self.base else [])
        return sum(payload_bytes(arrays) for arrays, _ in parts)

    def records(self) -> dict[str, ArrayRecord | ConfigRecord]:
        records = {MODEL_KEY: self.model[0], MODEL_META_KEY: self.model[1]}
        if self.base is not None:
            records |= {BASE_KEY: self.base[0], BASE_META_KEY: self.base[1]}
        return records


class Broadcaster:
    """The server's side: encodes each round's downloads and, for ``delta``, keeps
    every device's mirror (saved with each checkpoint: `state`, `tensors`)."""

    def __init__(self, downlink: str, seed: int) -> None:
        if downlink not in DOWNLINKS:
            raise ValueError(f"downlink must be one of {DOWNLINKS}; got {downlink!r}.")
        self.downlink, self.seed = downlink, seed
        # partition → (round it was last sent, the model it holds)
        self.mirrors: dict[int, tuple[int, Model]] = {}

    def resync(self, partitions) -> list[int]:
        """The partitions whose download this round is the full model in fp32: under
        ``delta``, those never sent one."""
        if self.downlink != "delta":
            return []
        return [p for p in partitions if p not in self.mirrors]

    def downloads(
        self,
        server_round: int,
        model: Model,
        assigned: Mapping[int, tuple[str, int]],
        held: Mapping[int, int],
    ) -> dict[int, Download]:
        """Each assigned partition's download: `assigned` maps a partition to its
        (upload codec, bits), `held` to the round of the copy it reports holding."""
        if self.downlink != "delta":
            shared: dict[tuple[str, int], Download] = {}
            for codec, bits in map(self._codec, assigned.values()):
                if (codec, bits) not in shared:
                    generator = round_generator(self.seed, server_round, bits)
                    encoded = self._encode(model, codec, bits, generator)
                    received = _decode(encoded, codec, bits, _shapes(model))
                    shared[codec, bits] = Download(
                        codec, bits, 0, encoded, digest(received)
                    )
            return {p: shared[self._codec(a)] for p, a in assigned.items()}
        return {
            p: self._delta(server_round, p, model, *assigned[p], held.get(p, 0))
            for p in assigned
        }

    def _codec(self, assignment: tuple[str, int]) -> tuple[str, int]:
        return download_codec(self.downlink, *assignment)

    def _delta(self, server_round, partition, model, codec, bits, held) -> Download:
        mirror = self.mirrors.get(partition)
        if mirror is None:  # first download: the model itself, exact
            copy = {k: v.clone() for k, v in model.items()}
            self.mirrors[partition] = (server_round, copy)
            encoded = self._encode(model, "fp32", 32)
            return Download("fp32", 32, 0, encoded, digest(copy))
        sent_round, copy = mirror
        difference = {name: model[name] - copy[name] for name in model}
        generator = round_generator(self.seed, server_round, 1000 + partition)
        encoded = self._encode(difference, codec, bits, generator)
        rebuilt = add_delta(copy, _decode(encoded, codec, bits, _shapes(model)))
        self.mirrors[partition] = (server_round, rebuilt)
        base = None if held == sent_round else self._encode(copy, "fp32", 32)
        return Download(codec, bits, sent_round, encoded, digest(rebuilt), base)

    @staticmethod
    def _encode(model, codec, bits, generator=None):
        return encode_update(model, get_codec(codec, bits=bits), generator)

    # -- checkpoint ----------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """Partition → the round its mirror was sent (JSON-able)."""
        return {str(p): r for p, (r, _) in self.mirrors.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The mirrors, flat: ``<partition>/<tensor name>``."""
        mirrors = self.mirrors.items()
        return {f"{p}/{name}": t for p, (_, m) in mirrors for name, t in m.items()}

    def restore(self, state: Mapping[str, int], tensors: Mapping[str, torch.Tensor]):
        mirrors: dict[int, Model] = {}
        for key, tensor in tensors.items():
            partition, name = key.split("/", 1)
            mirrors.setdefault(int(partition), {})[name] = tensor
        self.mirrors = {int(p): (int(r), mirrors[int(p)]) for p, r in state.items()}


def _decode(encoded, codec: str, bits: int, shapes: Mapping) -> Model:
    """A download decoded and validated against `codec`, `bits` and the model's
    `shapes`, as fp32: what the device rebuilds from (the server decodes its own)."""
    arrays, meta = encoded
    return {
        name: t.float()
        for name, t in decode_update(
            arrays,
            meta,
            expected_codec=codec,
            expected_bits=bits,
            expected_shapes=shapes,
        ).items()
    }


def _shapes(model: Model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.items()}


# ------------------------------------------------------------------------ the device


def received_model(
    content: RecordDict,
    config: TrainConfig,
    shapes: Mapping[str, tuple[int, ...]],
    held: tuple[int, Model] | None,
) -> Model:
    """The model a device trains from, rebuilt from its train message.

    Parameters
    ----------
    content : RecordDict
        The train message's content.
    config : TrainConfig
        Its parsed config: the scheme, the device's codec and bits, `base_round`.
    shapes : mapping of str to shape
        The model's tensors, as the device builds it.
    held : (round, model) or None
        The copy the device keeps from its last download (delta), if any.

    Raises
    ------
    DownlinkError
        If the download is missing, malformed, of another codec or bit-width than the
        scheme gives this device, holds NaN or Inf, or is a difference from a copy the
        device does not hold (and no base came with it); the message says which.
    """
    if config.downlink == "delta" and config.base_round == 0:
        codec, bits = "fp32", 32  # a first download: the full model
    else:
        codec, bits = download_codec(config.downlink, config.codec, config.bits)
    model = _decoded(content, MODEL_KEY, MODEL_META_KEY, codec, bits, shapes)
    if config.downlink != "delta" or config.base_round == 0:
        return model
    if BASE_KEY in content.array_records:
        base = _decoded(content, BASE_KEY, BASE_META_KEY, "fp32", 32, shapes)
    elif held is not None and held[0] == config.base_round:
        base = held[1]
    else:
        holds = f"the copy of round {held[0]}" if held else "no copy"
        raise DownlinkError(
            f"the download is a difference from the model of round {config.base_round},"
            f" but the device holds {holds} and no base came with it"
        )
    return add_delta(base, model)


def _decoded(content, key, meta_key, codec, bits, shapes) -> Model:
    arrays = content.array_records.get(key)
    meta = content.config_records.get(meta_key)
    if arrays is None or meta is None:
        raise DownlinkError(
            f"the train message lacks the ArrayRecord {key!r} or the ConfigRecord "
            f"{meta_key!r}"
        )
    try:
        return _decode((arrays, meta), codec, bits, shapes)
    except PayloadError as err:
        raise DownlinkError(f"the download {key!r} is refused: {err}") from err
