"""Settings: every key validated, every rejection names the key,
defaults in one place."""

import dataclasses

import pytest
import torch

from qfd_app.diffusion.ddpm import compute_dtype
from qfd_app.settings import (
    CONSTRAINTS,
    AbsolutePath,
    DatasetName,
    ImageSize,
    Resume,
    ScenarioName,
    Settings,
    SettingsError,
    default_run_config,
    load_settings,
)
from qfd_app.validation import Boolean, Constraint, Interval, Options
from tests.imports import modules_loaded


def with_overrides(overrides):
    return Settings.from_run_config({**default_run_config(), **overrides})


def invalid_values(constraint):
    """Values each constraint must reject (one per way of being wrong)."""
    if isinstance(constraint, ImageSize):
        return [12, 4, 512, "16", 16.0]
    if isinstance(constraint, Interval):
        bad = ["1", None, True, float("nan")]
        if constraint.kind is int:
            bad.append(1.5)
        if constraint.low is not None:
            bad.append(
                constraint.low - 1 if constraint.kind is int else constraint.low - 1e-3
            )
            if constraint.closed in ("right", "neither"):
                bad.append(constraint.low)
        if constraint.high is not None:
            bad.append(constraint.high + 1)
        return bad
    if isinstance(constraint, Options):
        return ["not-a-choice", 3, constraint.values[0].upper() + "X"]
    if isinstance(constraint, DatasetName):
        return ["mnist", "hf:", 7, "cifar10"]
    if isinstance(constraint, Boolean):
        return ["true", 1, None]
    if isinstance(constraint, AbsolutePath):
        return ["relative/runs", "", 3]
    if isinstance(constraint, ScenarioName):
        return ["nowhere", "/no/such/file.toml", "", 3]
    if isinstance(constraint, Resume):
        return ["relative/run", "latest", 1, None]
    raise AssertionError(f"no invalid values known for {constraint!r}")


def test_constraints_cover_every_setting_and_every_pyproject_key():
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(Settings)}
    assert set(CONSTRAINTS) == fields == set(default_run_config())
    assert all(isinstance(c, Constraint) for c in CONSTRAINTS.values())


def test_pyproject_defaults_are_valid():
    settings = load_settings({})
    assert settings.to_run_config() == {
        k: (
            float(v)
            if isinstance(CONSTRAINTS[k], Interval) and CONSTRAINTS[k].kind is float
            else v
        )
        for k, v in default_run_config().items()
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (key, value)
        for key, constraint in CONSTRAINTS.items()
        for value in invalid_values(constraint)
    ],
)
def test_each_invalid_value_is_rejected_naming_the_key_and_value(key, value):
    allowed = CONSTRAINTS[key].problem(value)
    assert allowed
    with pytest.raises(SettingsError) as info:
        with_overrides({key: value})
    assert str(info.value) == f"The '{key}' setting must be {allowed}; got {value!r}."


def test_a_refusal_reads_in_the_one_form():
    with pytest.raises(SettingsError) as info:
        with_overrides({"bits": 40})
    assert (
        str(info.value)
        == "The 'bits' setting must be an int in the range [1, 32]; got 40."
    )


def test_unknown_key_is_rejected_with_the_known_ones():
    with pytest.raises(
        SettingsError, match="Unknown setting 'num-rounds'.*num-server-rounds"
    ):
        with_overrides({"num-rounds": 3})


def test_missing_key_is_named():
    config = default_run_config()
    del config["batch-size"]
    with pytest.raises(SettingsError) as info:
        Settings.from_run_config(config)
    assert str(info.value) == (
        "The 'batch-size' setting is missing; it must be an int in the range [1, inf)."
    )


def test_int_is_accepted_where_a_float_is_expected():
    assert with_overrides({"fraction-train": 1}).fraction_train == 1.0
    assert isinstance(with_overrides({"learning-rate": 1}).learning_rate, float)


def test_hf_dataset_and_home_relative_output_dir_are_accepted():
    settings = with_overrides({"dataset": "hf:ylecun/mnist", "output-dir": "~/runs"})
    assert settings.data.dataset == "hf:ylecun/mnist"


def test_flower_run_config_is_validated_as_given_not_merged_with_files():
    config = default_run_config()
    del config["seed"]
    with pytest.raises(SettingsError, match="'seed' setting is missing"):
        load_settings(config)


def test_a_broken_scenario_file_is_refused_with_the_scenario_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('extends = "default"\n[network]\ndeadline_s = -1.0\n')
    with pytest.raises(
        SettingsError,
        match="'scenario' setting must be a scenario that loads.*deadline_s",
    ):
        with_overrides({"scenario": str(path)})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategy": "ondemand", "resource-policy": "race-to-idle"},
            "The 'resource-policy' setting with strategy 'ondemand' must be one of "
            "'auto', 'optimal'; got 'race-to-idle'",
        ),
        (
            {"strategy": "fixed", "resource-policy": "race-to-idle"},
            "The 'resource-policy' setting with strategy 'fixed' must be one of "
            "'auto', 'optimal'; got 'race-to-idle'",
        ),
        (
            {"strategy": "ondemand", "codec": "bnb-nf4", "bits": 4},
            "The 'codec' setting with strategy 'ondemand' must be one of "
            "'uniform'; got 'bnb-nf4'",
        ),
        (
            {"strategy": "fixed", "codec": "fp16", "bits": 8},
            "The 'bits' setting with codec 'fp16' must be one of 16; got 8",
        ),
    ],
)
def test_settings_that_do_not_fit_together_are_refused_naming_the_key(
    overrides, message
):
    with pytest.raises(SettingsError, match=message):
        with_overrides(overrides)


def test_devices_compute_in_bf16_below_16_bits_unless_told_fp32():
    bf16, fp32 = (
        with_overrides({}).low_bit_compute,
        with_overrides({"low-bit-compute": "fp32"}).low_bit_compute,
    )
    assert bf16 == "bf16"
    assert [compute_dtype(b, bf16) for b in (2, 4, 8, 15, 16, 32)] == [
        torch.bfloat16
    ] * 4 + [torch.float32] * 2
    assert {compute_dtype(b, fp32) for b in (2, 4, 8, 15, 16, 32)} == {torch.float32}


def test_auto_resources_race_to_idle_for_fedavg_only():
    assert with_overrides({"strategy": "fedavg"}).resources == "race-to-idle"
    assert (
        with_overrides({"strategy": "fedavg", "resource-policy": "optimal"}).resources
        == "optimal"
    )
    assert with_overrides({"strategy": "ondemand"}).resources == "optimal"


@pytest.mark.parametrize(
    "value, expected",
    [(True, "last"), (False, ""), ("last", "last"), ("", ""), ("/r/x", "/r/x")],
)
def test_resume_true_means_the_last_unfinished_run(value, expected):
    assert with_overrides({"resume": value}).resume == expected


def test_validating_a_run_config_imports_neither_torch_nor_flower_nor_the_model():
    code = (
        "from qfd_app.settings import default_run_config, Settings\n"
        "Settings.from_run_config(default_run_config())"
    )
    heavy = ("torch", "flwr", "diffusers", "qfd_app.diffusion.ddpm")
    assert modules_loaded(code, (*heavy, "qfd_app.diffusion.data")) == []
