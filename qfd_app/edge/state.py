"""A device's state in a round — who it is, where it is, what it trains — and the
solver's inputs built from many of them.

A device is its class (`DeviceClass`: demand [b_min, b_max], CPU, radio), its distance
to the base station, this round's channel gain, how many samples it trains on, and the
running estimate of its update's block ranges, summarised per block size m as Σ_j m
R_j² (`range_sq`): all that the error bound V(b) = Σ_j m R_j² / (4 (2^b − 1)²)
needs (docs/model.md).

In simulation a device is row `partition-id` of the scenario's fleet (classes repeated
cyclically over `num-partitions`, placement and shadowing from the scenario's seed). A
deployed SuperNode may name its own profile with `--node-config` keys, each optional,
over that same row (`PROFILE_KEYS`):

    device-class   a class of the scenario (`iot`, `phone`, `edge`, …)
    distance-m     distance to the base station in metres
    bits-min       the fewest bits it accepts (its demand)
    bits-max       the most bits it can train at

The channel gain of a round is the path loss at that distance, the device's shadowing
and the round's Rayleigh fading, the same draw for every strategy. How a state travels
between device and server is `qfd_app.protocol`'s business.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qfd_app.edge.devices import DeviceClass, Fleet
from qfd_app.edge.energy import work_cycles
from qfd_app.edge.problem import Candidates, Devices
from qfd_app.edge.scenario import Scenario
from qfd_app.validation import Interval, Options, check_mapping, check_value


class ProfileError(ValueError):
    """A `--node-config` profile key with a value the scenario does not allow."""


@dataclass(frozen=True)
class DeviceState:
    """What a device tells the server at the start of a round (SI units).

    Attributes
    ----------
    device_class : DeviceClass
        Its profile: demand, clock range, cycles per FLOP, κ, p_max.
    distance_m : float
        Distance to the base station.
    gain : float
        Linear power gain of this round's channel.
    num_examples : int
        D_n, the samples it trains on.
    range_sq : dict of int to float
        Block size m → Σ_j m R_j² of its last update; empty
        before its first training.
    """

    device_class: DeviceClass
    distance_m: float
    gain: float
    num_examples: int
    range_sq: dict[int, float] = field(default_factory=dict)

    def error(self, bits: int, block_size: int) -> float:
        """V(b) of its last update at `bits` in blocks of `block_size`;
        NaN when unknown."""
        if block_size not in self.range_sq:
            return math.nan
        levels = (1 << bits) - 1
        return self.range_sq[block_size] / (4.0 * levels * levels)


def fleet_state(
    fleet: Fleet,
    index: int,
    round_: int,
    num_examples: int,
    profile: DeviceClass | None = None,
) -> DeviceState:
    """The state of device `index` of `fleet` in round `round_` (its class unless
    `profile` replaces it)."""
    return DeviceState(
        device_class=profile or fleet.classes[fleet.class_index[index]],
        distance_m=float(fleet.distance_m[index]),
        gain=float(fleet.gains(round_)[index]),
        num_examples=int(num_examples),
    )


PROFILE_KEYS = ("device-class", "distance-m", "bits-min", "bits-max")


def device_state(
    scenario: Scenario,
    partition_id: int,
    num_partitions: int,
    server_round: int,
    num_examples: int,
    node_config: Mapping[str, Any],
    range_sq: Mapping[int, float],
) -> DeviceState:
    """The state a device reports in round `server_round` (see the module docstring).

    Raises
    ------
    ProfileError
        For a `--node-config` profile key the scenario does not allow.
    ValueError
        For a range sum that is not a finite float ≥ 0 (e.g. an int beyond float
        range) or a block size that is not a positive int.
    """
    fleet = scenario.fleet(num_partitions)
    profile = fleet.classes[fleet.class_index[partition_id]]
    allowed = {
        "device-class": Options(tuple(c.name for c in scenario.classes)),
        "bits-min": Interval(int, 1, 32),
        "bits-max": Interval(int, 1, 32),
        "distance-m": Interval(float, 0, None, closed="neither"),
    }
    given = {key: node_config[key] for key in PROFILE_KEYS if key in node_config}
    values = check_mapping(
        given,
        allowed,
        label=lambda k: f"Node config {k!r}",
        error=ProfileError,
        optional=PROFILE_KEYS,
    )
    if "device-class" in values:
        profile = next(c for c in scenario.classes if c.name == values["device-class"])
    demand = {
        key.replace("-", "_"): values[key]
        for key in ("bits-min", "bits-max")
        if key in values
    }
    profile = dataclasses.replace(profile, **demand)
    if "distance-m" in values:
        placed = fleet.distance_m.copy()
        placed[partition_id] = values["distance-m"]
        fleet = dataclasses.replace(fleet, distance_m=placed)
    state = fleet_state(fleet, partition_id, server_round, num_examples, profile)
    # the device's own stored sums, checked as the server checks them: an int beyond
    # float range is refused with its reason, not an OverflowError
    checked = {
        check_value("A range-sum block size", m, Interval(int, 1, None)): check_value(
            f"The range sum of block size {m!r}", v, Interval(float, 0, None)
        )
        for m, v in range_sq.items()
    }
    return dataclasses.replace(state, range_sq=checked)


def solver_inputs(
    states: Sequence[DeviceState],
    *,
    bits: NDArray[np.int64],
    epochs: int,
    flops_per_sample: float,
    gamma: float,
    payload_bits: Callable[[int], float],
    error: Callable[[int, int], float],
    download_bits: Callable[[int, int], float] | None = None,
) -> tuple[Devices, Candidates]:
    """The solver's `Devices` and `Candidates` for the devices in `states`.

    Parameters
    ----------
    bits : (N, C) int array
        Each device's candidate bit-widths (`candidate_bits`, 0-padded).
    epochs, flops_per_sample, gamma
        E, φ and γ of W_n(b) = E · D_n · φ · c_n · (b/32)^γ.
    payload_bits : callable
        b ↦ S(b), the exact size of an encoded update.
    error : callable
        (device row n, b) ↦ V_n(b).
    download_bits : callable, optional
        (device row n, b) ↦ S_down,n(b), the exact size of the model device n
        receives when assigned b; None: no download.
    """

    def column(name: str) -> NDArray[np.float64]:
        return np.array([getattr(s.device_class, name) for s in states], dtype=float)

    valid = bits > 0
    samples = np.array([s.num_examples for s in states], dtype=float)
    work = work_cycles(
        epochs=epochs,
        samples=samples[:, None],
        flops_per_sample=flops_per_sample,
        cycles_per_flop=column("cycles_per_flop")[:, None],
        bits=np.where(valid, bits, 32),
        gamma=gamma,
    )
    sizes = {b: float(payload_bits(b)) for b in np.unique(bits[valid]).tolist()}
    size = np.array(
        [[sizes[b] if b else 0.0 for b in row] for row in bits.tolist()]
    ).reshape(bits.shape)
    err = np.array(
        [
            [error(n, b) if b else 0.0 for b in row]
            for n, row in enumerate(bits.tolist())
        ]
    ).reshape(bits.shape)
    down = None
    if download_bits is not None:
        down = np.array(
            [
                [download_bits(n, b) if b else 0.0 for b in row]
                for n, row in enumerate(bits.tolist())
            ]
        ).reshape(bits.shape)
    devices = Devices(
        cpu_hz_min=column("cpu_hz_min"),
        cpu_hz_max=column("cpu_hz_max"),
        kappa=column("kappa"),
        power_w_max=column("power_w_max"),
        gain=np.array([s.gain for s in states], dtype=float),
        weight=samples / samples.sum(),
        receive_power_w=column("receive_power_w"),
    )
    return devices, Candidates(bits, np.where(valid, work, 0.0), size, err, down)
