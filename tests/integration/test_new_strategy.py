"""Adding a strategy is adding one file: a new module in a copy of the app is
planned by `qfd plan`, accepted by the settings and run by Flower for a round — no
other file touched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qfd_app.runs.launch import flwr_run, superlink
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The worked example of docs/strategies.md, as a user would write it.
HALFWAY = '''
"""`halfway`: every device trains and uploads at the middle of its demand, with the \
uniform codec."""

from qfd_app.strategies.registry import Strategy


class Halfway(Strategy):
    name = "halfway"
    summary = "every device at the middle of its demand [b_min, b_max], uniform codec"
    follows_demand = True
    codecs = ("uniform",)

    def widths(self):
        return tuple(range(1, 17))

    def candidate_bits(self, bits_min, bits_max):
        middle = [(lo + min(hi, 16)) // 2 for lo, hi in zip(bits_min, bits_max)]
        return super().candidate_bits(middle, middle)

    def codec_for(self, bits):
        return "uniform"
'''
SETTINGS = (
    "scenario='smoke' fraction-train=1.0 num-server-rounds=1 local-epochs=1 "
    "eval-interval=0 eval-samples=16 final-eval-samples=0"
)


@pytest.fixture(scope="module")
def app_copy(tmp_path_factory):
    """A copy of the app with one new file, `qfd_app/strategies/halfway.py`."""
    copy = tmp_path_factory.mktemp("app") / "qfd"
    shutil.copytree(
        ROOT / "qfd_app", copy / "qfd_app", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "scenarios", copy / "scenarios")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    (copy / "qfd_app" / "strategies" / "halfway.py").write_text(HALFWAY)
    return copy


def test_the_new_strategy_is_planned_by_qfd_plan(app_copy):
    env = {**os.environ, "PYTHONPATH": str(app_copy)}
    command = "import sys; from qfd_app.runs.cli import app; app(prog_name='qfd')"
    args = [
        sys.executable,
        "-c",
        command,
        "plan",
        "smoke",
        "--json",
        "--run-config",
        f"{SETTINGS} strategy='halfway'",
    ]
    done = subprocess.run(
        args, env=env, cwd=app_copy, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout)
    assert record["strategy"] == "halfway" and len(record["devices"]) == 3
    for device in record["devices"]:
        assert device["bits"] == (device["bits_min"] + min(device["bits_max"], 16)) // 2


def test_the_new_strategy_runs_a_round_in_a_flower_simulation(
    app_copy, tmp_path, monkeypatch
):
    out = tmp_path / "runs"
    # Ray puts its driver's working directory first on its workers' path: from the
    # checkout the ClientApps would import the checkout's qfd_app, not the copy's
    monkeypatch.chdir(app_copy)
    with superlink(
        tmp_path / "flwr-home",
        PYTHONPATH=str(app_copy),
        QFD_CACHE_DIR=str(tmp_path / "cache"),
    ) as env:
        done = flwr_run(
            env,
            f"{SETTINGS} strategy='halfway' output-dir='{out}'",
            "num-supernodes=3 client-resources-num-cpus=1",
            app=app_copy,
        )
    assert done.returncode == 0, done.stdout[-3000:]
    (run_dir,) = out.iterdir()
    rows = read_csv(run_dir / "devices.csv")
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "ok", row
        assert (
            int(row["bits"])
            == (int(row["bits_min"]) + min(int(row["bits_max"]), 16)) // 2
        )
        assert int(row["bytes_up"]) > 0
    assert json.loads((run_dir / "summary.json").read_text())["strategy"] == "halfway"
