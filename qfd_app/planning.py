"""Planning a round without training: scenario → devices and candidates → solver → record.

The glue between a scenario (`qfd_app.edge.scenario`), the real model (`qfd_app.diffusion.ddpm`) and
the solver (`qfd_app.edge.allocate`). It measures the UNet once — its training FLOPs per
sample with torch's FLOP counter (forward + backward) and its parameter shapes, on the
`meta` device so that nothing is computed — and derives, per device and bit-width, the
work W_n(b), the exact payload S_n(b) and the error V_n(b). `plan_round` returns the
record of `qfd_app.edge.record` plus what it was planned from; `format_plan` prints it.

Without training history the error budget needs stand-ins (docs/model.md, "error
budget"): each device's update has per-value RMS `plan.update_rms`, each block's range
is the expected range of that many Gaussian values, and ‖Δ̄‖² = `plan.update_coherence`
· d · rms². A run replaces them with measured block ranges and the measured ‖Δ̄‖².
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qfd_app.edge.allocate import race_to_idle, solve_round
from qfd_app.edge.problem import BANDWIDTH_POLICIES, Candidates, Devices, Network, candidate_bits
from qfd_app.edge.energy import CODEC_BITS, quantization_error, training_flops, w_to_dbm
from qfd_app.edge.record import round_record
from qfd_app.edge.scenario import Scenario, ScenarioError, load_scenario
from qfd_app.edge.state import fleet_state, solver_inputs

STRATEGIES = ("ondemand", "fixed", "fedavg")
RESOURCE_POLICIES = ("race-to-idle", "optimal")


class PlanError(ValueError):
    """Options of a plan that do not fit together (e.g. `--strategy fixed` without `--bits`)."""


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelProfile:
    """What the plan needs of the UNet: its parameter shapes and training FLOPs per sample."""

    preset: str
    image_size: int
    channels: int
    shapes: tuple[tuple[int, ...], ...]
    flops_per_sample: float

    @property
    def parameters(self) -> int:
        """d, the number of values in an update."""
        return int(sum(math.prod(s) for s in self.shapes))


@functools.lru_cache(maxsize=8)
def model_profile(preset: str, image_size: int, channels: int) -> ModelProfile:
    """Measure `build_unet(preset, image_size, channels)` on the meta device.

    φ is the FLOPs of one forward and one backward pass of a batch of one image
    (`edge.energy.training_flops`: torch's FLOP counter, 2 per multiply-add of matmuls and
    convolutions; element-wise ops are not counted).
    """
    import torch

    from qfd_app.diffusion.ddpm import PRESETS, build_unet

    if preset not in PRESETS:
        raise ScenarioError(f"model.preset must be one of {', '.join(sorted(PRESETS))}; got {preset!r}.")
    with torch.device("meta"):
        model = build_unet(preset, image_size, channels)
        images = torch.zeros(1, channels, image_size, image_size)     # a batch of one image
        timesteps = torch.zeros(1, dtype=torch.long)
    flops = training_flops(model, images, timesteps)
    shapes = tuple(tuple(p.shape) for p in model.parameters() if p.requires_grad)
    return ModelProfile(preset, image_size, channels, shapes, flops)


# ----------------------------------------------------------------------------- payload and error


def uniform_size_bytes(shape: tuple[int, ...], bits: int) -> int:
    """Bytes of one tensor in the uniform codec: ceil(n·b/8) packed codes + 8 per block.

    Blocks hold 256 values (64 when b ≤ 3), each with an fp32 minimum and step; b = 32 is
    raw fp32 (4 bytes per value, no scales). Mirrors `qfd_app.quant`'s `size_bytes`.
    """
    n = math.prod(shape)
    if bits == 32:
        return 4 * n
    block = 64 if bits <= 3 else 256
    return math.ceil(n * bits / 8) + 8 * math.ceil(n / block)


def _codec_size(bits: int):
    """The quant package's exact size function, or None when it is not there (yet)."""
    try:
        from qfd_app.quant import get_codec
    except ImportError:
        return None
    codec = get_codec("fp32", bits=32) if bits == 32 else get_codec("uniform", bits=bits)
    return codec.size_bytes


def payload_source() -> str:
    """"codec" when sizes come from `qfd_app.quant.get_codec`, "formula" otherwise."""
    return "formula" if _codec_size(8) is None else "codec"


@functools.lru_cache(maxsize=256)
def payload_bits(bits: int, shapes: tuple[tuple[int, ...], ...]) -> int:
    """S(b): exact size in bits of an update of tensors `shapes` encoded at `bits`."""
    size = _codec_size(bits)
    if size is None:
        return 8 * sum(uniform_size_bytes(s, bits) for s in shapes)
    return 8 * sum(int(size(s)) for s in shapes)


@functools.lru_cache(maxsize=64)
def gaussian_range(m: int) -> float:
    """E[max − min] of m standard normal values: ∫ 1 − Φ(x)^m − (1 − Φ(x))^m dx."""
    from scipy.special import ndtr

    x = np.linspace(-12.0, 12.0, 24001)
    cdf = ndtr(x)
    return float(np.trapezoid(1.0 - cdf**m - (1.0 - cdf) ** m, x))


@functools.lru_cache(maxsize=256)
def update_error(bits: int, shapes: tuple[tuple[int, ...], ...], update_rms: float) -> float:
    """V(b) of a Gaussian update with per-value RMS `update_rms`, in the codec's blocks."""
    block = 64 if bits <= 3 else 256
    sizes, ranges = [], []
    for shape in shapes:
        n = math.prod(shape)
        full, rest = divmod(n, block)
        sizes += [block] * full + ([rest] if rest else [])
    for m in sizes:
        ranges.append(gaussian_range(m) * update_rms)
    return float(quantization_error(bits, sizes, ranges))


# ----------------------------------------------------------------------------- one round


@dataclass(frozen=True)
class RoundInputs:
    """Everything the solver gets for one round, and where it came from."""

    devices: Devices
    candidates: Candidates
    network: Network
    class_names: list[str]
    distance_m: np.ndarray
    samples: np.ndarray
    model: ModelProfile


def round_inputs(
    scenario: Scenario,
    *,
    strategy: str = "ondemand",
    bits: int | None = None,
    round_: int = 1,
    seed: int | None = None,
    num_devices: int | None = None,
    bandwidth_policy: str | None = None,
) -> RoundInputs:
    """Devices, candidates and network of round `round_` of `scenario`, as `strategy` sees them.

    `num_devices` replicates the scenario's devices cyclically and scales the band by
    num_devices / scenario.num_devices, so that each device's share stays the same.
    """
    _check_options(strategy, bits, num_devices, bandwidth_policy)
    model = model_profile(scenario.model_preset, scenario.image_size, scenario.channels)
    fleet = scenario.fleet(num_devices, seed)
    n = len(fleet)
    samples = scenario.samples(num_devices)
    states = [fleet_state(fleet, i, round_, samples[i]) for i in range(n)]
    cand_bits = None  # ondemand: each device's demand
    if strategy != "ondemand":
        b = 32 if strategy == "fedavg" else int(bits)           # demands ignored
        cand_bits = candidate_bits(np.full(n, b), np.full(n, b))
    devices, candidates = solver_inputs(
        states, bits=cand_bits, epochs=scenario.local_epochs, flops_per_sample=model.flops_per_sample,
        gamma=scenario.gamma, payload_bits=lambda b: payload_bits(b, model.shapes),
        error=lambda _, b: update_error(b, model.shapes, scenario.update_rms),
    )
    network = Network(
        bandwidth_hz=scenario.bandwidth_hz * n / scenario.num_devices,
        noise_w_per_hz=scenario.noise_w_per_hz,
        deadline_s=scenario.deadline_s,
        error_budget=scenario.epsilon,
        update_sq_norm=scenario.update_coherence * model.parameters * scenario.update_rms**2,
        bandwidth_policy=bandwidth_policy or scenario.bandwidth_policy,
    )
    return RoundInputs(devices, candidates, network, fleet.class_names, fleet.distance_m, samples, model)


def plan_round(
    scenario: Scenario | str,
    *,
    strategy: str = "ondemand",
    bits: int | None = None,
    round_: int = 1,
    seed: int | None = None,
    num_devices: int | None = None,
    resource_policy: str | None = None,
    bandwidth_policy: str | None = None,
) -> dict[str, Any]:
    """Solve one round of `scenario` as `strategy` would, without training.

    Parameters
    ----------
    scenario : Scenario or str
        A scenario, or its name or path.
    strategy : {"ondemand", "fixed", "fedavg"}
        ondemand: each device's demand [b_min, b_max], budget enforced; fixed: `bits` for
        every device; fedavg: fp32 for every device.
    bits : int, optional
        The bit-width of `fixed` (1–16 or 32).
    round_ : int
        Round number (selects the fading).
    seed : int, optional
        Overrides the scenario's seed.
    num_devices : int, optional
        Replicate the scenario's devices to this many (the band grows with them).
    resource_policy : {"race-to-idle", "optimal"}, optional
        fedavg's default is race-to-idle (f_max, p_max, equal split); the others always
        optimise f, p and B.
    bandwidth_policy : {"equal", "optimal"}, optional
        Overrides the scenario's.

    Returns
    -------
    dict
        `qfd_app.edge.record.round_record` plus scenario, strategy, round, seed, model and
        per-device class, distance_m, gain_db and samples.

    Raises
    ------
    ScenarioError, PlanError
        For a bad scenario or options that do not fit together (both `ValueError`).
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    policy = _resource_policy(strategy, resource_policy)
    inputs = round_inputs(
        scenario, strategy=strategy, bits=bits, round_=round_, seed=seed,
        num_devices=num_devices, bandwidth_policy=bandwidth_policy,
    )
    network = inputs.network
    if policy == "race-to-idle":
        network = replace(network, bandwidth_policy="equal")
        allocation = race_to_idle(inputs.devices, inputs.candidates, network)
    else:
        allocation = solve_round(inputs.devices, inputs.candidates, network)
    record = round_record(inputs.devices, inputs.candidates, network, allocation)
    gain_db = 10.0 * np.log10(inputs.devices.gain)
    for i, row in enumerate(record["devices"]):
        extra = {"device": i, "class": inputs.class_names[i], "distance_m": float(inputs.distance_m[i]),
                 "gain_db": float(gain_db[i]), "samples": int(inputs.samples[i])}
        record["devices"][i] = {**extra, **row}
    model = inputs.model
    return {
        "scenario": scenario.name,
        "strategy": strategy,
        "resource_policy": policy,
        "round": round_,
        "seed": scenario.seed if seed is None else seed,
        "model": {
            "preset": model.preset, "image_size": model.image_size, "channels": model.channels,
            "parameters": model.parameters, "flops_per_sample": model.flops_per_sample,
            "payload_source": payload_source(),
        },
        **record,
    }


def _check_options(strategy: str, bits: int | None, num_devices: int | None, bandwidth_policy: str | None) -> None:
    if bandwidth_policy is not None and bandwidth_policy not in BANDWIDTH_POLICIES:
        raise PlanError(f"--bandwidth-policy must be one of {', '.join(BANDWIDTH_POLICIES)}; got {bandwidth_policy!r}.")
    if strategy not in STRATEGIES:
        raise PlanError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}.")
    if strategy == "fixed":
        if bits is None:
            raise PlanError("--strategy fixed needs --bits (one of 1–16 or 32).")
        if bits not in CODEC_BITS:
            raise PlanError(f"--bits must be one of 1–16 or 32 (the bit-widths with a codec); got {bits}.")
    elif bits is not None:
        raise PlanError(f"--bits sets the bit-width of --strategy fixed; {strategy} chooses its own.")
    if num_devices is not None and num_devices < 1:
        raise PlanError(f"--devices must be ≥ 1; got {num_devices}.")


def _resource_policy(strategy: str, requested: str | None) -> str:
    if requested is not None and requested not in RESOURCE_POLICIES:
        raise PlanError(f"--resource-policy must be one of {', '.join(RESOURCE_POLICIES)}; got {requested!r}.")
    if strategy == "fedavg":
        return requested or "race-to-idle"
    if requested == "race-to-idle":
        raise PlanError(f"--resource-policy race-to-idle is fedavg's; {strategy} always optimises f, p and B.")
    return "optimal"


# ----------------------------------------------------------------------------- the table


def format_plan(record: dict[str, Any]) -> str:
    """A readable table of a plan: one line per device, then totals and warnings."""
    net, model, tot = record["network"], record["model"], record["totals"]
    lines = [
        f"scenario {record['scenario']} · strategy {record['strategy']} ({record['resource_policy']}) · "
        f"round {record['round']} · seed {record['seed']}",
        f"model {model['preset']} {model['image_size']}×{model['image_size']}×{model['channels']}: "
        f"{model['parameters']:,} parameters, {model['flops_per_sample']:.3g} training FLOPs per sample · "
        f"payload sizes from the {model['payload_source']}",
        f"band {net['bandwidth_hz'] / 1e6:g} MHz ({net['bandwidth_policy']} split) · deadline {net['deadline_s']:g} s · "
        f"error budget ε = {'off' if net['error_budget'] is None else format(net['error_budget'], 'g')}",
        "",
    ]
    header = ("#", "class", "dist m", "gain dB", "bits", "CPU GHz", "P dBm", "B kHz",
              "compute s", "upload s", "energy J", "status")
    rows = [header]
    for d in record["devices"]:
        on = d["status"] == "scheduled"
        rows.append((
            str(d["device"]), d["class"], f"{d['distance_m']:.0f}", f"{d['gain_db']:.1f}",
            str(d["bits"]) if on else "-",
            f"{d['cpu_hz'] / 1e9:.3f}" if on else "-",
            f"{float(w_to_dbm(d['power_w'])):.1f}" if on else "-",
            f"{d['bandwidth_hz'] / 1e3:.1f}" if on else "-",
            f"{d['compute_s']:.3g}" if on else "-",
            f"{d['upload_s']:.3g}" if on else "-",
            f"{d['energy_j']:.4g}" if on else "-",
            d["status"] + (f": {d['reason']}" if d["reason"] else ""),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    budget = tot["error_budget_abs"]
    lines += [
        "",
        f"total energy {tot['energy_j']:.4g} J (compute {tot['energy_compute_j']:.4g} J, "
        f"upload {tot['energy_upload_j']:.4g} J) · payload {tot['payload_bits'] / 8e6:.4g} MB · "
        f"{tot['scheduled']} scheduled, {tot['excluded']} excluded",
        f"error {tot['error']:.4g} / budget {'off' if budget is None else format(budget, '.4g')} "
        f"({'met' if tot['budget_met'] else 'NOT met'}) · solved in {tot['solve_s'] * 1e3:.1f} ms",
    ]
    lines += [f"warning: {w}" for w in record["warnings"]]
    return "\n".join(lines)
