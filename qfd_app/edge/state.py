"""A device's state as it reports it each round, and the solver's inputs built from many of them.

A device answers the server's query with a `DeviceState`: its class and demand
[b_min, b_max], its resources, how many samples it trains on, this round's channel gain,
and the running estimate of its update's block ranges, summarised per block size m as
Σ_j m R_j² (`range_sq`): that is all the error bound V(b) = Σ_j m R_j² / (4 (2^b − 1)²)
needs (docs/model.md). `parse_state` checks a reported state before the solver sees it;
`solver_inputs` turns the states of one round into the solver's `Devices` and `Candidates`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qfd_app.edge.devices import DeviceClass, Fleet
from qfd_app.edge.energy import work_cycles
from qfd_app.edge.problem import Candidates, Devices, candidate_bits

BITS_LIMITS = (1, 32)
# Block sizes of the uniform codec (64 values for b ≤ 3, 256 above), for which ranges are reported.
RANGE_BLOCK_SIZES = (64, 256)


class StateError(ValueError):
    """A reported device state the solver cannot use; the message says which field and why."""


@dataclass(frozen=True)
class DeviceState:
    """What a device tells the server at the start of a round (SI units).

    Attributes
    ----------
    device_class : str
        Its class name in the scenario (`iot`, `phone`, …).
    bits_min, bits_max : int
        Its demand.
    cpu_hz_min, cpu_hz_max, cycles_per_flop, kappa, power_w_max : float
        Its resources (`DeviceClass`).
    distance_m : float
        Distance to the base station.
    gain : float
        Linear power gain of this round's channel.
    num_examples : int
        D_n, the samples it trains on.
    range_sq : dict of int to float
        Block size m → Σ_j m R_j² of its last update; empty before its first training.
    """

    device_class: str
    bits_min: int
    bits_max: int
    cpu_hz_min: float
    cpu_hz_max: float
    cycles_per_flop: float
    kappa: float
    power_w_max: float
    distance_m: float
    gain: float
    num_examples: int
    range_sq: dict[int, float] = field(default_factory=dict)

    def to_mapping(self) -> dict[str, Any]:
        """Flat keys and scalar values, fit for a Flower `ConfigRecord`."""
        out = {k.replace("_", "-"): v for k, v in self.__dict__.items() if k != "range_sq"}
        out.update({f"range-sq-{m}": float(v) for m, v in self.range_sq.items()})
        return out

    def error(self, bits: int, block_size: int) -> float:
        """V(b) of its last update at `bits` in blocks of `block_size`; NaN when unknown."""
        if block_size not in self.range_sq:
            return math.nan
        levels = (1 << bits) - 1
        return self.range_sq[block_size] / (4.0 * levels * levels)


_INT_FIELDS = ("bits-min", "bits-max", "num-examples")
_POSITIVE_FIELDS = ("cpu-hz-min", "cpu-hz-max", "cycles-per-flop", "kappa", "power-w-max", "distance-m", "gain")


def parse_state(record: Mapping[str, Any]) -> DeviceState:
    """Validate a reported state (e.g. a query reply's ConfigRecord) and build it.

    Raises
    ------
    StateError
        For a missing field, a value of the wrong type, NaN/Inf, a non-positive resource,
        a demand outside 1–32 bits or b_min > b_max, f_min > f_max.
    """
    values: dict[str, Any] = {}
    name = record.get("device-class")
    if not isinstance(name, str) or not name:
        raise StateError(f"'device-class' must be a non-empty string; got {name!r}")
    for key in _INT_FIELDS:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateError(f"{key!r} must be an int; got {value!r}")
        values[key] = value
    for key in _POSITIVE_FIELDS:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise StateError(f"{key!r} must be a finite number > 0; got {value!r}")
        values[key] = float(value)
    lo, hi = values["bits-min"], values["bits-max"]
    if not (BITS_LIMITS[0] <= lo <= hi <= BITS_LIMITS[1]):
        raise StateError(f"the demand [bits-min, bits-max] must satisfy 1 ≤ bits-min ≤ bits-max ≤ 32; got [{lo}, {hi}]")
    if values["cpu-hz-min"] > values["cpu-hz-max"]:
        raise StateError(f"'cpu-hz-min' must be ≤ 'cpu-hz-max'; got {values['cpu-hz-min']:g} > {values['cpu-hz-max']:g}")
    if values["num-examples"] <= 0:
        raise StateError(f"'num-examples' must be > 0; got {values['num-examples']}")
    range_sq = {}
    for m in RANGE_BLOCK_SIZES:
        value = record.get(f"range-sq-{m}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise StateError(f"'range-sq-{m}' must be a finite number ≥ 0; got {value!r}")
        range_sq[m] = float(value)
    return DeviceState(
        device_class=name,
        bits_min=lo,
        bits_max=hi,
        cpu_hz_min=values["cpu-hz-min"],
        cpu_hz_max=values["cpu-hz-max"],
        cycles_per_flop=values["cycles-per-flop"],
        kappa=values["kappa"],
        power_w_max=values["power-w-max"],
        distance_m=values["distance-m"],
        gain=values["gain"],
        num_examples=values["num-examples"],
        range_sq=range_sq,
    )


def fleet_state(fleet: Fleet, index: int, round_: int, num_examples: int, profile: DeviceClass | None = None) -> DeviceState:
    """The state of device `index` of `fleet` in round `round_` (its class unless `profile` replaces it)."""
    profile = profile or fleet.classes[fleet.class_index[index]]
    return DeviceState(
        device_class=profile.name,
        bits_min=profile.bits_min,
        bits_max=profile.bits_max,
        cpu_hz_min=float(profile.cpu_hz_min),
        cpu_hz_max=float(profile.cpu_hz_max),
        cycles_per_flop=float(profile.cycles_per_flop),
        kappa=float(profile.kappa),
        power_w_max=float(profile.power_w_max),
        distance_m=float(fleet.distance_m[index]),
        gain=float(fleet.gains(round_)[index]),
        num_examples=int(num_examples),
    )


def solver_inputs(
    states: Sequence[DeviceState],
    *,
    bits: NDArray[np.int64] | None,
    epochs: int,
    flops_per_sample: float,
    gamma: float,
    payload_bits: Callable[[int], float],
    error: Callable[[int, int], float],
) -> tuple[Devices, Candidates]:
    """The solver's `Devices` and `Candidates` for the devices in `states`.

    Parameters
    ----------
    bits : (N, C) int array or None
        Each device's candidate bit-widths (`candidate_bits`, 0-padded); None: its demand.
    epochs, flops_per_sample, gamma
        E, φ and γ of W_n(b) = E · D_n · φ · c_n · (b/32)^γ.
    payload_bits : callable
        b ↦ S(b), the exact size of an encoded update.
    error : callable
        (device row n, b) ↦ V_n(b).
    """
    column = lambda name: np.array([getattr(s, name) for s in states], dtype=float)  # noqa: E731
    if bits is None:
        bits = candidate_bits(column("bits_min").astype(int), column("bits_max").astype(int))
    valid = bits > 0
    samples = column("num_examples")
    work = work_cycles(
        epochs=epochs, samples=samples[:, None], flops_per_sample=flops_per_sample,
        cycles_per_flop=column("cycles_per_flop")[:, None], bits=np.where(valid, bits, 32), gamma=gamma,
    )  # fmt: skip
    sizes = {b: float(payload_bits(b)) for b in np.unique(bits[valid]).tolist()}
    size = np.array([[sizes[b] if b else 0.0 for b in row] for row in bits.tolist()]).reshape(bits.shape)
    err = np.array(
        [[error(n, b) if b else 0.0 for b in row] for n, row in enumerate(bits.tolist())]
    ).reshape(bits.shape)
    devices = Devices(
        cpu_hz_min=column("cpu_hz_min"),
        cpu_hz_max=column("cpu_hz_max"),
        kappa=column("kappa"),
        power_w_max=column("power_w_max"),
        gain=column("gain"),
        weight=samples / samples.sum(),
    )
    return devices, Candidates(bits, np.where(valid, work, 0.0), size, err)
