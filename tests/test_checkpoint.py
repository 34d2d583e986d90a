"""Checkpoints and resuming: atomic writes, the ledger rolled back to the checkpoint,
the run directory a `resume` setting names, and the strategy's state carried across."""

import json
import math

import pytest
import torch

from qfd_app.runs.checkpoint import (
    ResumeError,
    commit_checkpoint,
    load_checkpoint,
    stage_checkpoint,
)
from qfd_app.runs.ledger import DeviceRecord, Ledger, read_csv
from qfd_app.runs.rundir import create_run_dir, open_run_dir
from qfd_app.settings import Settings, SettingsError, default_run_config


def settings(tmp_path, **overrides):
    return Settings.from_run_config(
        {**default_run_config(), "output-dir": str(tmp_path), **overrides}
    )


def book_round(ledger, server_round, nodes=(1, 2)):
    for node in nodes:
        ledger.book(
            DeviceRecord(
                server_round,
                node,
                node,
                "phone",
                "ok",
                "",
                bits=4,
                energy_compute_j=0.5 * node,
                num_examples=10,
                train_loss=0.25,
                deadline_missed=node == 2,
            )
        )
    ledger.write_round({"round": server_round, **ledger.summarise(server_round)})


def checkpoint(run_dir, server_round, value):
    staged = stage_checkpoint(
        run_dir,
        server_round,
        {"w": torch.full((3,), value)},
        {"strategy": {"x": value}},
    )
    return commit_checkpoint(run_dir, staged)


def test_only_the_latest_complete_checkpoint_is_kept_and_loaded(tmp_path):
    ledger = Ledger(tmp_path)
    for r in (1, 2):
        book_round(ledger, r)
        checkpoint(tmp_path, r, float(r))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round_002"]
    stage_checkpoint(tmp_path, 3, {"w": torch.zeros(3)}, {})  # killed before its commit
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.state == {"strategy": {"x": 2.0}}
    assert torch.equal(loaded.model["w"], torch.full((3,), 2.0))


def test_the_strategy_tensors_are_checkpointed_with_the_model(tmp_path):
    mirrors = {"0/w": torch.arange(3.0), "5/w": torch.ones(3)}
    staged = stage_checkpoint(tmp_path, 1, {"w": torch.zeros(3)}, {}, None, mirrors)
    commit_checkpoint(tmp_path, staged)
    loaded = load_checkpoint(tmp_path)
    assert loaded.strategy_tensors.keys() == mirrors.keys()
    assert all(torch.equal(loaded.strategy_tensors[k], v) for k, v in mirrors.items())
    checkpoint(tmp_path, 2, 1.0)  # a strategy without tensors saves none
    assert load_checkpoint(tmp_path).strategy_tensors == {}


def test_loading_rolls_the_ledger_back_to_the_checkpoint(tmp_path):
    ledger = Ledger(tmp_path)
    for r in (1, 2):
        book_round(ledger, r)
    checkpoint(tmp_path, 2, 2.0)
    book_round(ledger, 3)  # a half-done round 3 …
    assert {row["round"] for row in read_csv(tmp_path / "devices.csv")} == {
        "1",
        "2",
        "3",
    }
    load_checkpoint(tmp_path)  # … is dropped
    assert {row["round"] for row in read_csv(tmp_path / "devices.csv")} == {"1", "2"}
    assert [row["round"] for row in read_csv(tmp_path / "rounds.csv")] == ["1", "2"]
    resumed = Ledger(tmp_path)
    # every type read back
    assert resumed.records == [r for r in ledger.records if r.round <= 2]
    assert resumed.totals()["deadline_misses"] == 2


def test_a_run_without_a_checkpoint_cannot_be_loaded(tmp_path):
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)


def test_resume_last_finds_the_newest_unfinished_run_with_the_same_settings(tmp_path):
    first = create_run_dir(settings(tmp_path), "1")
    checkpoint(first, 1, 1.0)
    other = create_run_dir(settings(tmp_path, seed=5), "2")  # other settings
    checkpoint(other, 1, 1.0)
    run_dir, loaded = open_run_dir(settings(tmp_path, resume="last", device="cpu"), "3")
    assert run_dir == first and loaded.round == 1
    (first / "summary.json").write_text("{}")  # finished: nothing left to resume
    with pytest.raises(SettingsError, match="'resume'.*no unfinished run"):
        open_run_dir(settings(tmp_path, resume=True), "4")


def test_resume_refuses_a_run_trained_with_other_settings(tmp_path):
    run_dir = create_run_dir(settings(tmp_path, **{"local-epochs": 3}), "1")
    checkpoint(run_dir, 1, 1.0)
    with pytest.raises(
        SettingsError, match=r"'resume'.*'local-epochs' \(3 there, 10 now\)"
    ):
        open_run_dir(settings(tmp_path, resume=str(run_dir)), "2")
    open_run_dir(settings(tmp_path, resume=str(run_dir), **{"local-epochs": 3}), "2")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "no complete checkpoint"),
        (lambda d: (d / "summary.json").write_text("{}") and d, "finished"),
        (lambda d: d / "nothing-here", "config.json"),
    ],
)
def test_resume_refuses_what_cannot_go_on(tmp_path, make, message):
    run_dir = create_run_dir(settings(tmp_path), "1")
    target = make(run_dir) or run_dir
    with pytest.raises(SettingsError, match=f"'resume'.*{message}"):
        open_run_dir(settings(tmp_path, resume=str(target)), "2")


def test_the_strategy_state_survives_json_and_restores_the_same_plan(tmp_path):
    from dataclasses import replace

    from tests.test_strategy import Planned, make_strategy, plan_bits, smoke_states

    strategy = Planned(epsilon=0.05)
    strategy.update_sq_norm = 1.0
    strategy.history.range_sq = {
        0: {48: 50.0},
        1: {48: 40.0},
        2: {48: 30.0},
    }
    edge = make_strategy(tmp_path / "a")
    edge.history = strategy.history
    saved = json.loads(json.dumps(edge.state()))
    fresh = make_strategy(tmp_path / "b")
    fresh.restore(saved, completed_rounds=2)
    assert fresh.round_offset == 2 and fresh.history == strategy.history
    # devices that restarted report no ranges: the server's memory prices them as before
    planned = Planned(epsilon=0.05)
    planned.history = fresh.history
    forgetful = smoke_states({})
    reported = [
        replace(s, range_sq=strategy.history.range_sq[i])
        for i, s in enumerate(forgetful)
    ]
    assert plan_bits(planned, forgetful) == plan_bits(strategy, reported)


def test_an_unknown_aggregate_norm_is_saved_as_null(tmp_path):
    from tests.test_strategy import make_strategy

    strategy = make_strategy(tmp_path)
    saved = json.loads(json.dumps(strategy.state(), allow_nan=False))
    assert saved["update_sq_norm"] is None
    strategy.restore(saved, completed_rounds=1)
    assert math.isnan(strategy.history.update_sq_norm)


def test_a_ledger_written_before_the_ray_node_column_is_read_back(tmp_path):
    from qfd_app.runs.ledger import DeviceRecord

    ledger = Ledger(tmp_path)
    ledger.book(DeviceRecord(1, 5, 0, "iot", "ok", "", bits=4, ray_node="ab" * 28))
    ledger.book(DeviceRecord(1, 6, 1, "phone", "ok", "", bits=8))
    old = tmp_path / "old"
    old.mkdir()
    lines = (tmp_path / "devices.csv").read_text().splitlines()
    # an older run's devices.csv: the same rows without the last four columns
    # (ray_node, then bytes_down, download_s, energy_download_j)
    (old / "devices.csv").write_text(
        "\n".join(line.rsplit(",", 4)[0] for line in lines) + "\n"
    )
    resumed = Ledger(old)
    assert [r.ray_node for r in resumed.records] == ["", ""]
    assert [r.bits for r in resumed.records] == [4, 8]
    assert [r.bytes_down for r in resumed.records] == [0, 0]
    assert [r.ray_node for r in Ledger(tmp_path).records] == ["ab" * 28, ""]
    assert ledger.totals()["ray_nodes"] == ["ab" * 28]
    # a resumed run books on: the old file takes the new header, its old rows the
    # defaults, and the new row keeps every column
    resumed.book(DeviceRecord(2, 5, 0, "iot", "ok", "", bits=4, bytes_down=1000))
    again = Ledger(old).records
    assert [r.bits for r in again] == [4, 8, 4]
    assert [r.bytes_down for r in again] == [0, 0, 1000]
