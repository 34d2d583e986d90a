"""Scenarios: the network, the device classes and the plan stand-ins, read from TOML and validated once.

A scenario file lists settings by table (`[network]`, `[classes.phone]`, `[devices]`, …).
`extends = "default"` starts from another scenario and changes only what the file lists
(tables merge key by key). Every key is declared in `KEYS` below with its type and allowed
range; one function checks them all, and every error names the key as written in the file,
what is allowed and what was received, e.g.

    classes.iot.power_w_max must be a number > 0; got -0.1.

Unknown keys, missing keys, wrong types and references to undefined classes are errors
(`ScenarioError`, a `ValueError`). Nothing here runs a model: the model preset is checked
against the presets by `qfd_app.planning`, which owns the UNet.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfd_app.edge.devices import DeviceClass, Fleet
from qfd_app.edge.energy import CODEC_BITS, dbm_to_w
from qfd_app.edge.problem import BANDWIDTH_POLICIES

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"


class ScenarioError(ValueError):
    """A scenario that cannot be read: bad TOML, unknown or missing key, wrong type or range."""


@dataclass(frozen=True)
class _Key:
    """One scenario key: its type, allowed range and whether it may be left out."""

    kind: type                      # int, float, str
    low: float = -math.inf          # bounds of numbers
    high: float = math.inf
    low_open: bool = False          # True: value > low, False: value ≥ low
    choices: tuple[str, ...] = ()   # allowed strings
    optional: bool = False

    def describe(self) -> str:
        if self.kind is str:
            return f"one of {', '.join(repr(c) for c in self.choices)}" if self.choices else "a string"
        what = "an integer" if self.kind is int else "a number"
        parts = []
        if self.low > -math.inf:
            parts.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
        if self.high < math.inf:
            parts.append(f"≤ {self.high:g}")
        return f"{what} {' and '.join(parts)}".strip()

    def check(self, name: str, value: Any) -> Any:
        ok_type = (
            isinstance(value, str) if self.kind is str
            else isinstance(value, int) and not isinstance(value, bool) if self.kind is int
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        if not ok_type:
            raise ScenarioError(f"{name} must be {self.describe()}; got {value!r} ({type(value).__name__}).")
        if self.kind is str:
            if self.choices and value not in self.choices:
                raise ScenarioError(f"{name} must be {self.describe()}; got {value!r}.")
            return value
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high or (isinstance(value, float) and math.isnan(value)):
            raise ScenarioError(f"{name} must be {self.describe()}; got {value!r}.")
        return self.kind(value)


POSITIVE = _Key(float, 0.0, low_open=True)

# Every key a scenario may hold ("*" stands for a class name).
KEYS: dict[str, _Key] = {
    "description": _Key(str, optional=True),
    "seed": _Key(int, 0),
    "model.preset": _Key(str),
    "model.image_size": _Key(int, 1),
    "model.channels": _Key(int, 1),
    "data.train_samples": _Key(int, 1),
    "training.local_epochs": _Key(int, 1),
    "training.gamma": _Key(float, 0.0),
    "network.cell_radius_m": POSITIVE,
    "network.min_distance_m": POSITIVE,
    "network.bandwidth_hz": POSITIVE,
    "network.noise_dbm_per_hz": _Key(float, -300.0, 0.0),
    "network.shadowing_db": _Key(float, 0.0),
    "network.deadline_s": POSITIVE,
    "network.bandwidth_policy": _Key(str, choices=BANDWIDTH_POLICIES),
    "budget.epsilon": _Key(float, 0.0),
    "plan.update_rms": POSITIVE,
    "plan.update_coherence": _Key(float, 0.0, 1.0, low_open=True),
    "classes.*.bits_min": _Key(int, 1, 32),
    "classes.*.bits_max": _Key(int, 1, 32),
    "classes.*.cpu_hz_min": POSITIVE,
    "classes.*.cpu_hz_max": POSITIVE,
    "classes.*.cycles_per_flop": POSITIVE,
    "classes.*.kappa": POSITIVE,
    "classes.*.power_w_max": POSITIVE,
    "classes.*.distance_m": _Key(float, 0.0, low_open=True, optional=True),
    "devices.*": _Key(int, 0),
}


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Field names follow the TOML keys (SI units).

    Attributes
    ----------
    name : str
        File stem (`default`, `paper`, …).
    seed : int
        Seed of placement, shadowing and fading.
    model_preset, image_size, channels
        The UNet whose training FLOPs per sample φ and update size the plan measures.
    train_samples : int
        D, training samples of the whole federation, split equally over the devices.
    local_epochs : int
        E.
    gamma : float
        γ of the precision factor ρ(b) = (b/32)^γ.
    cell_radius_m, min_distance_m, bandwidth_hz, noise_dbm_per_hz, shadowing_db, deadline_s
        The cell and the radio; devices are uniform in the annulus [min_distance_m, cell_radius_m].
    bandwidth_policy : str
        "equal" or "optimal".
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
    model_preset: str
    image_size: int
    channels: int
    train_samples: int
    local_epochs: int
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
        """The class of each device: the scenario's list, repeated cyclically up to `num_devices`."""
        base = np.repeat(np.arange(len(self.classes)), self.counts)
        n = len(base) if num_devices is None else num_devices
        return base[np.arange(n) % len(base)]

    def samples(self, num_devices: int | None = None) -> np.ndarray:
        """D_n: `train_samples` split equally over the scenario's devices, repeated like `class_index`."""
        n_base = self.num_devices
        base = np.full(n_base, self.train_samples // n_base)
        base[: self.train_samples % n_base] += 1
        n = n_base if num_devices is None else num_devices
        return base[np.arange(n) % n_base]

    def fleet(self, num_devices: int | None = None, seed: int | None = None) -> Fleet:
        """Place the devices (`num_devices` replicates the classes) and draw their shadowing."""
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

    Raises
    ------
    ScenarioError
        With one sentence naming the file, the key, what is allowed and what was received.
    """
    path = _resolve(name_or_path)
    merged = _read_chain(path, seen=())
    try:
        return _build(path.stem, merged)
    except ScenarioError as err:
        raise ScenarioError(f"{path.name}: {err}") from None


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
        f"Unknown scenario {str(name_or_path)!r}: give a path to a .toml file or one of {', '.join(available())}."
    )


def _read_chain(path: Path, seen: tuple[Path, ...]) -> dict:
    """The file's tables merged over those of the scenario it `extends`."""
    if path.resolve() in seen:
        raise ScenarioError(f"{path.name}: `extends` loops back to itself.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path.name} is not valid TOML: {err}.") from None
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ScenarioError(f"{path.name}: extends must be a scenario name or path; got {parent!r}.")
    base_path = _resolve(path.parent / parent if parent.endswith(".toml") else parent)
    return _merge(_read_chain(base_path, (*seen, path.resolve())), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
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


def _build(name: str, data: dict) -> Scenario:
    flat = _flatten(data)
    values: dict[str, Any] = {}
    for key, value in flat.items():
        spec = KEYS.get(_pattern(key))
        if spec is None:
            raise ScenarioError(f"unknown key {key!r}; {_allowed_near(key)}.")
        values[key] = spec.check(key, value)
    class_names = [k for k, v in data.get("classes", {}).items() if isinstance(v, dict)]
    for pattern, spec in KEYS.items():
        if spec.optional:
            continue
        names = [pattern.replace("*", c) for c in class_names] if pattern.startswith("classes.*") else [pattern]
        for key in names:
            if "*" not in key and key not in values:
                raise ScenarioError(f"missing key {key!r} ({spec.describe()}).")
    classes = tuple(_device_class(c, values) for c in class_names)
    counts = _counts(data.get("devices", {}), class_names)
    _cross_checks(values, counts)
    used = [(c, n) for c, n in zip(classes, counts, strict=True) if n > 0]
    return Scenario(
        name=name,
        description=values.get("description", ""),
        seed=values["seed"],
        model_preset=values["model.preset"],
        image_size=values["model.image_size"],
        channels=values["model.channels"],
        train_samples=values["data.train_samples"],
        local_epochs=values["training.local_epochs"],
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
    )


def _allowed_near(key: str) -> str:
    """The keys allowed in the table of `key`, or the tables allowed at the top."""
    table = _pattern(key).rpartition(".")[0]
    siblings = sorted(k.rpartition(".")[2] for k in KEYS if k.rpartition(".")[0] == table and table)
    if siblings:
        return f"the keys allowed in [{key.rpartition('.')[0]}] are {', '.join(siblings)}"
    return "the top-level keys and tables allowed are " + ", ".join(sorted({k.split(".")[0] for k in KEYS}))


def _device_class(name: str, values: dict[str, Any]) -> DeviceClass:
    get = lambda field: values.get(f"classes.{name}.{field}")  # noqa: E731
    lo, hi = get("bits_min"), get("bits_max")
    if lo > hi:
        raise ScenarioError(f"classes.{name}.bits_min must be ≤ classes.{name}.bits_max; got {lo} > {hi}.")
    if not any(lo <= b <= hi for b in CODEC_BITS):
        raise ScenarioError(
            f"classes.{name}: the demand [{lo}, {hi}] holds no bit-width with a codec (1–16 or 32)."
        )
    if get("cpu_hz_min") > get("cpu_hz_max"):
        raise ScenarioError(
            f"classes.{name}.cpu_hz_min must be ≤ classes.{name}.cpu_hz_max; "
            f"got {get('cpu_hz_min'):g} > {get('cpu_hz_max'):g}."
        )
    return DeviceClass(
        name=name, bits_min=lo, bits_max=hi, cpu_hz_min=get("cpu_hz_min"), cpu_hz_max=get("cpu_hz_max"),
        cycles_per_flop=get("cycles_per_flop"), kappa=get("kappa"), power_w_max=get("power_w_max"),
        distance_m=get("distance_m"),
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
        raise ScenarioError("devices must list at least one device (e.g. `[devices]` with `phone = 4`).")
    return counts


def _cross_checks(values: dict[str, Any], counts: tuple[int, ...]) -> None:
    if values["network.min_distance_m"] >= values["network.cell_radius_m"]:
        raise ScenarioError(
            "network.min_distance_m must be < network.cell_radius_m; got "
            f"{values['network.min_distance_m']:g} ≥ {values['network.cell_radius_m']:g}."
        )
    if values["data.train_samples"] < sum(counts):
        raise ScenarioError(
            f"data.train_samples must be at least the number of devices ({sum(counts)}); "
            f"got {values['data.train_samples']}."
        )
