"""Resume: SIGKILL a real simulation after round 2 of 4, resume it, and get
the uninterrupted run — with the `delta` downlink, whose devices keep a copy of the
model that a resumed run's new device processes no longer have.

Three real `flwr run`s of the default `ondemand` strategy on 4 virtual devices, 2
sampled a round (so devices train, sit out and come back, and the error budget prices
them with the range sums the server remembers): one uninterrupted, one whose whole
server side (SuperLink, ServerApp, Ray) is SIGKILLed as soon as round 2's checkpoint is
committed, and one that resumes it (`resume = true`) on a fresh SuperLink.

Why bitwise equality holds: every random draw of a round comes from generators seeded by
(seed, round, partition), each device trains single-threaded, and the server adds the
updates in partition order, so nothing depends on which process ran what or when. The
server's mirrors of the devices' copies are checkpointed; a device that lost its copy is
sent the mirror in fp32 with its delta, so it trains from the same model — only the
bytes sent down, their time and energy, and the deadline misses that unplanned time
causes differ.
"""

import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from qfd_app.runs.launch import flwr_run, kill_tree, start_superlink, stop_group
from qfd_app.runs.ledger import PHASES, read_csv

pytestmark = pytest.mark.slow

CONFIG = (
    "num-server-rounds=4 local-epochs=1 fraction-train=0.5 eval-interval=2 "
    "eval-samples=64 final-eval-samples=0 sample-steps=5 strategy='ondemand' "
    "downlink='delta'"
)
FEDERATION = "num-supernodes=4 client-resources-num-cpus=1"
HOST_COLUMNS = {
    "node_id",
    "host_train_s",
    "host_encode_s",
    "ray_node",
    *PHASES,
    "wall_s",
}  # the host's, not the run's
# a resumed run resends lost copies: more bytes down, more download time and energy,
# and (unplanned, so on top of a plan that uses the whole deadline) deadline misses
DOWNLOAD_COLUMNS = {
    "bytes_down",
    "download_s",
    "energy_download_j",
    "energy_j",
    "deadline_missed",
    "deadline_misses",
}


def run(root, name, extra="", kill_after_round=None):
    """One `flwr run` on its own SuperLink; returns (log, run dir, checkpoints
    present at the kill)."""
    out = root / name
    proc, env = start_superlink(
        root / f"home-{name}", QFD_CACHE_DIR=str(root / "cache")
    )
    seen_at_kill = []
    stop = threading.Event()

    def kill_when_checkpointed():
        while not stop.is_set():
            done = sorted(
                p.name for p in out.glob(f"*/checkpoints/round_{kill_after_round:03d}")
            )
            if done:
                # the server side (SuperLink, ServerApp, Ray) dies mid-run, no cleanup
                kill_tree(proc)
                seen_at_kill.extend(p.name for p in out.glob("*/checkpoints/*"))
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_when_checkpointed, daemon=True)
    if kill_after_round:
        watcher.start()
    try:
        done = flwr_run(
            env, f"{CONFIG} {extra} output-dir='{out}'", FEDERATION, timeout_s=600
        )
    finally:
        stop.set()
        stop_group(proc)
    runs = [p.parent for p in out.glob("*/config.json")]
    assert len(runs) == 1, done.stdout[-3000:]
    return done.stdout, runs[0], seen_at_kill


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _, full, _ = run(root, "full")
    _, killed, seen_at_kill = run(root, "killed", kill_after_round=2)
    killed_rounds = [r["round"] for r in read_csv(killed / "rounds.csv")]
    # the last unfinished run in output-dir
    log, resumed, _ = run(root, "killed", extra="resume=true")
    return {
        "full": full,
        "killed": killed,
        "resumed": resumed,
        "log": log,
        "seen_at_kill": seen_at_kill,
        "killed_rounds": killed_rounds,
    }


def ordered(rows):
    """In (round, partition) order (replies come in any order)."""
    return sorted(rows, key=lambda r: (int(r["round"]), int(r.get("partition_id", -1))))


def deterministic(rows):
    """The rows without the host's timings and the download's cost."""
    skip = HOST_COLUMNS | DOWNLOAD_COLUMNS
    return [{k: v for k, v in row.items() if k not in skip} for row in ordered(rows)]


def test_the_kill_came_after_round_2_and_before_the_run_ended(runs):
    assert runs["seen_at_kill"] == ["round_002"]
    assert runs["killed_rounds"] == ["1", "2"]


def test_the_resumed_run_continues_in_the_same_directory_from_round_3(runs):
    assert runs["resumed"] == runs["killed"]
    assert "resuming after round 2 of 4" in runs["log"]
    assert (runs["resumed"] / "summary.json").exists() and (
        runs["resumed"] / "final" / "model_index.json"
    ).exists()


def test_the_ledger_equals_the_uninterrupted_runs(runs):
    full = read_csv(runs["full"] / "devices.csv")
    resumed = read_csv(runs["resumed"] / "devices.csv")
    assert {r["round"] for r in full} == {"1", "2", "3", "4"}
    # bits, plan, energy, bytes, losses: every value
    assert deterministic(resumed) == deterministic(full)
    rounds = [
        deterministic(read_csv(runs[name] / "rounds.csv"))
        for name in ("resumed", "full")
    ]
    assert rounds[0] == rounds[1]  # FID and the other scores too


def test_devices_that_lost_their_copy_were_sent_it_once_more(runs):
    full = ordered(read_csv(runs["full"] / "devices.csv"))
    resumed = ordered(read_csv(runs["resumed"] / "devices.csv"))
    model_bytes = max(int(r["bytes_down"]) for r in full if r["round"] == "1")
    extra = [int(b["bytes_down"]) - int(a["bytes_down"]) for a, b in zip(full, resumed)]
    # rounds 1–2 as before; after the resume, a device that held a copy gets the
    # mirror (fp32, the size of a first download) besides its delta, once
    assert all(e == 0 for e, r in zip(extra, full) if int(r["round"]) <= 2)
    assert set(extra) <= {0, model_bytes} and model_bytes in extra
    resent = [r["partition_id"] for e, r in zip(extra, full) if e]
    assert len(resent) == len(set(resent))


def test_the_final_model_equals_the_uninterrupted_runs(runs):
    full = load_file(runs["full"] / "checkpoints" / "round_004" / "model.safetensors")
    resumed = load_file(
        runs["resumed"] / "checkpoints" / "round_004" / "model.safetensors"
    )
    assert full.keys() == resumed.keys()
    # bitwise: see the module docstring
    assert all(torch.equal(full[k], resumed[k]) for k in full)
