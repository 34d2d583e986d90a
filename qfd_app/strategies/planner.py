"""The round planner: from the devices' states, a strategy's rules and the run's
physics, the round's plan.

One function, `plan_round`, plans every round of a run (`EdgeStrategy.configure_train`)
and every `qfd plan`; neither knows Flower. It

1. fills in missing update statistics: a device that reports no range sums gets those of
   its last update the server received (`History.range_sq`), and one that never trained
   the mean of the others';
2. prices every candidate bit-width of every device: the work W_n(b) of E epochs over
   D_n samples with φ the real model's training FLOPs, the exact payload S(b) of the
   codec the strategy sends b with, the exact size S_down(b) of the model the device
   receives under the run's `downlink` (`download_codec`; fp32 for a partition named
   in `resync`), and — when the strategy enforces ε and the history knows ‖Δ̄‖² — the
   error bound V_n(b) of the uniform codec's blocks;
3. solves: `edge.solve_round` for the "optimal" resource policy, `edge.race_to_idle`
   for "race-to-idle".

`sample_partitions` is the run's seeded sampling: with the same seed every strategy
trains the same devices in the same round.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qfd_app.edge import Network, race_to_idle, round_record, solve_round
from qfd_app.edge.allocate import downlink_rates
from qfd_app.edge.problem import Allocation, Candidates, Devices
from qfd_app.edge.state import DeviceState, solver_inputs
from qfd_app.quant.registry import UNIFORM_BLOCK_SIZES, default_block_size
from qfd_app.strategies.registry import Strategy

FULL_PRECISION = 32  # fp32 on the wire: exact, no quantization error

# How the server sends a device the global model (the `downlink` setting):
#   fp32      the model as it is (exact);
#   fp16      cast to float16;
#   assigned  the model encoded by the device's upload codec at its assigned bits;
#   delta     the difference between the model and the device's last copy, encoded at
#             its assigned bits, with the error left out kept for the next round (the
#             first download, or one after the device lost its copy, is fp32).
DOWNLINKS = ("fp32", "fp16", "assigned", "delta")


def download_codec(downlink: str, codec: str, bits: int) -> tuple[str, int]:
    """The (codec, bits) a device assigned `codec` at `bits` receives the
    model as under `downlink` (a delta download, not a resync)."""
    if downlink not in DOWNLINKS:
        raise ValueError(f"downlink must be one of {DOWNLINKS}; got {downlink!r}.")
    return {"fp32": ("fp32", 32), "fp16": ("fp16", 16)}.get(downlink, (codec, bits))


@dataclass(frozen=True)
class RoundPhysics:
    """The run's fixed inputs to every round's plan.

    network : Network
        Band, noise, deadline, ε (its `update_sq_norm` is set each
        round from the history) and the downlink's band and base station power.
    epochs : int
        E, local epochs the devices really train.
    flops_per_sample : float
        φ of the real model (`diffusion.profile.model_profile`).
    gamma : float
        γ of the compute-precision factor.
    shapes : tuple of shapes
        The model's tensors, for exact payload sizes.
    downlink : str
        How the server sends the model, one of `DOWNLINKS` (the `downlink` setting).
    """

    network: Network
    epochs: int
    flops_per_sample: float
    gamma: float
    shapes: tuple[tuple[int, ...], ...]
    downlink: str = "fp32"


def round_physics(settings: Any, scenario: Any, channels: int) -> RoundPhysics:
    """The scenario's network with the run's model (`model`, `image-size`, `channels` of
    the data) and `local-epochs`.

    γ applies only when devices really train at their bits: with
    `quantized-training = false` they compute in fp32 and ρ(b) = 1 (γ = 0).
    """
    from qfd_app.diffusion.profile import model_profile  # measures the UNet: torch

    profile = model_profile(settings.model, settings.image_size, channels)
    network = Network(
        bandwidth_hz=scenario.bandwidth_hz,
        noise_w_per_hz=scenario.noise_w_per_hz,
        deadline_s=scenario.deadline_s,
        error_budget=scenario.epsilon,
        bandwidth_policy=scenario.bandwidth_policy,
        downlink_bandwidth_hz=scenario.downlink_bandwidth_hz,
        bs_power_w=scenario.bs_power_w,
    )
    gamma = scenario.gamma if settings.quantized_training else 0.0
    return RoundPhysics(
        network,
        settings.local_epochs,
        profile.flops_per_sample,
        gamma,
        profile.shapes,
        settings.downlink,
    )


@dataclass
class History:
    """What the server has learnt from earlier rounds: ‖Δ̄‖² of the last
    aggregate update (NaN before the first) and each partition's range sums
    of its last update."""

    update_sq_norm: float = math.nan
    range_sq: dict[int, dict[int, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-able values (saved with each checkpoint)."""
        return {
            "update_sq_norm": self.update_sq_norm
            if math.isfinite(self.update_sq_norm)
            else None,
            "range_sq": {
                str(p): {str(m): v for m, v in sums.items()}
                for p, sums in self.range_sq.items()
            },
        }

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> History:
        norm = state["update_sq_norm"]
        range_sq = {
            int(p): {int(m): float(v) for m, v in sums.items()}
            for p, sums in state["range_sq"].items()
        }
        return cls(math.nan if norm is None else float(norm), range_sq)


@dataclass(frozen=True)
class Assignment:
    """What the server asks of one scheduled device this round (SI units).

    The download fields are the plan's: the device receives the model encoded by
    `download_codec` at `download_bits` bits per value (fp32/32 for a resync), at
    `download_rate_bps`, in `download_s`, spending `energy_download_j` =
    `receive_power_w` · `download_s`; the ledger books the bytes really sent.
    """

    partition_id: int
    device_class: str
    codec: str
    bits: int
    bits_min: int
    bits_max: int
    cpu_hz: float
    power_w: float
    bandwidth_hz: float
    gain: float
    compute_s: float
    energy_compute_j: float
    download_codec: str = "fp32"
    download_bits: int = 32
    download_rate_bps: float = math.inf
    receive_power_w: float = 0.0
    download_s: float = 0.0
    energy_download_j: float = 0.0


@dataclass(frozen=True)
class RoundPlan:
    """One round's plan: the solver's inputs and output, device row n
    being `partitions[n]`."""

    partitions: list[int]
    states: list[DeviceState]
    devices: Devices
    candidates: Candidates
    network: Network
    allocation: Allocation
    # partition → its assignment, scheduled devices only
    assignments: dict[int, Assignment]

    def record(self) -> dict[str, Any]:
        """`edge.round_record` with each device's partition id, class, distance,
        gain in dB and D_n."""
        record = round_record(
            self.devices, self.candidates, self.network, self.allocation
        )
        for n, (partition, state) in enumerate(
            zip(self.partitions, self.states, strict=True)
        ):
            extra = {
                "device": n,
                "partition_id": partition,
                "class": state.device_class.name,
                "distance_m": state.distance_m,
                "gain_db": 10.0 * math.log10(state.gain),
                "samples": state.num_examples,
            }
            record["devices"][n] = {**extra, **record["devices"][n]}
        return record


def sample_partitions(
    partitions: list[int],
    *,
    connected: int,
    fraction: float,
    min_train: int,
    seed: int,
    server_round: int,
) -> list[int]:
    """The partitions trained in `server_round`: max(⌊connected · fraction⌋,
    min_train) of the known `partitions` (at most all), drawn by a generator seeded with
    (seed, round); sorted."""
    known = sorted(partitions)
    size = min(max(int(connected * fraction), min_train), len(known))
    rng = np.random.default_rng([seed, server_round])
    return sorted(known[i] for i in rng.choice(len(known), size=size, replace=False))


def plan_round(
    strategy: Strategy,
    physics: RoundPhysics,
    states: Mapping[int, DeviceState],
    history: History,
    resync: Collection[int] = (),
) -> RoundPlan:
    """Plan the round of the devices in `states` (partition → its state) as
    `strategy` rules; the partitions in `resync` receive the full model in fp32 this
    round whatever the `downlink` (e.g. a `delta` device's first download)."""
    partitions, rows, devices, candidates, network = round_inputs(
        strategy, physics, states, history, resync
    )
    if strategy.resource_policy == "race-to-idle":
        network = replace(network, bandwidth_policy="equal")
        allocation = race_to_idle(devices, candidates, network)
    else:
        allocation = solve_round(devices, candidates, network)
    rates = downlink_rates(devices, network)
    assignments = {}
    for n, (partition, state) in enumerate(zip(partitions, rows, strict=True)):
        if allocation.scheduled[n]:
            bits = int(allocation.bits[n])
            codec = strategy.codec_for(bits)
            down = _download(physics.downlink, codec, bits, partition in resync)
            assignments[partition] = Assignment(
                partition_id=partition,
                device_class=state.device_class.name,
                codec=codec,
                bits=bits,
                bits_min=state.device_class.bits_min,
                bits_max=state.device_class.bits_max,
                cpu_hz=float(allocation.cpu_hz[n]),
                power_w=float(allocation.power_w[n]),
                bandwidth_hz=float(allocation.bandwidth_hz[n]),
                gain=state.gain,
                compute_s=float(allocation.compute_s[n]),
                energy_compute_j=float(allocation.energy_compute_j[n]),
                download_codec=down[0],
                download_bits=down[1],
                download_rate_bps=float(rates[n]),
                receive_power_w=state.device_class.receive_power_w,
                download_s=float(allocation.download_s[n]),
                energy_download_j=float(allocation.energy_download_j[n]),
            )
    return RoundPlan(
        partitions, rows, devices, candidates, network, allocation, assignments
    )


def round_inputs(
    strategy: Strategy,
    physics: RoundPhysics,
    states: Mapping[int, DeviceState],
    history: History,
    resync: Collection[int] = (),
) -> tuple[list[int], list[DeviceState], Devices, Candidates, Network]:
    """The solver's inputs for `plan_round`: the partitions in order, their states
    with the history filled in, `Devices`, `Candidates` (with S_down(b) of the run's
    `downlink`, fp32 for the partitions in `resync`) and the round's `Network`
    (ε off unless enforced)."""
    partitions = sorted(states)
    resync = frozenset(resync)
    rows = _with_history(
        [states[p] for p in partitions], [history.range_sq.get(p) for p in partitions]
    )
    network = physics.network
    budget_on = (
        strategy.enforces_error_budget
        and math.isfinite(history.update_sq_norm)
        and all(s.range_sq for s in rows)
    )
    if budget_on:
        network = replace(network, update_sq_norm=max(history.update_sq_norm, 1e-300))
    else:
        network = replace(network, error_budget=math.inf)

    def error(n: int, bits: int) -> float:
        return (
            0.0
            if not budget_on or bits == FULL_PRECISION
            else rows[n].error(bits, default_block_size(bits))
        )

    devices, candidates = solver_inputs(
        rows,
        bits=strategy.candidate_bits(
            [s.device_class.bits_min for s in rows],
            [s.device_class.bits_max for s in rows],
        ),
        epochs=physics.epochs,
        flops_per_sample=physics.flops_per_sample,
        gamma=physics.gamma,
        payload_bits=lambda b: payload_bits(strategy.codec_for(b), b, physics.shapes),
        error=error,
        download_bits=lambda n, b: payload_bits(
            *_download(
                physics.downlink, strategy.codec_for(b), b, partitions[n] in resync
            ),
            physics.shapes,
        ),
    )
    return partitions, rows, devices, candidates, network


def _download(downlink: str, codec: str, bits: int, resync: bool) -> tuple[str, int]:
    """The (codec, bits) of a device's download: fp32 for a resync, else
    `download_codec`."""
    return ("fp32", FULL_PRECISION) if resync else download_codec(downlink, codec, bits)


def _with_history(
    states: list[DeviceState], known: list[dict[int, float] | None]
) -> list[DeviceState]:
    """A device that reports no range sums (it never trained, or it restarted) gets
    those of its last update the server received, if any; one still without gets the
    mean of the others'."""
    states = [
        replace(s, range_sq=k) if not s.range_sq and k else s
        for s, k in zip(states, known, strict=True)
    ]
    reported = [s.range_sq for s in states if s.range_sq]
    if not reported or len(reported) == len(states):
        return states
    mean = {m: float(np.mean([r[m] for r in reported if m in r])) for m in reported[0]}
    return [s if s.range_sq else replace(s, range_sq=mean) for s in states]


@functools.lru_cache(maxsize=512)
def payload_bits(codec: str, bits: int, shapes: tuple[tuple[int, ...], ...]) -> float:
    """S(b): the exact size, in bits, of an update of tensors `shapes` encoded by
    `codec` at `bits`."""
    from qfd_app.quant import get_codec  # the codec's own size: torch

    size = get_codec(codec, bits=bits).size_bytes
    return 8.0 * sum(int(size(shape)) for shape in shapes)


# --------------------------------------------------------------------- stand-in history


@functools.lru_cache(maxsize=64)
def gaussian_range(m: int) -> float:
    """E[max − min] of m standard normal values:
    ∫ 1 − Φ(x)^m − (1 − Φ(x))^m dx."""
    from scipy.special import ndtr

    x = np.linspace(-12.0, 12.0, 24001)
    cdf = ndtr(x)
    return float(np.trapezoid(1.0 - cdf**m - (1.0 - cdf) ** m, x))


def stand_in_history(
    partitions: list[int],
    shapes: tuple[tuple[int, ...], ...],
    update_rms: float,
    update_coherence: float,
) -> History:
    """A history for planning before any training (docs/model.md, "error budget"): every
    device's update is Gaussian with per-value RMS `update_rms`, so each
    block's range is the expected range of that many Gaussian values, and
    ‖Δ̄‖² = `update_coherence` · d · rms²."""
    sums = {}
    for m in UNIFORM_BLOCK_SIZES:
        total = 0.0
        for shape in shapes:
            full, rest = divmod(math.prod(shape), m)
            total += full * m * (gaussian_range(m) * update_rms) ** 2
            total += rest * (gaussian_range(rest) * update_rms) ** 2 if rest else 0.0
        sums[m] = total
    d = sum(math.prod(s) for s in shapes)
    return History(
        update_coherence * d * update_rms**2, {p: dict(sums) for p in partitions}
    )
