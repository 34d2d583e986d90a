"""`qfd plan`: the table, the JSON, scaling, each strategy, and one-line errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from qfd_app.runs.cli import app

torch.set_num_threads(1)
runner = CliRunner()

NETWORK_KEYS = {
    "bandwidth_hz",
    "noise_w_per_hz",
    "deadline_s",
    "error_budget",
    "bandwidth_policy",
}
DEVICE_INPUTS = {
    "bits_min",
    "bits_max",
    "cpu_hz_min",
    "cpu_hz_max",
    "power_w_max",
    "kappa",
    "gain",
    "weight",
    "candidates",
}
DEVICE_OUTPUTS = {
    "status",
    "reason",
    "bits",
    "cpu_hz",
    "power_w",
    "bandwidth_hz",
    "compute_s",
    "upload_s",
    "energy_compute_j",
    "energy_upload_j",
    "energy_j",
}
TOTALS = {"energy_j", "payload_bits", "error", "error_budget_abs", "solve_s"}


def plan(*args):
    return runner.invoke(app, ["plan", *args])


ALL = (
    "--run-config",
    "fraction-train=1.0",
)  # every device sampled, as the scenario lists them


def test_the_table_has_a_row_per_device_and_totals():
    result = plan("smoke", *ALL)
    assert result.exit_code == 0, result.output
    out = result.output
    for column in (
        "class",
        "dist m",
        "gain dB",
        "bits",
        "CPU GHz",
        "P dBm",
        "B kHz",
        "compute s",
        "upload s",
        "energy J",
        "status",
    ):
        assert column in out
    assert (
        out.count("  scheduled") == 3
        and "3 scheduled, 0 excluded" in out
        and "budget" in out
    )


def test_json_holds_every_input_and_output_the_solver_used():
    result = plan("smoke", "--json", *ALL)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert NETWORK_KEYS <= record["network"].keys()
    assert TOTALS <= record["totals"].keys()
    for device in record["devices"]:
        assert DEVICE_INPUTS | DEVICE_OUTPUTS <= device.keys()
        assert [c["bits"] for c in device["candidates"]] == list(
            range(device["bits_min"], device["bits_max"] + 1)
        )
        assert {"bits", "work_cycles", "payload_bits", "error"} == device["candidates"][
            0
        ].keys()


def test_devices_replicates_the_scenario():
    result = plan("default", "--devices", "25", "--json", *ALL)
    record = json.loads(result.output)
    # as in a run with 25 SuperNodes: the classes repeat, the band is the scenario's
    assert len(record["devices"]) == 25 and record["network"]["bandwidth_hz"] == 10e6
    assert [d["class"] for d in record["devices"][:11]] == ["iot"] * 4 + [
        "phone"
    ] * 4 + ["edge"] * 2 + ["iot"]


@pytest.mark.parametrize(
    ("args", "bits"),
    [
        (["--strategy", "ondemand"], None),
        (["--strategy", "fixed", "--bits", "8"], {8}),
        (["--strategy", "fedavg"], {32}),
        (["--strategy", "fedavg", "--resource-policy", "optimal"], {32}),
        (["--bandwidth-policy", "optimal", "--round", "2", "--seed", "5"], None),
    ],
)
def test_each_strategy_plans_a_round(args, bits):
    result = plan("default", "--json", *ALL, *args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    used = {d["bits"] for d in record["devices"] if d["status"] == "scheduled"}
    if bits is not None:
        assert used == bits
    else:
        assert all(
            d["bits_min"] <= d["bits"] <= d["bits_max"]
            for d in record["devices"]
            if d["status"] == "scheduled"
        )
    assert record["totals"]["energy_j"] > 0


def test_a_bad_scenario_fails_with_the_key_named_and_nothing_runs(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('extends = "default"\n[classes.iot]\npower_w_max = -0.1\n')
    result = plan(str(path))
    assert result.exit_code != 0
    assert "classes.iot.power_w_max" in result.output and "-0.1" in result.output
    assert "Traceback" not in result.output and "total energy" not in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nope"], "Unknown scenario 'nope'"),
        (
            ["smoke", "--strategy", "greedy"],
            "The 'strategy' setting must be one of 'fedavg', 'fixed', 'ondemand'; got",
        ),
        (
            ["smoke", "--strategy", "fixed", "--bits", "20"],
            "The 'bits' setting with codec 'uniform' must be one of",
        ),
        (
            ["smoke", "--run-config", "local-epochs=0"],
            "The 'local-epochs' setting must be an int in the range [1, inf)",
        ),
        (
            ["smoke", "--bandwidth-policy", "fair"],
            "--bandwidth-policy must be one of 'equal', 'optimal'; got 'fair'",
        ),
        (["smoke", "--devices", "0"], "--devices"),
    ],
)
def test_unknown_scenario_and_bad_options_fail_cleanly(args, words):
    result = plan(*args)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    )
