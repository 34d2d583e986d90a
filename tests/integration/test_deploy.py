"""Deployment as on edge boxes, on loopback: the deploy/ scripts, TLS, SuperNode keys,
one profile per node.

A SuperLink with TLS and SuperNode authentication, three registered SuperNodes that
name their device profiles in `--node-config`, and one SuperNode whose key was never
registered; then `flwr run` of this app for two rounds of `ondemand`.
"""

import json
import re
import subprocess

import pytest

from qfd_app.runs.launch import (
    APP_DIR,
    BIN,
    flower_env,
    free_port,
    stop_group,
    wait_for_control_api,
)
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow

DEPLOY = APP_DIR / "deploy"
CONNECTION = "qfd-deploy"
PROFILES = {
    0: ("iot", 2, 4),
    1: ("phone", 4, 8),
    2: ("edge", 8, 16),
}  # partition: class, bits-min, bits-max
# min-available-nodes: round 1 waits for the three registered nodes
# (the rogue never gets in)
RUN_CONFIG = (
    "num-server-rounds=2 local-epochs=1 fraction-train=1.0 min-available-nodes=3 "
    "eval-interval=0 eval-samples=64 final-eval-samples=0 sample-steps=5 "
    "output-dir='{out}'"
)


class Processes:
    """The processes this test starts, each in its own session, each with a
    log file; stopped by PID."""

    def __init__(self, root, env):
        self.root, self.env, self.procs, self.logs = root, env, {}, []

    def start(self, name, args, **extra_env):
        log = open(self.root / f"{name}.log", "w")
        self.logs.append(log)
        self.procs[name] = subprocess.Popen(
            [str(a) for a in args],
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[name]

    def log(self, name):
        return (self.root / f"{name}.log").read_text()

    def stop_all(self):
        """Stop every process we started and whatever it spawned
        (by PID; see `stop_group`)."""
        for proc in self.procs.values():
            stop_group(proc, grace_s=10)
        for log in self.logs:
            log.close()


def run_script(name, *args, env):
    return subprocess.run(
        ["bash", str(DEPLOY / name), *map(str, args)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    env = flower_env(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache"))
    certs, keys = root / "certs", root / "keys"
    run_script("make-certs.sh", certs, "127.0.0.1", env=env)
    run_script("make-keys.sh", keys, "node0", "node1", "node2", "rogue", env=env)
    port = free_port()
    procs = Processes(root, env)
    try:
        superlink = procs.start(
            "superlink",
            [DEPLOY / "start-superlink.sh", certs, root / "state.db"],
            SUPERLINK_HOST="127.0.0.1",
            SUPERLINK_PORT=str(port),
        )
        run_script(
            "add-connection.sh",
            CONNECTION,
            f"127.0.0.1:{port}",
            certs / "ca.crt",
            env=env,
        )
        wait_for_control_api(env, CONNECTION, superlink)  # asks the server, over TLS
        run_script(
            "register.sh",
            CONNECTION,
            *(keys / f"node{p}.pub" for p in PROFILES),
            env=env,
        )
        node = [
            DEPLOY / "start-supernode.sh",
            "--superlink",
            f"127.0.0.1:{port}",
            "--ca",
            certs / "ca.crt",
        ]
        for partition, (device_class, bits_min, bits_max) in PROFILES.items():
            procs.start(
                f"node{partition}",
                [
                    *node,
                    "--key",
                    keys / f"node{partition}",
                    "--port",
                    free_port(),
                    "--partition-id",
                    partition,
                    "--num-partitions",
                    len(PROFILES),
                    "--device-class",
                    device_class,
                    "--bits-min",
                    bits_min,
                    "--bits-max",
                    bits_max,
                ],
            )
        rogue = procs.start(
            "rogue",
            [
                *node,
                "--key",
                keys / "rogue",
                "--port",
                free_port(),
                "--partition-id",
                0,
                "--num-partitions",
                len(PROFILES),
            ],
        )
        rogue.wait(timeout=120)
        with open(root / "flwr-run.log", "w") as out:
            subprocess.run(
                [
                    str(BIN / "flwr"),
                    "run",
                    str(APP_DIR),
                    CONNECTION,
                    "--stream",
                    "--run-config",
                    RUN_CONFIG.format(out=root / "out"),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            )
        # `flwr run` exits 0 even when the ServerApp fails
        runs = list((root / "out").glob("*/summary.json"))
        assert len(runs) == 1, (root / "flwr-run.log").read_text()[-5000:]
        yield runs[0].parent, procs
    finally:
        procs.stop_all()


def node_id_of(procs, name):
    return int(re.search(r"SuperNode ID: (\d+)", procs.log(name)).group(1))


def test_a_supernode_with_an_unregistered_key_is_refused(deployment):
    run_dir, procs = deployment
    assert procs.procs["rogue"].returncode != 0
    assert "2004" in procs.log("rogue") and "SuperNode ID" not in procs.log("rogue")
    booked = {int(r["node_id"]) for r in read_csv(run_dir / "devices.csv")}
    assert booked == {
        node_id_of(procs, f"node{p}") for p in PROFILES
    }  # the registered ones, and only those


def test_each_device_trains_every_round_within_its_own_profile(deployment):
    run_dir, procs = deployment
    rows = read_csv(run_dir / "devices.csv")
    for partition, (device_class, bits_min, bits_max) in PROFILES.items():
        mine = [r for r in rows if int(r["partition_id"]) == partition]
        assert sorted(int(r["round"]) for r in mine) == [1, 2]
        for r in mine:
            assert r["status"] == "ok", r
            assert int(r["node_id"]) == node_id_of(procs, f"node{partition}")
            assert r["device_class"] == device_class
            assert (int(r["bits_min"]), int(r["bits_max"])) == (bits_min, bits_max)
            assert bits_min <= int(r["bits"]) <= bits_max
            assert r["ray_node"] == ""  # a SuperNode on its own box: no Ray


def test_the_run_writes_its_summary_on_the_superlink_host(deployment):
    run_dir, _ = deployment
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["strategy"] == "ondemand"
    assert (run_dir / "final" / "model_index.json").exists()
