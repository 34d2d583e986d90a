"""The device side of a round: who a device is (its profile and channel) and what its update looks like.

In simulation a device's profile is row `partition-id` of the scenario's fleet (classes
repeated cyclically over `num-partitions`, placement and shadowing from the scenario's
seed). A deployed SuperNode names its own with `--node-config` keys, each optional, over
that same row:

    device-class   a class of the scenario (`iot`, `phone`, `edge`, …)
    distance-m     distance to the base station in metres
    bits-min       the fewest bits it accepts (its demand)
    bits-max       the most bits it can train at

The channel gain of a round is the path loss at that distance, the device's shadowing and
the round's Rayleigh fading (docs/model.md), the same draw for every strategy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from qfd_app.edge import Scenario
from qfd_app.edge.state import RANGE_BLOCK_SIZES, DeviceState, fleet_state
from qfd_app.quant import block_ranges

NODE_CONFIG_KEYS = ("device-class", "distance-m", "bits-min", "bits-max")


class ProfileError(ValueError):
    """A `--node-config` profile key with a value the scenario does not allow."""


def device_state(
    scenario: Scenario,
    partition_id: int,
    num_partitions: int,
    server_round: int,
    num_examples: int,
    node_config: Mapping[str, Any],
    range_sq: Mapping[int, float],
) -> DeviceState:
    """The state a device reports in round `server_round` (see the module docstring)."""
    fleet = scenario.fleet(num_partitions)
    profile = fleet.classes[fleet.class_index[partition_id]]
    if "device-class" in node_config:
        by_name = {c.name: c for c in scenario.classes}
        name = node_config["device-class"]
        if name not in by_name:
            raise ProfileError(f"node config 'device-class' must be one of {', '.join(by_name)}; got {name!r}")
        profile = by_name[name]
    for key in ("bits-min", "bits-max"):
        if key in node_config:
            value = node_config[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
                raise ProfileError(f"node config {key!r} must be an int in 1–32; got {value!r}")
            profile = dataclasses.replace(profile, **{key.replace("-", "_"): value})
    if "distance-m" in node_config:
        distance = node_config["distance-m"]
        if isinstance(distance, bool) or not isinstance(distance, (int, float)) or not distance > 0:
            raise ProfileError(f"node config 'distance-m' must be a number > 0; got {distance!r}")
        placed = fleet.distance_m.copy()
        placed[partition_id] = float(distance)
        fleet = dataclasses.replace(fleet, distance_m=placed)
    state = fleet_state(fleet, partition_id, server_round, num_examples, profile)
    return dataclasses.replace(state, range_sq={int(m): float(v) for m, v in range_sq.items()})


def range_sq_sums(update: Mapping[str, torch.Tensor]) -> dict[int, float]:
    """Σ_j m R_j² over the blocks of every tensor of `update`, for each block size m the codec uses.

    With it the server prices the error bound V(b) = Σ_j m R_j² / (4 (2^b − 1)²) of any b
    without seeing the update.
    """
    sums = {}
    for m in RANGE_BLOCK_SIZES:
        total = sum(float(block_ranges(t, m).double().square().sum()) for t in update.values())
        sums[m] = float(m * total)
    return sums



