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
    "downlink_bandwidth_hz",
    "bs_power_w",
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
    "receive_power_w",
    "download_rate_bps",
    "candidates",
}
DEVICE_OUTPUTS = {
    "status",
    "reason",
    "bits",
    "cpu_hz",
    "power_w",
    "bandwidth_hz",
    "download_s",
    "compute_s",
    "upload_s",
    "energy_download_j",
    "energy_compute_j",
    "energy_upload_j",
    "energy_j",
    "download_bits",
}
TOTALS = {
    "energy_j",
    "energy_download_j",
    "download_bits",
    "payload_bits",
    "error",
    "error_budget_abs",
    "solve_s",
}


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
        "MB down",
        "down s",
        "compute s",
        "upload s",
        "E_rx J",
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
        assert {
            "bits",
            "work_cycles",
            "payload_bits",
            "error",
            "download_bits",
        } == device["candidates"][0].keys()


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


@pytest.mark.parametrize("downlink", ["fp32", "fp16", "assigned", "delta"])
def test_downlink_shorthand_plans_each_scheme(downlink):
    result = plan("smoke", "--json", *ALL, "--downlink", downlink)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["downlink"] == downlink
    for d in record["devices"]:
        sizes = [c["download_bits"] for c in d["candidates"]]
        if downlink == "assigned":  # the update's codec at each bit-width
            assert sizes == [c["payload_bits"] for c in d["candidates"]]
        else:  # fp32, fp16, and delta in round 1 (every device's first download)
            assert len(set(sizes)) == 1
        if d["status"] == "scheduled":
            rate = d["download_rate_bps"]
            assert d["download_s"] == pytest.approx(d["download_bits"] / rate)
            assert d["energy_download_j"] == pytest.approx(
                d["receive_power_w"] * d["download_s"]
            )


def test_a_bad_downlink_is_one_line_naming_the_setting():
    result = plan("smoke", "--downlink", "int8")
    assert result.exit_code == 2
    assert "downlink" in result.output and "int8" in result.output
