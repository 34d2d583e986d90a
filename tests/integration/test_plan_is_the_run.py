"""`qfd plan` plans exactly what round 1 of a run with the same settings plans:
one planner for both.

For each strategy a real 1-round Flower simulation of `smoke` (3 devices, all sampled)
writes devices.csv; `qfd plan smoke --run-config "<the same settings>" --json` must give
every device the same bits, clock, power and bandwidth, found by its partition id.
"""

import json

import pytest
from typer.testing import CliRunner

from qfd_app.runs.cli import app
from qfd_app.runs.launch import flwr_run, superlink
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow

SETTINGS = (
    "scenario='smoke' fraction-train=1.0 num-server-rounds=1 local-epochs=1 "
    "eval-interval=0 eval-samples=16 final-eval-samples=0"
)
FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"
STRATEGIES = {
    "ondemand": "strategy='ondemand'",
    "fixed4": "strategy='fixed' codec='uniform' bits=4",
    "fedavg-race": "strategy='fedavg' resource-policy='race-to-idle'",
    "fedavg-optimal": "strategy='fedavg' resource-policy='optimal'",
}
PLAN_COLUMNS = ("bits", "cpu_hz", "power_w", "bandwidth_hz")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """devices.csv of a 1-round run of each strategy, on one private SuperLink."""
    root = tmp_path_factory.mktemp("plan-run")
    out = {}
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:
        for name, strategy in STRATEGIES.items():
            folder = root / name
            done = flwr_run(
                env, f"{SETTINGS} {strategy} output-dir='{folder}'", FEDERATION
            )
            assert done.returncode == 0, done.stdout[-3000:]
            (run_dir,) = folder.iterdir()
            out[name] = read_csv(run_dir / "devices.csv")
    return out


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_device_gets_in_the_run_what_the_plan_gives_it(runs, name):
    result = CliRunner().invoke(
        app,
        ["plan", "smoke", "--json", "--run-config", f"{SETTINGS} {STRATEGIES[name]}"],
    )
    assert result.exit_code == 0, result.output
    planned = {d["partition_id"]: d for d in json.loads(result.output)["devices"]}
    booked = {int(row["partition_id"]): row for row in runs[name]}
    assert sorted(planned) == sorted(booked) == [0, 1, 2]
    compared = 0
    for partition, row in booked.items():
        assert row["status"] == "ok", row
        for column in PLAN_COLUMNS:
            assert float(row[column]) == planned[partition][column], (partition, column)
            compared += 1
    assert compared == 3 * len(PLAN_COLUMNS)
