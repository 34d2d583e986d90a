"""Scenarios: the network, the device classes and the plan stand-ins, read from
TOML and validated once.

A scenario file lists settings by table (`[network]`, `[classes.phone]`, `[devices]`,
…). `extends = "default"` starts from another scenario and changes only what the
file lists (tables merge key by key). Every key is declared in `KEYS` below with its
type and allowed range (a constraint of `qfd_app.validation`); one function checks
them all, and every error names the key as written in the file, what is allowed and
what was received, e.g.

    Scenario key 'classes.iot.power_w_max' must be a float in the range (0, inf);
    got -0.1.

Unknown keys, missing keys, wrong types and references to undefined classes are errors
(`ScenarioError`, a `ValueError`). A scenario is the network, not the run: the
model, the data and E are the run's settings (`MOVED` says where a key that
used to be here went).

`load_scenario` parses each file once per process: the result is cached by the resolved
path and the modification times of the file and of those it `extends`, so an edited file
is read again. A `Scenario` is frozen, so the cached one is shared safely.
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfd_app.edge.devices import DeviceClass, Fleet
from qfd_app.edge.energy import dbm_to_w
from qfd_app.edge.problem import BANDWIDTH_POLICIES
from qfd_app.validation import (
    Constraint,
    Interval,
    Options,
    Satisfies,
    Text,
    check_value,
    is_number,
)

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"


class ScenarioError(ValueError):
    """A scenario that cannot be read: bad TOML, unknown or missing key,
    wrong type or range."""


@dataclass(frozen=True)
class _UpToInfinity(Interval):
    """An `Interval` without an upper bound that also allows inf (e.g. an error
    budget that is off)."""

    def problem(self, value: Any) -> str | None:
        if is_number(value) and value == math.inf:
            return None
        return None if super().problem(value) is None else self.describe()

    def describe(self) -> str:
        return super().describe().removesuffix(")") + "]"


POSITIVE = Interval(float, 0.0, None, closed="neither")

# Every key a scenario may hold ("*" stands for a class name).
KEYS: dict[str, Constraint] = {
    "description": Text(),
    "seed": Interval(int, 0, None),
    "training.gamma": Interval(float, 0.0, None),
    "network.cell_radius_m": POSITIVE,
    "network.min_distance_m": POSITIVE,
    "network.bandwidth_hz": POSITIVE,
    "network.noise_dbm_per_hz": Interval(float, -300.0, 0.0),
    "network.shadowing_db": Interval(float, 0.0, None),
    "network.deadline_s": POSITIVE,
    "network.bandwidth_policy": Options(tuple(BANDWIDTH_POLICIES)),
    "network.downlink_bandwidth_hz": POSITIVE,
    "network.bs_power_w": POSITIVE,
    "budget.epsilon": _UpToInfinity(float, 0.0, None),
    "plan.update_rms": POSITIVE,
    "plan.update_coherence": Interval(float, 0.0, 1.0, closed="right"),
    "classes.*.bits_min": Interval(int, 1, 32),
    "classes.*.bits_max": Interval(int, 1, 32),
    "classes.*.cpu_hz_min": POSITIVE,
    "classes.*.cpu_hz_max": POSITIVE,
    "classes.*.cycles_per_flop": POSITIVE,
    "classes.*.kappa": POSITIVE,
    "classes.*.power_w_max": POSITIVE,
    "classes.*.receive_power_w": Interval(float, 0.0, None),
    "classes.*.distance_m": POSITIVE,
    "devices.*": Interval(int, 0, None),
}
# Keys of the run, not of the network: a run (and `qfd plan`) takes
# them from its settings.
MOVED = {
    "model.preset": "the model is the run's `model` setting",
    "model.image_size": "the image size is the run's `image-size` setting",
    "model.channels": "the channels are those of the run's `dataset`",
    "data.train_samples": (
        "each device's D_n is the size of its partition of the run's `dataset`"
    ),
    "training.local_epochs": "E is the run's `local-epochs` setting",
}
# Keys a scenario may leave out.
OPTIONAL = frozenset({"description", "classes.*.distance_m"})

EXTENDS = Satisfies(
    lambda v: isinstance(v, str) and bool(v),
    "a scenario name or the path of a .toml file",
)


def _label(key: str) -> str:
    """How a refusal names a key: Scenario key 'classes.iot.power_w_max'."""
    return f"Scenario key {key!r}"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Field names follow the TOML keys (SI units).

    Attributes
    ----------
    name : str
        File stem (`default`, `paper`, …).
    seed : int
        Seed of placement, shadowing and fading.
    gamma : float
        γ of the precision factor ρ(b) = (b/32)^γ.
    cell_radius_m, min_distance_m, bandwidth_hz, noise_dbm_per_hz,
    shadowing_db, deadline_s
        The cell and the radio; devices are uniform in the annulus
        [min_distance_m, cell_radius_m].
    bandwidth_policy : str
        "equal" or "optimal".
    downlink_bandwidth_hz, bs_power_w : float
        B_dl and P_bs of the base station's downlink, split equally among the
        round's devices.
    epsilon : float
        ε, the error budget relative to ‖Δ̄‖² (inf: off).
    update_rms, update_coherence : float
        `qfd plan` stand-ins for the training history (docs/model.md, "error budget").
    classes : tuple of DeviceClass
        The profiles, in file order.
    counts : tuple of int
        Devices of each class.
    """

    name: str
    seed: int
    gamma: float
    cell_radius_m: float
    min_distance_m: float
    bandwidth_hz: float
    noise_dbm_per_hz: float
    shadowing_db: float
    deadline_s: float
    bandwidth_policy: str
    epsilon: float
    update_rms: float
    update_coherence: float
    classes: tuple[DeviceClass, ...]
    counts: tuple[int, ...]
    downlink_bandwidth_hz: float
    bs_power_w: float
    description: str = ""

    @property
    def noise_w_per_hz(self) -> float:
        """N0 in W/Hz."""
        return float(dbm_to_w(self.noise_dbm_per_hz))

    @property
    def num_devices(self) -> int:
        """Devices the scenario lists."""
        return sum(self.counts)

    def class_index(self, num_devices: int | None = None) -> np.ndarray:
        """The class of each device: the scenario's list, repeated cyclically up
        to `num_devices`."""
        base = np.repeat(np.arange(len(self.classes)), self.counts)
        n = len(base) if num_devices is None else num_devices
        return base[np.arange(n) % len(base)]

    def check_widths(self, widths: Sequence[int]) -> None:
        """Refuse a class whose demand holds none of `widths` (the
        bit-widths a codec sends)."""
        for c in self.classes:
            if not any(c.bits_min <= b <= c.bits_max for b in widths):
                raise ScenarioError(
                    f"classes.{c.name}: the demand [{c.bits_min}, {c.bits_max}] holds "
                    f"no bit-width with a codec ({', '.join(map(str, widths))})."
                )

    def fleet(self, num_devices: int | None = None, seed: int | None = None) -> Fleet:
        """Place the devices (`num_devices` replicates the classes) and
        draw their shadowing."""
        return Fleet.build(
            self.classes,
            self.class_index(num_devices),
            cell_radius_m=self.cell_radius_m,
            min_distance_m=self.min_distance_m,
            shadowing_db=self.shadowing_db,
            seed=self.seed if seed is None else seed,
        )


def available() -> list[str]:
    """Names of the scenarios shipped in `scenarios/`."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and validate a scenario by name (`default`) or path (`my.toml`).

    Each file is parsed once per process: the same file, unchanged along with those it
    `extends`, gives the same (frozen) `Scenario` object.

    Raises
    ------
    ScenarioError
        With one sentence naming the file, the key, what is allowed
        and what was received.
    """
    path = _resolve(name_or_path)
    return _load(str(path.resolve()), path.name, _chain(path))


@functools.lru_cache(maxsize=128)
def _load(
    resolved: str, file_name: str, chain: tuple[tuple[str, int, int], ...]
) -> Scenario:
    """The scenario of the file `resolved` whose `extends` chain is `chain` (path,
    mtime, size of each file, the file first): `chain` is in the key so that editing any
    file of it reloads."""
    merged: dict = {}
    for file, mtime_ns, size in reversed(chain):
        merged = _merge(merged, _read_toml(file, mtime_ns, size)[1])
    try:
        return _build(Path(file_name).stem, merged)
    except ScenarioError as err:
        raise ScenarioError(f"{file_name}: {err}") from None


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ScenarioError(f"Scenario file {str(path)!r} does not exist.")
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise ScenarioError(
        f"Unknown scenario {str(name_or_path)!r}: give a path to a .toml file or one "
        f"of {', '.join(available())}."
    )


def _chain(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(resolved path, mtime in ns, size) of `path` and of each scenario it
    `extends`, in turn."""
    chain: list[tuple[str, int, int]] = []
    while True:
        resolved = path.resolve()
        if any(file == str(resolved) for file, _, _ in chain):
            raise ScenarioError(f"{path.name}: `extends` loops back to itself.")
        stat = resolved.stat()
        chain.append((str(resolved), stat.st_mtime_ns, stat.st_size))
        parent, _ = _read_toml(*chain[-1])
        if parent is None:
            return tuple(chain)
        path = _resolve(path.parent / parent if parent.endswith(".toml") else parent)


@functools.lru_cache(maxsize=128)
def _read_toml(
    file: str, mtime_ns: int, size: int
) -> tuple[str | None, Mapping[str, Any]]:
    """The scenario `extends` (None: none) and the other tables of `file`, parsed once
    for each (mtime, size) it has. The tables are shared by every caller: read them,
    never change them."""
    path = Path(file)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path.name} is not valid TOML: {err}.") from None
    parent = data.pop("extends", None)
    if parent is not None:
        parent = check_value(
            f"{path.name}: {_label('extends')}", parent, EXTENDS, ScenarioError
        )
    return parent, data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(base[key], value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"network": {"deadline_s": 30}} → {"network.deadline_s": 30}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _pattern(name: str) -> str:
    """The `KEYS` entry of a concrete key: classes.iot.kappa → classes.*.kappa."""
    parts = name.split(".")
    if parts[0] in ("classes", "devices") and len(parts) >= 2:
        parts[1] = "*"
    return ".".join(parts)


def _build(name: str, data: Mapping[str, Any]) -> Scenario:
    flat = _flatten(data)
    values: dict[str, Any] = {}
    for key, value in flat.items():
        constraint = KEYS.get(_pattern(key))
        if constraint is None and key in MOVED:
            raise ScenarioError(f"{key!r} is no longer a scenario key: {MOVED[key]}.")
        if constraint is None:
            raise ScenarioError(f"unknown key {key!r}; {_allowed_near(key)}.")
        values[key] = check_value(_label(key), value, constraint, ScenarioError)
    class_names = [k for k, v in data.get("classes", {}).items() if isinstance(v, dict)]
    for pattern, constraint in KEYS.items():
        if pattern in OPTIONAL:
            continue
        names = (
            [pattern.replace("*", c) for c in class_names]
            if pattern.startswith("classes.*")
            else [pattern]
        )
        for key in names:
            if "*" not in key and key not in values:
                raise ScenarioError(
                    f"{_label(key)} is missing; it must be {constraint.describe()}."
                )
    classes = tuple(_device_class(c, values) for c in class_names)
    counts = _counts(data.get("devices", {}), class_names)
    _cross_checks(values, counts)
    used = [(c, n) for c, n in zip(classes, counts, strict=True) if n > 0]
    return Scenario(
        name=name,
        description=values.get("description", ""),
        seed=values["seed"],
        gamma=values["training.gamma"],
        cell_radius_m=values["network.cell_radius_m"],
        min_distance_m=values["network.min_distance_m"],
        bandwidth_hz=values["network.bandwidth_hz"],
        noise_dbm_per_hz=values["network.noise_dbm_per_hz"],
        shadowing_db=values["network.shadowing_db"],
        deadline_s=values["network.deadline_s"],
        bandwidth_policy=values["network.bandwidth_policy"],
        epsilon=values["budget.epsilon"],
        update_rms=values["plan.update_rms"],
        update_coherence=values["plan.update_coherence"],
        classes=tuple(c for c, _ in used),
        counts=tuple(n for _, n in used),
        downlink_bandwidth_hz=values["network.downlink_bandwidth_hz"],
        bs_power_w=values["network.bs_power_w"],
    )


def _allowed_near(key: str) -> str:
    """The keys allowed in the table of `key`, or the tables allowed at the top."""
    table = _pattern(key).rpartition(".")[0]
    siblings = sorted(
        k.rpartition(".")[2] for k in KEYS if k.rpartition(".")[0] == table and table
    )
    if siblings:
        return (
            f"the keys allowed in [{key.rpartition('.')[0]}] are {', '.join(siblings)}"
        )
    return "the top-level keys and tables allowed are " + ", ".join(
        sorted({k.split(".")[0] for k in KEYS})
    )


def _device_class(name: str, values: dict[str, Any]) -> DeviceClass:
    get = lambda field: values.get(f"classes.{name}.{field}")  # noqa: E731
    lo, hi = get("bits_min"), get("bits_max")
    if lo > hi:
        raise ScenarioError(
            f"classes.{name}.bits_min must be ≤ "
            f"classes.{name}.bits_max; got {lo} > {hi}."
        )
    if get("cpu_hz_min") > get("cpu_hz_max"):
        raise ScenarioError(
            f"classes.{name}.cpu_hz_min must be ≤ classes.{name}.cpu_hz_max; "
            f"got {get('cpu_hz_min'):g} > {get('cpu_hz_max'):g}."
        )
    return DeviceClass(
        name=name,
        bits_min=lo,
        bits_max=hi,
        cpu_hz_min=get("cpu_hz_min"),
        cpu_hz_max=get("cpu_hz_max"),
        cycles_per_flop=get("cycles_per_flop"),
        kappa=get("kappa"),
        power_w_max=get("power_w_max"),
        distance_m=get("distance_m"),
        receive_power_w=get("receive_power_w"),
    )


def _counts(devices: dict, class_names: list[str]) -> tuple[int, ...]:
    for name in devices:
        if name not in class_names:
            raise ScenarioError(
                f"devices.{name} names an unknown device class {name!r}; "
                f"the classes defined are {', '.join(class_names) or '(none)'}."
            )
    counts = tuple(int(devices.get(c, 0)) for c in class_names)
    if sum(counts) == 0:
        raise ScenarioError(
            "devices must list at least one device (e.g. `[devices]` with `phone = 4`)."
        )
    return counts


def _cross_checks(values: dict[str, Any], counts: tuple[int, ...]) -> None:
    if values["network.min_distance_m"] >= values["network.cell_radius_m"]:
        raise ScenarioError(
            "network.min_distance_m must be < network.cell_radius_m; "
            f"got {values['network.min_distance_m']:g} ≥ "
            f"{values['network.cell_radius_m']:g}."
        )
