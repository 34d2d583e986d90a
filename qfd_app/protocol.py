"""What the ServerApp and the ClientApps say to each other: message keys, the state
a device reports, the train instruction, and the reply — with the checks every
received message passes.

A round has two exchanges per device:

1. **query** (server → device: ``config`` {server-round}; device → server: the
   ConfigRecord `STATE_KEY`, its `DeviceState` as flat keys, `state_record`);
2. **train** (server → device: the download of the global model
   (`qfd_app.downlink`) and ``config`` `TrainConfig`; device → server: the
   ArrayRecord `UPDATE_KEY` and ConfigRecord `UPDATE_META_KEY` of the encoded update
   (`qfd_app.quant.payload`), and the MetricRecord `METRICS_KEY` of `REPLY_METRICS`).

Whatever a device sends is checked here before the server uses it (`parse_state`,
`reply_metrics`): a bad value is refused with one sentence naming the key, what is
allowed and what came, and the server books the device `rejected` and goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qfd_app.edge.devices import DeviceClass
from qfd_app.edge.state import DeviceState
from qfd_app.quant.registry import UNIFORM_BLOCK_SIZES
from qfd_app.validation import (
    Interval,
    Satisfies,
    Text,
    check_mapping,
    check_value,
    refusal,
)

CONFIG_KEY = "config"
STATE_KEY = "device-state"
UPDATE_KEY, UPDATE_META_KEY, METRICS_KEY = "update", "update-meta", "metrics"
# where the device's ClientApp ran: {"ray-node": Ray node id, "" outside Ray}
HOST_KEY = "host"
# the model the device trained from: {"digest": SHA-256 hex, `qfd_app.downlink.digest`}
START_KEY = "start"


class StateError(ValueError):
    """A reported device state the solver cannot use; the message says
    which key and why."""


class ReplyError(ValueError):
    """A device's train reply that cannot be used; the message says why."""


# ---------------------------------------------------------------------------- the query

_POSITIVE = Interval(float, 0, None, closed="neither")
_RANGE_SQ = {f"range-sq-{m}": Interval(float, 0, None) for m in UNIFORM_BLOCK_SIZES}
STATE_FIELDS = {
    "partition-id": Interval(int, 0, None),
    "device-class": Text(),
    "bits-min": Interval(int, 1, 32),
    "bits-max": Interval(int, 1, 32),
    **dict.fromkeys(
        ("cpu-hz-min", "cpu-hz-max", "cycles-per-flop", "kappa", "power-w-max"),
        _POSITIVE,
    ),
    "receive-power-w": Interval(float, 0, None),
    "distance-m": _POSITIVE,
    "gain": _POSITIVE,
    "num-examples": Interval(int, 1, None),
    **_RANGE_SQ,
}


def state_record(partition_id: int, state: DeviceState) -> dict[str, Any]:
    """A device's state as flat keys and scalar values, fit for a
    Flower `ConfigRecord`."""
    profile = state.device_class
    return {
        "partition-id": int(partition_id),
        "device-class": profile.name,
        "bits-min": int(profile.bits_min),
        "bits-max": int(profile.bits_max),
        "cpu-hz-min": float(profile.cpu_hz_min),
        "cpu-hz-max": float(profile.cpu_hz_max),
        "cycles-per-flop": float(profile.cycles_per_flop),
        "kappa": float(profile.kappa),
        "power-w-max": float(profile.power_w_max),
        "receive-power-w": float(profile.receive_power_w),
        "distance-m": float(state.distance_m),
        "gain": float(state.gain),
        "num-examples": int(state.num_examples),
        **{f"range-sq-{m}": float(v) for m, v in state.range_sq.items()},
    }


def parse_state(record: Mapping[str, Any]) -> tuple[int, DeviceState]:
    """Check a reported state (a query reply's ConfigRecord); its partition
    id and `DeviceState`.

    Raises
    ------
    StateError
        For a missing key, a value of the wrong type, NaN/Inf, a non-positive resource,
        a demand outside 1–32 bits, bits-min > bits-max or cpu-hz-min > cpu-hz-max.
    """
    values = check_mapping(
        record,
        STATE_FIELDS,
        label=lambda k: f"Device state {k!r}",
        error=StateError,
        optional=tuple(_RANGE_SQ),
        unknown="ignore",
    )
    for low, high in (("bits-min", "bits-max"), ("cpu-hz-min", "cpu-hz-max")):
        if values[low] > values[high]:
            raise StateError(
                refusal(
                    f"Device state {low!r}",
                    f"≤ {high!r} ({values[high]:g})",
                    values[low],
                )
            )
    profile = DeviceClass(
        name=values["device-class"],
        bits_min=values["bits-min"],
        bits_max=values["bits-max"],
        cpu_hz_min=values["cpu-hz-min"],
        cpu_hz_max=values["cpu-hz-max"],
        cycles_per_flop=values["cycles-per-flop"],
        kappa=values["kappa"],
        power_w_max=values["power-w-max"],
        receive_power_w=values["receive-power-w"],
    )
    range_sq = {
        int(key.removeprefix("range-sq-")): values[key]
        for key in _RANGE_SQ
        if key in values
    }
    state = DeviceState(
        profile, values["distance-m"], values["gain"], values["num-examples"], range_sq
    )
    return values["partition-id"], state


HELD_ROUND = "held-round"


def reported_held_round(record: Mapping[str, Any]) -> int:
    """The round of the model copy a device reports holding (`qfd_app.downlink`);
    0 when it holds none or says nothing.

    Raises
    ------
    StateError
        When the value is not an integer ≥ 0.
    """
    if HELD_ROUND not in record:
        return 0
    label = f"Device state {HELD_ROUND!r}"
    return check_value(label, record[HELD_ROUND], Interval(int, 0, None), StateError)


def reported_partition(record: Mapping[str, Any]) -> int | None:
    """The partition id of a state record if that key alone is valid (so that a device
    whose state is refused is still booked under its partition), else None."""
    value = record.get("partition-id")
    return value if STATE_FIELDS["partition-id"].problem(value) is None else None


# ------------------------------------------------------------------- the train exchange


@dataclass(frozen=True)
class TrainConfig:
    """What the server asks of one device in a round (its plan, SI units)."""

    server_round: int
    local_epochs: int
    codec: str
    bits: int
    cpu_hz: float
    power_w: float
    bandwidth_hz: float
    # how the model comes down (`qfd_app.downlink`); base_round: the round of the
    # device's copy a delta applies to, 0 for a full model
    downlink: str = "fp32"
    base_round: int = 0

    def to_record(self) -> dict[str, Any]:
        return {key.replace("_", "-"): value for key, value in self.__dict__.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        return cls(
            server_round=int(record["server-round"]),
            local_epochs=int(record["local-epochs"]),
            codec=str(record["codec"]),
            bits=int(record["bits"]),
            cpu_hz=float(record["cpu-hz"]),
            power_w=float(record["power-w"]),
            bandwidth_hz=float(record["bandwidth-hz"]),
            downlink=str(record["downlink"]),
            base_round=int(record["base-round"]),
        )


# The metrics every train reply carries: one schema, so replies never differ
# (Flower's FedAvg needs the same keys from all). range-sq-<m> is the Σ m R² of the
# update for block size m.
REPLY_METRICS = {
    "num-examples": Interval(int, 1, None),
    "train-loss": Interval(float),
    "partition-id": Interval(int, 0, None),
    "train-s": Interval(float, 0, None),
    "encode-s": Interval(float, 0, None),
    **_RANGE_SQ,
}


def reply_metrics(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check the MetricRecord of a train reply against `REPLY_METRICS`;
    the converted values.

    Raises
    ------
    ReplyError
        When the record is missing or a metric is missing, of the wrong
        type or out of range.
    """
    if record is None:
        raise ReplyError(f"the reply lacks the MetricRecord {METRICS_KEY!r}")
    return check_mapping(
        record,
        REPLY_METRICS,
        label=lambda k: f"Reply metric {k!r}",
        error=ReplyError,
        unknown="ignore",
    )


DIGEST = Satisfies(
    lambda v: (
        isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    ),
    "a SHA-256 digest (64 hexadecimal characters)",
)


def reply_start_digest(record: Mapping[str, Any] | None) -> str:
    """The digest of the model a train reply says the device trained from.

    Raises
    ------
    ReplyError
        When the record or its `digest` is missing or not a SHA-256 hex digest.
    """
    if record is None or "digest" not in record:
        raise ReplyError(f"the reply lacks the ConfigRecord {START_KEY!r} 'digest'")
    return check_value("Reply 'start' 'digest'", record["digest"], DIGEST, ReplyError)


RAY_NODE = Satisfies(
    lambda v: (
        isinstance(v, str) and len(v) <= 64 and all(c in "0123456789abcdef" for c in v)
    ),
    "a Ray node id (hexadecimal, at most 64 characters) or ''",
)


def reply_host(record: Mapping[str, Any] | None) -> str:
    """The Ray node a train reply says its ClientApp ran on ('' when it says none).

    Raises
    ------
    ReplyError
        When `ray-node` is not a Ray node id.
    """
    if record is None or "ray-node" not in record:
        return ""
    return check_value(
        "Reply host 'ray-node'", record["ray-node"], RAY_NODE, ReplyError
    )
