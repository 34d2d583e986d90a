"""The Ray-cluster recipe of docs/scaling.md, run as documented: a two-node Ray cluster
on this machine, then `qfd run --ray-address ADDRESS`; the devices train on both nodes
and every process the test started is stopped by PID, also when it fails."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qfd_app.runs.launch import descendants
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QFD = Path(sys.executable).parent / "qfd"


@pytest.fixture
def ray_cluster():
    """A head and a worker node, one CPU each, in a private temp dir. Ray binds them to
    this machine's own address, as every simulation's Ray here does (a driver on another
    address than its cluster's nodes waits for a raylet of its own that never comes)."""
    from ray.cluster_utils import Cluster

    # Ray's socket paths must stay short
    temp = tempfile.mkdtemp(prefix="qr-", dir="/tmp")
    node = {"num_cpus": 1, "temp_dir": temp}
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args=node)
    try:
        cluster.add_node(**node)
        yield cluster
    finally:
        pids = [p.process.pid for n in cluster.list_all_nodes() for p in _processes(n)]
        cluster.shutdown()
        for pid in pids:  # what the nodes started and left behind, by PID
            _kill(pid)


def _processes(node):
    return [
        p
        for infos in node.all_processes.values()
        for p in infos
        if p.process is not None
    ]


def _kill(pid):
    for child in [pid, *descendants(pid)]:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_qfd_run_with_a_ray_address_trains_devices_on_both_nodes(ray_cluster, tmp_path):
    nodes = {n.node_id for n in ray_cluster.list_all_nodes()}
    assert len(nodes) == 2
    out = tmp_path / "runs"
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "QFD_CACHE_DIR": str(tmp_path / "c"),
    }
    env.pop("RAY_ADDRESS", None)
    args = [
        str(QFD),
        "run",
        str(ROOT),
        "--ray-address",
        ray_cluster.address,
        "--run-config",
        f"scenario='smoke' num-server-rounds=2 fraction-train=1.0 local-epochs=1 "
        f"eval-interval=0 eval-samples=16 final-eval-samples=0 sample-steps=5 "
        f"output-dir='{out}'",
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
    ]
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        _kill(proc.pid)
    assert proc.returncode == 0, output[-4000:]
    assert f"on the Ray cluster at {ray_cluster.address}" in output
    (run_dir,) = out.iterdir()
    rows = read_csv(run_dir / "devices.csv")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    used = {r["ray_node"] for r in rows}
    assert used == nodes, (
        used,
        nodes,
    )  # every device on a node of this cluster, both nodes used
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(summary["ray_nodes"]) == sorted(nodes)


def test_a_named_superlink_with_a_ray_address_is_refused_before_anything_runs(tmp_path):
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    done = subprocess.run(
        [
            str(QFD),
            "run",
            str(ROOT),
            "some-superlink",
            "--ray-address",
            "127.0.0.1:6390",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--ray-address" in done.stderr and "some-superlink" in done.stderr
