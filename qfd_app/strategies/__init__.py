"""Flower strategies, chosen by the `strategy` setting, all on the same query/plan/ledger machinery."""

from __future__ import annotations

from logging import WARNING

from flwr.common.logger import log

from qfd_app.edge import Network, Scenario
from qfd_app.runs.ledger import Ledger
from qfd_app.planning import model_profile
from qfd_app.settings import Settings
from qfd_app.strategies.base import EdgeStrategy, RoundPhysics
from qfd_app.strategies.fedavg import FullPrecisionFedAvg
from qfd_app.strategies.fixed import FixedBits
from qfd_app.strategies.ondemand import OnDemand


def round_physics(settings: Settings, scenario: Scenario, channels: int) -> RoundPhysics:
    """The scenario's network with the run's real model and local epochs.

    E is what the devices really train (`local-epochs`), φ and the tensor shapes are those
    of the run's model. γ applies only when devices really train at their bits: with
    `quantized-training = false` they compute in fp32 and ρ(b) = 1 (γ = 0).
    """
    gamma = scenario.gamma if settings.quantized_training else 0.0
    if gamma != scenario.gamma:
        log(WARNING, "[qfd] quantized-training = false: devices compute in fp32, so γ = 0 (scenario: %g)", scenario.gamma)
    profile = model_profile(settings.model, settings.image_size, channels)
    network = Network(
        bandwidth_hz=scenario.bandwidth_hz,
        noise_w_per_hz=scenario.noise_w_per_hz,
        deadline_s=scenario.deadline_s,
        error_budget=scenario.epsilon,
        bandwidth_policy=scenario.bandwidth_policy,
    )
    return RoundPhysics(network, settings.local_epochs, profile.flops_per_sample, gamma, profile.shapes)


def make_strategy(settings: Settings, ledger: Ledger, physics: RoundPhysics) -> EdgeStrategy:
    """The strategy named by `settings.strategy`, booking into `ledger`."""
    common = {
        "fraction_train": settings.fraction_train, "seed": settings.seed, "max_update_norm": settings.max_update_norm,
        "min_available_nodes": settings.min_available_nodes,
    }  # fmt: skip
    if settings.strategy == "fedavg":
        return FullPrecisionFedAvg(ledger, physics, resource_policy=settings.resources, **common)
    if settings.strategy == "fixed":
        return FixedBits(ledger, physics, codec=settings.codec, bits=settings.bits, **common)
    if settings.strategy == "ondemand":
        return OnDemand(ledger, physics, **common)
    raise ValueError(f"Unknown strategy {settings.strategy!r}")  # settings validated it: a programming error
