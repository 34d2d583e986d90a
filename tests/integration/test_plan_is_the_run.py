"""`qfd plan` plans exactly what round 1 of a run with the same settings plans:
one planner for both.

For each strategy a real 1-round Flower simulation of `smoke` (3 devices, all sampled)
writes devices.csv; `qfd plan smoke --run-config "<the same settings>" --json` must give
every device the same bits, clock, power and bandwidth, found by its partition id, and
leave out the same devices. `fedavg` runs under a 60 s deadline that the iot device
cannot meet in fp32 even at f_max (68.4 s), so both its policies leave it out.

And `fedavg`, trained under one resource policy and priced under the other
(`runs.reprice`), is the run of the other: the same final model, and the same ledger,
the left-out device included.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from qfd_app.runs.cli import app
from qfd_app.runs.launch import flwr_run, superlink
from qfd_app.runs.ledger import read_csv
from qfd_app.runs.reprice import reprice

pytestmark = pytest.mark.slow

SETTINGS = (
    "fraction-train=1.0 num-server-rounds=1 local-epochs=1 "
    "eval-interval=0 eval-samples=16 final-eval-samples=0"
)
FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"
STRATEGIES = {
    "ondemand": "strategy='ondemand'",
    "fixed4": "strategy='fixed' codec='uniform' bits=4",
    "fedavg-race": "strategy='fedavg' resource-policy='race-to-idle'",
    "fedavg-optimal": "strategy='fedavg' resource-policy='optimal'",
}
TIGHT = 'extends = "smoke"\n\n[network]\ndeadline_s = 60.0\n'
PLAN_COLUMNS = ("bits", "cpu_hz", "power_w", "bandwidth_hz")


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Each strategy's scenario: `smoke`, or for fedavg `TIGHT` in a file."""
    tight = tmp_path_factory.mktemp("scenario") / "tight.toml"
    tight.write_text(TIGHT)
    return {name: str(tight) if "fedavg" in name else "smoke" for name in STRATEGIES}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, scenarios):
    """The run directory of a 1-round run of each strategy, on one private
    SuperLink."""
    root = tmp_path_factory.mktemp("plan-run")
    out = {}
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:
        for name, strategy in STRATEGIES.items():
            folder = root / name
            settings = f"{SETTINGS} {strategy} scenario='{scenarios[name]}'"
            done = flwr_run(env, f"{settings} output-dir='{folder}'", FEDERATION)
            assert done.returncode == 0, done.stdout[-3000:]
            (out[name],) = folder.iterdir()
    return out


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_device_gets_in_the_run_what_the_plan_gives_it(runs, scenarios, name):
    result = CliRunner().invoke(
        app,
        [
            "plan",
            scenarios[name],
            "--json",
            "--run-config",
            f"{SETTINGS} {STRATEGIES[name]}",
        ],
    )
    assert result.exit_code == 0, result.output
    planned = {d["partition_id"]: d for d in json.loads(result.output)["devices"]}
    booked = {
        int(row["partition_id"]): row for row in read_csv(runs[name] / "devices.csv")
    }
    assert sorted(planned) == sorted(booked) == [0, 1, 2]
    compared = 0
    for partition, row in booked.items():
        want = planned[partition]
        assert row["status"] == {"scheduled": "ok"}.get(want["status"], "excluded")
        assert row["reason"] == want["reason"]
        # D_n is booked for every device, the left-out included
        assert int(row["num_examples"]) == want["samples"] > 0
        for column in PLAN_COLUMNS:
            assert float(row[column]) == want[column], (partition, column)
            compared += 1
    assert compared == 3 * len(PLAN_COLUMNS)
    statuses = sorted(row["status"] for row in booked.values())
    assert statuses == (["excluded", "ok", "ok"] if "fedavg" in name else ["ok"] * 3)


# what pricing may not change, and what it must price as the other policy's run did
KEPT = (
    "round",
    "partition_id",
    "status",
    "reason",
    "num_examples",
    "bits",
    "bytes_up",
    "bytes_down",
)
PRICED = (
    *PLAN_COLUMNS[1:],
    "compute_s",
    "upload_s",
    "download_s",
    "energy_compute_j",
    "energy_upload_j",
    "energy_download_j",
)


@pytest.mark.parametrize(
    "trained, policy, other",
    [
        ("fedavg-optimal", "race-to-idle", "fedavg-race"),
        ("fedavg-race", "optimal", "fedavg-optimal"),
    ],
)
def test_fedavg_priced_under_the_other_policy_is_the_other_run(
    runs, tmp_path, trained, policy, other
):
    weights = "final/unet/diffusion_pytorch_model.safetensors"
    assert (runs[trained] / weights).read_bytes() == (
        runs[other] / weights
    ).read_bytes()
    priced = reprice(runs[trained], tmp_path, policy)
    # booked in the order the replies came: match rows by round and partition
    got, want = (
        sorted(read_csv(run / "devices.csv"), key=lambda r: r["partition_id"])
        for run in (priced, runs[other])
    )
    assert len(got) == len(want) == 3
    assert [row["status"] for row in got].count("excluded") == 1
    for row, real in zip(got, want, strict=True):
        assert [row[k] for k in KEPT] == [real[k] for k in KEPT]
        np.testing.assert_allclose(
            [float(row[k]) for k in PRICED], [float(real[k]) for k in PRICED], rtol=1e-9
        )
    summary = json.loads((priced / "summary.json").read_text())
    real_summary = json.loads((runs[other] / "summary.json").read_text())
    assert summary["resource_policy"] == real_summary["resource_policy"] == policy
    assert summary["energy_j"] == pytest.approx(real_summary["energy_j"], rel=1e-9)
    # the energy did change: the policies do not plan alike
    trained_energy = json.loads((runs[trained] / "summary.json").read_text())
    assert abs(summary["energy_j"] / trained_energy["energy_j"] - 1) > 0.01
