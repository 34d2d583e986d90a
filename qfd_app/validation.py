"""One way to check a value and to refuse it: constraints, and the sentence
every refusal reads as.

Modelled on scikit-learn's `utils._param_validation`: a constraint says what it allows
(`describe`) and whether a value is allowed (`problem`). Every check of outside
input — run settings, scenario files, a device's reported state, a SuperNode's
`--node-config` profile, the metrics of a device's reply — goes through `check_value`
or `check_mapping`, so every refusal names the key, what is allowed and the value
received, in one form:

    The 'bits' setting must be an int in the range [1, 32]; got 40.
    Scenario key 'classes.iot.power_w_max' must be a float in the range (0, inf);
    got -0.1.

Plain Python: no numpy, no torch, nothing of qfd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class Constraint:
    """What a value may be. Subclasses implement `describe` and, where needed, `problem`
    (None when the value is allowed, else what is allowed) and `convert`."""

    def describe(self) -> str:
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The allowed `value` in its canonical type (e.g. an int given for a
        float is a float)."""
        return value


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool (True is an int in Python,
    never a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class Interval(Constraint):
    """A number of `kind` (int or float) between `low` and `high` (None: unbounded);
    `closed` says which ends are included: "both", "left", "right" or "neither". NaN and
    ±inf never pass."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def problem(self, value: Any) -> str | None:
        if not is_number(value) or (self.kind is int and not isinstance(value, int)):
            return self.describe()
        # NaN, ±inf, or an int beyond float range
        if not math.isfinite(_as_float(value)):
            return self.describe()
        low_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        high_ok = self.high is None or (
            value <= self.high
            if self.closed in ("both", "right")
            else value < self.high
        )
        return None if low_ok and high_ok else self.describe()

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = (
            "]" if self.closed in ("both", "right") and self.high is not None else ")"
        )
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return (
            f"{'an int' if self.kind is int else 'a float'} in the range "
            f"{left}{low}, {high}{right}"
        )

    def convert(self, value: Any) -> Any:
        return self.kind(value)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        return (
            None if isinstance(value, str) and value in self.values else self.describe()
        )

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class Boolean(Constraint):
    """true or false."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else self.describe()

    def describe(self) -> str:
        return "a boolean (true or false)"


class Text(Constraint):
    """A non-empty string."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, str) and value else self.describe()

    def describe(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Satisfies(Constraint):
    """A value for which `test` is true; `description` says what that means."""

    test: Callable[[Any], bool]
    description: str

    def problem(self, value: Any) -> str | None:
        return None if self.test(value) else self.description

    def describe(self) -> str:
        return self.description


def refusal(label: str, allowed: str, value: Any) -> str:
    """The one sentence of a refusal: `<label> must be <allowed>; got <value>.`"""
    return f"{label} must be {allowed}; got {value!r}."


def check_value(
    label: str, value: Any, constraint: Constraint, error: type[Exception] = ValueError
) -> Any:
    """`value` converted by `constraint`, or `error` with the sentence of `refusal`.

    `label` names the key as the user wrote it, e.g. "The 'bits' setting".
    """
    problem = constraint.problem(value)
    if problem is not None:
        raise error(refusal(label, problem, value))
    return constraint.convert(value)


def check_mapping(
    mapping: Mapping[str, Any],
    constraints: Mapping[str, Constraint],
    *,
    label: Callable[[str], str],
    error: type[Exception] = ValueError,
    optional: tuple[str, ...] | frozenset[str] = (),
    unknown: str = "error",
    what: str = "key",
) -> dict[str, Any]:
    """Check every key of `mapping` against `constraints`; return the converted values.

    Parameters
    ----------
    label : callable
        key ↦ how a refusal names it (e.g. ``lambda k: f"The {k!r} setting"``).
    error : exception class
        Raised with one sentence naming the key, what is allowed and the value received.
    optional : keys that may be missing (absent from the result then).
    unknown : "error" refuses keys without a constraint, "ignore" leaves them out.
    what : the noun for a key in the unknown-key message ("setting", "metric", …).
    """
    if unknown == "error":
        extra = sorted(set(mapping) - set(constraints))
        if extra:
            raise error(
                f"Unknown {what} {extra[0]!r}; known {what}s: {', '.join(constraints)}."
            )
    out = {}
    for key, constraint in constraints.items():
        if key not in mapping:
            if key in optional:
                continue
            raise error(f"{label(key)} is missing; it must be {constraint.describe()}.")
        out[key] = check_value(label(key), mapping[key], constraint, error)
    return out
