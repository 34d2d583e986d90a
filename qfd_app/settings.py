"""The run settings: one frozen, typed object built from Flower's run config and validated once.

The defaults live in one place, `[tool.flwr.app.config]` of pyproject.toml, which Flower
merges with `--run-config` overrides. `Settings.from_run_config` checks every key against the
table `CONSTRAINTS` below and fails before any work with a message that names the key as
the user wrote it, what is allowed and what was received.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qfd_app.diffusion.data import EMBEDDED, HF_PREFIX, PARTITIONERS, DataSpec
from qfd_app.diffusion.ddpm import LR_SCHEDULES, PRESETS
from qfd_app.edge import Scenario, ScenarioError, load_scenario
from qfd_app.planning import RESOURCE_POLICIES as PLAN_RESOURCE_POLICIES
from qfd_app.planning import STRATEGIES
from qfd_app.quant import FULL_PRECISION_BITS, codec_names, get_codec

RESOURCE_POLICIES = ("auto", *PLAN_RESOURCE_POLICIES)
DEVICES = ("auto", "cpu", "cuda")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class SettingsError(ValueError):
    """A run-config value that is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Interval:
    """A number of `kind` between `low` and `high` (None: unbounded), ends closed or open."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.describe()
        if self.kind is int and not isinstance(value, int):
            return self.describe()
        if not math.isfinite(value):
            return self.describe()
        low_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return None if low_ok and high_ok else self.describe()

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'an int' if self.kind is int else 'a float'} in the range {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def check(self, value: Any) -> str | None:
        return None if isinstance(value, str) and value in self.values else self.describe()

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class DatasetName:
    """An embedded dataset, or `hf:<name or local path>` for a Hugging Face dataset."""

    def check(self, value: Any) -> str | None:
        ok = isinstance(value, str) and (
            value in EMBEDDED or (value.startswith(HF_PREFIX) and len(value) > len(HF_PREFIX))
        )
        return None if ok else self.describe()

    def describe(self) -> str:
        return f"one of {', '.join(repr(v) for v in EMBEDDED)} or 'hf:<dataset name or local path>'"


class ImageSize(Interval):
    """A multiple of 8 (three or four 2× downsamplings of the UNet) in [8, 256]."""

    def __init__(self) -> None:
        super().__init__(int, 8, 256)

    def check(self, value: Any) -> str | None:
        return super().check(value) or (None if value % 8 == 0 else self.describe())

    def describe(self) -> str:
        return "a multiple of 8 in the range [8, 256]"


class ScenarioName:
    """A shipped scenario's name (`default`, …) or the path of a scenario TOML file that loads."""

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return self.describe()
        try:
            load_scenario(value)
        except ScenarioError as err:
            return f"a scenario that loads ({err})"
        return None

    def describe(self) -> str:
        return "a scenario name from scenarios/ (e.g. 'default') or the path of a scenario .toml file"


class Boolean:
    """true or false."""

    def check(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else self.describe()

    def describe(self) -> str:
        return "a boolean (true or false)"


class AbsolutePath:
    """A directory path that is absolute once `~` is expanded (runs never land in the app)."""

    def check(self, value: Any) -> str | None:
        ok = isinstance(value, str) and Path(value).expanduser().is_absolute()
        return None if ok else self.describe()

    def describe(self) -> str:
        return "an absolute path (or one starting with '~'), outside the app folder"


class Resume:
    """Where a run starts: '' (false) a new run; 'last' (true) the newest unfinished run in
    `output-dir` with the same settings; or the absolute path of a run directory."""

    def check(self, value: Any) -> str | None:
        ok = isinstance(value, bool) or (
            isinstance(value, str) and (value in ("", "last") or Path(value).expanduser().is_absolute())
        )
        return None if ok else self.describe()

    def describe(self) -> str:
        return "false or '' (a new run), true or 'last' (the newest unfinished run in output-dir), or a run directory"

    @staticmethod
    def normalise(value: bool | str) -> str:
        return {True: "last", False: ""}.get(value, value) if isinstance(value, bool) else value


# The settings a run accepts: key (as in pyproject / --run-config) → allowed values.
CONSTRAINTS: dict[str, Any] = {
    "strategy": Options(STRATEGIES),
    "scenario": ScenarioName(),
    "resource-policy": Options(RESOURCE_POLICIES),
    "codec": Options(codec_names()),
    "bits": Interval(int, 1, 32),
    "quantized-training": Boolean(),
    "low-bit-compute": Options(("bf16", "fp32")),
    "num-server-rounds": Interval(int, 1, None),
    "fraction-train": Interval(float, 0, 1, closed="right"),
    "min-available-nodes": Interval(int, 1, None),
    "local-epochs": Interval(int, 1, None),
    "batch-size": Interval(int, 1, None),
    "learning-rate": Interval(float, 0, 1, closed="right"),
    "lr-schedule": Options(LR_SCHEDULES),
    "lr-warmup-steps": Interval(int, 0, None),
    "max-grad-norm": Interval(float, 0, None),
    "dataset": DatasetName(),
    "image-size": ImageSize(),
    "test-fraction": Interval(float, 0, 0.5, closed="right"),
    "partitioner": Options(PARTITIONERS),
    "dirichlet-alpha": Interval(float, 0, None, closed="neither"),
    "model": Options(tuple(PRESETS)),
    "eval-interval": Interval(int, 0, None),
    "eval-samples": Interval(int, 16, None),
    "sample-steps": Interval(int, 1, 1000),
    "sample-eps-scale": Interval(float, 0.5, 2.0),
    "ema-decay": Interval(float, 0, 1, closed="left"),
    "seed": Interval(int, 0, 2**31 - 1),
    "output-dir": AbsolutePath(),
    "device": Options(DEVICES),
    "client-threads": Interval(int, 0, 256),
    "max-update-norm": Interval(float, 0, None),
    "resume": Resume(),
}

# Settings a resumed run may change: they do not alter what is trained (`resume` names the run).
RESUMABLE = ("resume", "output-dir", "device", "client-threads")


@dataclass(frozen=True)
class Settings:
    """Every setting of a run, typed. Field names are the keys with `-` → `_`."""

    strategy: str
    scenario: str
    resource_policy: str
    codec: str
    bits: int
    quantized_training: bool
    low_bit_compute: str
    num_server_rounds: int
    fraction_train: float
    min_available_nodes: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    lr_warmup_steps: int
    max_grad_norm: float
    dataset: str
    image_size: int
    test_fraction: float
    partitioner: str
    dirichlet_alpha: float
    model: str
    eval_interval: int
    eval_samples: int
    sample_steps: int
    sample_eps_scale: float
    ema_decay: float
    seed: int
    output_dir: str
    device: str
    client_threads: int
    max_update_norm: float
    resume: str

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> Settings:
        """Validate `run_config` (Flower's `context.run_config`) and build the settings.

        Raises
        ------
        SettingsError
            For an unknown or missing key, or a value outside what `CONSTRAINTS` allows; the
            message names the key, the allowed values and the value received.
        """
        unknown = sorted(set(run_config) - set(CONSTRAINTS))
        if unknown:
            raise SettingsError(f"Unknown setting {unknown[0]!r}; known settings: {', '.join(CONSTRAINTS)}.")
        values = {}
        for key, constraint in CONSTRAINTS.items():
            if key not in run_config:
                raise SettingsError(f"The {key!r} setting is missing; it must be {constraint.describe()}.")
            value = run_config[key]
            problem = constraint.check(value)
            if problem:
                raise SettingsError(f"The {key!r} setting must be {problem}. Got {value!r} instead.")
            if isinstance(constraint, Interval) and constraint.kind is float:
                value = float(value)
            if isinstance(constraint, Resume):
                value = constraint.normalise(value)
            values[key.replace("-", "_")] = value
        try:  # the codec decides which bit-widths it can encode
            get_codec(values["codec"], bits=values["bits"])
        except ValueError as err:
            raise SettingsError(f"The 'bits' setting does not fit codec {values['codec']!r}: {err}") from None
        _cross_check(values)
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The settings as run-config keys and values (what `config.json` holds)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def resources(self) -> str:
        """The resource policy in force: `auto` is race-to-idle for fedavg, optimal otherwise."""
        if self.resource_policy != "auto":
            return self.resource_policy
        return "race-to-idle" if self.strategy == "fedavg" else "optimal"

    def compute_dtype(self, train_bits: int) -> torch.dtype:
        """What a device training with its weights at `train_bits` computes in: bfloat16 below
        16 bits unless `low-bit-compute = 'fp32'`; float32 in full precision."""
        low_bits = train_bits < FULL_PRECISION_BITS and self.low_bit_compute == "bf16"
        return torch.bfloat16 if low_bits else torch.float32

    def load_scenario(self) -> Scenario:
        return load_scenario(self.scenario)

    @property
    def data(self) -> DataSpec:
        return DataSpec(
            dataset=self.dataset,
            image_size=self.image_size,
            test_fraction=self.test_fraction,
            partitioner=self.partitioner,
            alpha=self.dirichlet_alpha,
            seed=self.seed,
        )


def _cross_check(values: dict[str, Any]) -> None:
    """Settings that are fine alone but not together."""
    if values["resource_policy"] == "race-to-idle" and values["strategy"] != "fedavg":
        raise SettingsError(
            f"The 'resource-policy' setting 'race-to-idle' is fedavg's; strategy {values['strategy']!r} "
            "always optimises clock, power and bandwidth: use 'auto' or 'optimal'."
        )
    if values["strategy"] == "ondemand" and values["codec"] != "uniform":
        raise SettingsError(
            f"The 'codec' setting must be 'uniform' with strategy 'ondemand' (its error budget prices the "
            f"uniform codec's error); got {values['codec']!r}."
        )


def default_run_config(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The defaults of `[tool.flwr.app.config]` in the app's pyproject.toml."""
    with open(pyproject, "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def load_settings(run_config: dict[str, Any]) -> Settings:
    """Settings from Flower's run config.

    `flwr run` passes every key (pyproject defaults merged with `--run-config`), and that
    is validated as it is. Flower's in-process `run_simulation` passes none: then the
    defaults of this package's pyproject.toml are used.
    """
    return Settings.from_run_config(dict(run_config) if run_config else default_run_config())

