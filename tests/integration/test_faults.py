"""Faulty devices in a real Flower simulation: each failure booked with its reason, the run goes on."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from qfd_app.launch import APP_DIR, flwr_run, superlink
from qfd_app.ledger import read_csv

pytestmark = pytest.mark.slow

HERE = __import__("pathlib").Path(__file__).parent


def faulty_app(root):
    """This app with the ClientApp swapped for `faulty/faulty_client.py` (same server, same library)."""
    app = root / "app"
    shutil.copytree(APP_DIR / "qfd_app", app / "qfd_app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(APP_DIR / "scenarios", app / "scenarios")
    shutil.copy(HERE / "faulty" / "faulty_client.py", app / "faulty_client.py")
    shutil.copy(APP_DIR / "README.md", app / "README.md")
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    pyproject = pyproject.replace('clientapp = "qfd_app.client_app:app"', 'clientapp = "faulty_client:app"')
    pyproject = re.sub(r"fab-include = \[", 'fab-include = ["faulty_client.py", ', pyproject)
    (app / "pyproject.toml").write_text(pyproject)
    return app


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    config = ("num-server-rounds=3 local-epochs=1 fraction-train=1.0 eval-interval=0 eval-samples=64 "
              f"sample-steps=5 output-dir='{root / 'out'}'")  # fmt: skip
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:
        done = flwr_run(env, config, "num-supernodes=6 client-resources-num-cpus=0.5", app=faulty_app(root))
    runs = list((root / "out").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").exists(), done.stdout[-5000:]
    return runs[0]


def rows_of(run_dir, partition):
    rows = read_csv(run_dir / "devices.csv")
    return {int(r["round"]): r for r in rows if int(r["partition_id"]) == partition}


def test_a_device_that_raises_fails_that_round_only(faulty_run):
    rows = rows_of(faulty_run, 0)
    assert rows[2]["status"] == "failed" and "injected fault" in rows[2]["reason"]
    assert rows[1]["status"] == rows[3]["status"] == "ok"
    assert float(rows[2]["energy_compute_j"]) == 0 and int(rows[2]["bytes_up"]) == 0


def test_a_hard_crash_is_booked_and_the_device_trains_again_later(faulty_run):
    rows = rows_of(faulty_run, 1)
    assert rows[2]["status"] == "failed" and rows[2]["reason"]
    assert rows[1]["status"] == "ok" and rows[3]["status"] == "ok"


def test_a_corrupted_payload_is_rejected_with_its_reason(faulty_run):
    rows = rows_of(faulty_run, 2)
    assert {r["status"] for r in rows.values()} == {"rejected"}
    assert all(re.search(r"bytes|size|length|truncat", r["reason"], re.I) for r in rows.values())
    assert all(int(r["bytes_up"]) > 0 and float(r["energy_upload_j"]) > 0 for r in rows.values())  # it did send


def test_a_nan_channel_gain_is_rejected_before_training(faulty_run):
    rows = rows_of(faulty_run, 3)
    assert {r["status"] for r in rows.values()} == {"rejected"}
    assert all("gain" in r["reason"] and int(r["bits"]) == 0 for r in rows.values())


def test_healthy_devices_train_every_round_and_the_model_stays_finite(faulty_run):
    for partition in (4, 5):
        assert {r["status"] for r in rows_of(faulty_run, partition).values()} == {"ok"}
    state = load_file(next((faulty_run / "checkpoints").glob("round_003.safetensors")))
    assert all(torch.isfinite(t).all() for t in state.values())
    summary = json.loads((faulty_run / "summary.json").read_text())
    assert summary["rounds"] == 3
