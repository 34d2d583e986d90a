"""Faulty devices in a real Flower simulation: each failure booked with its
reason, the run goes on."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from qfd_app.runs.launch import APP_DIR, flwr_run, superlink
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow

HERE = __import__("pathlib").Path(__file__).parent


def faulty_app(root):
    """This app with the ClientApp and the ServerApp swapped for
    `faulty/faulty_client.py` and `faulty/faulty_server.py` (same library)."""
    app = root / "app"
    shutil.copytree(
        APP_DIR / "qfd_app",
        app / "qfd_app",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(APP_DIR / "scenarios", app / "scenarios")
    for name in ("faulty_client.py", "faulty_server.py"):
        shutil.copy(HERE / "faulty" / name, app / name)
    shutil.copy(APP_DIR / "README.md", app / "README.md")
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        'clientapp = "qfd_app.client_app:app"', 'clientapp = "faulty_client:app"'
    ).replace('serverapp = "qfd_app.server_app:app"', 'serverapp = "faulty_server:app"')
    pyproject = re.sub(
        r"fab-include = \[",
        'fab-include = ["faulty_client.py", "faulty_server.py", ',
        pyproject,
    )
    (app / "pyproject.toml").write_text(pyproject)
    return app


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    config = (
        "num-server-rounds=3 local-epochs=1 fraction-train=1.0 eval-interval=0 "
        "eval-samples=64 final-eval-samples=0 sample-steps=5 downlink='assigned' "
        f"output-dir='{root / 'out'}'"
    )
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:
        done = flwr_run(
            env,
            config,
            "num-supernodes=7 client-resources-num-cpus=1",
            app=faulty_app(root),
        )
    runs = list((root / "out").glob("*/summary.json"))
    assert len(runs) == 1, done.stdout[-5000:]
    return runs[0].parent


def rows_of(run_dir, partition):
    rows = read_csv(run_dir / "devices.csv")
    return {int(r["round"]): r for r in rows if int(r["partition_id"]) == partition}


def test_a_device_that_raises_fails_that_round_and_trained_before(faulty_run):
    rows = rows_of(faulty_run, 0)
    assert rows[2]["status"] == "failed" and "injected fault" in rows[2]["reason"]
    assert rows[1]["status"] == "ok"
    assert float(rows[2]["energy_compute_j"]) == 0 and int(rows[2]["bytes_up"]) == 0


def test_a_hard_crash_is_booked_and_the_run_finishes(faulty_run):
    rows = rows_of(faulty_run, 1)
    assert rows[1]["status"] == rows[2]["status"] == "ok"
    assert rows[3]["status"] == "failed" and "died" in rows[3]["reason"]
    assert (faulty_run / "final" / "model_index.json").exists()


def test_a_corrupted_payload_is_rejected_with_its_reason(faulty_run):
    rows = rows_of(faulty_run, 2)
    # round 3 may have hit the dead worker
    sent = [r for r in rows.values() if r["status"] == "rejected"]
    assert len(sent) >= 2 and all(re.search(r"truncat", r["reason"]) for r in sent)
    # it did send
    assert all(int(r["bytes_up"]) > 0 and float(r["energy_upload_j"]) > 0 for r in sent)


def test_a_nan_channel_gain_is_rejected_before_training(faulty_run):
    rows = read_csv(faulty_run / "devices.csv")
    mine = [r for r in rows if r["partition_id"] == "3"]
    # one row a round, even in the discovery round
    assert len(mine) == len({r["round"] for r in mine})
    # queried, and refused, in every round
    assert sorted(int(r["round"]) for r in mine) == [1, 2, 3], mine
    assert all(
        r["status"] == "rejected" and "gain" in r["reason"] and int(r["bits"]) == 0
        for r in mine
    )


def test_a_metric_of_the_wrong_type_is_rejected_naming_it(faulty_run):
    rows = rows_of(faulty_run, 5)
    assert (
        rows[1]["status"] == "rejected"
        and "'train-loss' must be a float" in rows[1]["reason"]
    )
    assert rows[2]["status"] == "ok"


def test_a_hostile_download_is_refused_on_the_device_and_its_reply_says_why(
    faulty_run,
):
    rows = rows_of(faulty_run, 6)
    assert rows[1]["status"] == "failed"
    assert re.search(r"download 'model' is refused.*truncated", rows[1]["reason"])
    assert rows[2]["status"] == "failed"
    assert re.search(r"refused.*Bits \d+ differ", rows[2]["reason"])
    # nothing trained, nothing uploaded
    assert int(rows[1]["bytes_up"]) == 0 == int(rows[2]["bytes_up"])


def test_healthy_devices_train_every_round_and_the_model_stays_finite(faulty_run):
    # round 3 may have gone to the worker partition 1 killed
    rows = rows_of(faulty_run, 4)
    assert rows[1]["status"] == rows[2]["status"] == "ok"
    state = load_file(faulty_run / "checkpoints" / "round_003" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values())
    summary = json.loads((faulty_run / "summary.json").read_text())
    assert summary["rounds"] == 3
