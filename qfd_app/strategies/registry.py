"""The strategy registry: every module of `qfd_app/strategies/` that declares
a `Strategy` is one.

A strategy is a set of rules, nothing more (no Flower, no torch):

- its `name`, a one-line `summary`, and what `name:<option>` means in `qfd compare`
  (`parse_option`);
- which bit-widths a device may get (`widths`, and whether they stay within each
  device's demand, `follows_demand`) and which codec sends each (`codec_for`);
- its resource policies (`resource_policies`; the first is what
  `resource-policy = "auto"` means): "optimal" lets the solver set clock, power and
  bandwidth, "race-to-idle" runs every device flat out on an equal share of the band;
- whether the round's plan enforces the error budget ε (`enforces_error_budget`);
- which values of the `codec` setting it accepts (`codecs`; None: it
  ignores the setting).

Settings validation, `qfd plan`, `qfd compare`, the ServerApp
(through the round planner) and the docs' list read the rules from here; nothing else
names a strategy. Adding a strategy is adding one file (docs/strategies.md).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from qfd_app.edge.problem import candidate_bits

# Modules of this package that hold the machinery, not a strategy.
MACHINERY = frozenset({"registry", "planner", "base", "averaging"})
RESOURCE_POLICIES = ("race-to-idle", "optimal")


class Strategy:
    """The rules of one strategy, for the settings of one run.

    Subclasses set the class attributes and `widths`/`codec_for`; see
    the module docstring.

    Parameters
    ----------
    codec : str
        The run's `codec` setting (used by strategies whose `codecs` is not None).
    bits : int
        The run's `bits` setting.
    resource_policy : str
        "race-to-idle" or "optimal", already resolved from "auto".
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    # what `name:<option>` takes in `qfd compare`, for the docs and errors
    option_help: ClassVar[str] = ""
    resource_policies: ClassVar[tuple[str, ...]] = ("optimal",)
    enforces_error_budget: ClassVar[bool] = False
    follows_demand: ClassVar[bool] = False
    codecs: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        *,
        codec: str = "uniform",
        bits: int = 8,
        resource_policy: str | None = None,
    ):
        self.codec, self.bits = codec, bits
        self.resource_policy = resource_policy or self.resource_policies[0]

    def widths(self) -> tuple[int, ...]:
        """The bit-widths a device may get (within its demand when `follows_demand`)."""
        raise NotImplementedError

    def codec_for(self, bits: int) -> str:
        """The codec that sends an update at `bits`."""
        raise NotImplementedError

    def candidate_bits(
        self, bits_min: Sequence[int], bits_max: Sequence[int]
    ) -> NDArray[np.int64]:
        """(N, C) candidate bit-widths of devices with demands
        [bits_min, bits_max], 0-padded."""
        widths = self.widths()
        if not self.follows_demand:
            bits_min, bits_max = (
                np.full(len(bits_min), min(widths)),
                np.full(len(bits_max), max(widths)),
            )
        return candidate_bits(bits_min, bits_max, widths)

    def label(self) -> str:
        """How runs and plots name this strategy with its options, e.g.
        `fedavg:optimal`."""
        if len(self.resource_policies) > 1:
            return f"{self.name}:{self.resource_policy}"
        return self.name

    @classmethod
    def parse_option(
        cls, option: str, base: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """The run-config overrides of `name:<option>` in `qfd compare`, and the option
        as its label shows it.

        `base` is the comparison's run config (defaults and overrides). The default
        takes a resource policy when the strategy has more than one, and nothing else.
        """
        if not option:
            return {}, ""
        if len(cls.resource_policies) > 1 and option in cls.resource_policies:
            return {"resource-policy": option}, option
        raise ValueError(
            f"{cls.name} takes {cls.option_help or 'no option'}; got {option!r}"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(codec={self.codec!r}, bits={self.bits}, "
            f"resource_policy={self.resource_policy!r})"
        )


@functools.cache
def strategies() -> dict[str, type[Strategy]]:
    """Every strategy of this package by name, in the order of their modules' names."""
    package = __name__.rpartition(".")[0]
    found: dict[str, type[Strategy]] = {}
    for info in sorted(
        pkgutil.iter_modules(importlib.import_module(package).__path__),
        key=lambda i: i.name,
    ):
        if info.name in MACHINERY or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Strategy)
                and value.__module__ == module.__name__
            ):
                if value.name in found:
                    raise RuntimeError(
                        f"Two strategies are named {value.name!r}: "
                        f"{found[value.name]} and {value}"
                    )
                found[value.name] = value
    return found


def strategy_names() -> tuple[str, ...]:
    """The names the `strategy` setting accepts."""
    return tuple(strategies())


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class named `name`; ValueError naming the known ones
    if there is none."""
    known = strategies()
    if name not in known:
        raise ValueError(
            f"Unknown strategy {name!r}; choose one of {', '.join(known)}."
        )
    return known[name]


def resource_policy(strategy: type[Strategy], requested: str) -> str:
    """The policy in force: "auto" is the strategy's first."""
    return strategy.resource_policies[0] if requested == "auto" else requested
