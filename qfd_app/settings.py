"""The run settings: one frozen, typed object built from Flower's run
config and validated once.

The defaults live in one place, `[tool.flwr.app.config]` of pyproject.toml, which Flower
merges with `--run-config` overrides. `Settings.from_run_config` checks every key
against the table `CONSTRAINTS` below and fails before any work with a message that
names the key as the user wrote it, what is allowed and what was received.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qfd_app.diffusion.catalog import (
    EMBEDDED,
    HF_PREFIX,
    LR_SCHEDULES,
    PARTITIONERS,
    PRESETS,
)
from qfd_app.edge import Scenario, ScenarioError, load_scenario
from qfd_app.quant.registry import codec_bits, codec_names
from qfd_app.strategies.planner import DOWNLINKS
from qfd_app.strategies.registry import RESOURCE_POLICIES as STRATEGY_RESOURCE_POLICIES
from qfd_app.strategies.registry import (
    Strategy,
    get_strategy,
    resource_policy,
    strategy_names,
)
from qfd_app.validation import (
    Boolean,
    Constraint,
    Interval,
    Options,
    check_mapping,
    refusal,
)

if TYPE_CHECKING:
    from qfd_app.diffusion.data import DataSpec

RESOURCE_POLICIES = ("auto", *STRATEGY_RESOURCE_POLICIES)
DEVICES = ("auto", "cpu", "cuda")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class SettingsError(ValueError):
    """A run-config value that is missing, of the wrong type or out of range."""


class DatasetName(Constraint):
    """An embedded dataset, or `hf:<name or local path>` for a Hugging Face dataset."""

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, str) and (
            value in EMBEDDED
            or (value.startswith(HF_PREFIX) and len(value) > len(HF_PREFIX))
        )
        return None if ok else self.describe()

    def describe(self) -> str:
        return (
            f"one of {', '.join(repr(v) for v in EMBEDDED)} or 'hf:<dataset "
            "name or local path>'"
        )


@dataclass(frozen=True)
class ImageSize(Interval):
    """A multiple of 8 (three or four 2× downsamplings of the UNet) in [8, 256]."""

    kind: type = int
    low: float | None = 8
    high: float | None = 256

    def problem(self, value: Any) -> str | None:
        return self.describe() if super().problem(value) or value % 8 else None

    def describe(self) -> str:
        return "a multiple of 8 in the range [8, 256]"


class ScenarioName(Constraint):
    """A shipped scenario's name (`default`, …) or the path of a scenario TOML
    file that loads, whose every device class demands at least one bit-width
    that a codec sends."""

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return self.describe()
        try:
            # every class can be sent some width
            load_scenario(value).check_widths(codec_bits())
        except ScenarioError as err:
            return f"a scenario that loads ({str(err).rstrip('.')})"
        return None

    def describe(self) -> str:
        return (
            "a scenario name from scenarios/ (e.g. 'default') or the path of a "
            "scenario .toml file"
        )


class AbsolutePath(Constraint):
    """A directory path that is absolute once `~` is expanded (runs never
    land in the app)."""

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, str) and Path(value).expanduser().is_absolute()
        return None if ok else self.describe()

    def describe(self) -> str:
        return "an absolute path (or one starting with '~'), outside the app folder"


class Resume(Constraint):
    """Where a run starts: '' (false) a new run; 'last' (true) the newest unfinished run
    in `output-dir` with the same settings; or the absolute path of a run directory."""

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, bool) or (
            isinstance(value, str)
            and (value in ("", "last") or Path(value).expanduser().is_absolute())
        )
        return None if ok else self.describe()

    def describe(self) -> str:
        return (
            "false or '' (a new run), true or 'last' (the newest unfinished run in "
            "output-dir), or a run directory"
        )

    def convert(self, value: bool | str) -> str:
        return (
            {True: "last", False: ""}.get(value, value)
            if isinstance(value, bool)
            else value
        )


# The settings a run accepts: key (as in pyproject / --run-config) → allowed values.
CONSTRAINTS: dict[str, Constraint] = {
    "strategy": Options(strategy_names()),
    "scenario": ScenarioName(),
    "resource-policy": Options(RESOURCE_POLICIES),
    "codec": Options(codec_names()),
    "bits": Interval(int, 1, 32),
    "quantized-training": Boolean(),
    "low-bit-compute": Options(("bf16", "fp32")),
    "downlink": Options(DOWNLINKS),
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
    "final-eval-samples": Interval(int, 0, None),
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

# Settings a resumed run may change: they do not alter what is trained
# (`resume` names the run).
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
    downlink: str
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
    final_eval_samples: int
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
            For an unknown or missing key, or a value outside what `CONSTRAINTS` allows;
            the message names the key, the allowed values and the value received.
        """
        checked = check_mapping(
            run_config,
            CONSTRAINTS,
            label=lambda k: f"The {k!r} setting",
            error=SettingsError,
            what="setting",
        )
        values = {key.replace("-", "_"): value for key, value in checked.items()}
        _cross_check(values)
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The settings as run-config keys and values (what `config.json` holds)."""
        return {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
        }

    @property
    def resources(self) -> str:
        """The resource policy in force: `auto` is the strategy's first
        (fedavg: race-to-idle)."""
        return resource_policy(get_strategy(self.strategy), self.resource_policy)

    @property
    def label(self) -> str:
        """The run's name in TensorBoard: strategy, options and seed, e.g.
        `fixed:4:fp32-training-seed1`."""
        training = "" if self.quantized_training else ":fp32-training"
        return f"{self.rules().label()}{training}-seed{self.seed}"

    @property
    def final_eval_draws(self) -> int:
        """Draws of `eval-samples` images in the evaluation after the last round."""
        return self.final_eval_samples // self.eval_samples

    def rules(self) -> Strategy:
        """The run's strategy (its rules, from the registry) with the run's codec,
        bits and resources."""
        return get_strategy(self.strategy)(
            codec=self.codec, bits=self.bits, resource_policy=self.resources
        )

    def load_scenario(self) -> Scenario:
        return load_scenario(self.scenario)

    @property
    def data(self) -> DataSpec:
        # torch and datasets: only when data is wanted
        from qfd_app.diffusion.data import DataSpec

        return DataSpec(
            dataset=self.dataset,
            image_size=self.image_size,
            test_fraction=self.test_fraction,
            partitioner=self.partitioner,
            alpha=self.dirichlet_alpha,
            seed=self.seed,
        )


def _cross_check(values: dict[str, Any]) -> None:
    """Settings that are fine alone but not together: the codec sends `bits`,
    and the strategy (its declaration in the registry) takes the resource
    policy and the codec."""
    codec, bits, strategy = (
        values["codec"],
        values["bits"],
        get_strategy(values["strategy"]),
    )
    if bits not in codec_bits(codec):
        widths = ", ".join(map(str, codec_bits(codec)))
        raise SettingsError(
            refusal(
                f"The 'bits' setting with codec {codec!r}", f"one of {widths}", bits
            )
        )
    final, per_draw = values["final_eval_samples"], values["eval_samples"]
    if final % per_draw:
        raise SettingsError(
            refusal(
                f"The 'final-eval-samples' setting with eval-samples = {per_draw}",
                f"0 or a multiple of {per_draw} (it is drawn {per_draw} at a time)",
                final,
            )
        )
    policies = ("auto", *strategy.resource_policies)
    if values["resource_policy"] not in policies:
        allowed = Options(policies).describe()
        raise SettingsError(
            refusal(
                f"The 'resource-policy' setting with strategy {strategy.name!r}",
                allowed,
                values["resource_policy"],
            )
        )
    if strategy.codecs is not None and codec not in strategy.codecs:
        raise SettingsError(
            refusal(
                f"The 'codec' setting with strategy {strategy.name!r}",
                Options(strategy.codecs).describe(),
                codec,
            )
        )


def default_run_config(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The defaults of `[tool.flwr.app.config]` in the app's pyproject.toml."""
    with open(pyproject, "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def run_dir_settings(run_dir: Path, **changes: Any) -> Settings:
    """The settings a run directory was trained with (its config.json); settings added
    since take their defaults, `changes` (run-config keys) replace saved values."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    return Settings.from_run_config({**default_run_config(), **saved, **changes})


def load_settings(run_config: dict[str, Any]) -> Settings:
    """Settings from Flower's run config.

    `flwr run` passes every key (pyproject defaults merged with `--run-config`), and
    that is validated as it is. Flower's in-process `run_simulation` passes none: then
    the defaults of this package's pyproject.toml are used.
    """
    return Settings.from_run_config(
        dict(run_config) if run_config else default_run_config()
    )
