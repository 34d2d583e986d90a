"""`qfd compare`: variants, seeds, the folder a comparison goes on in, its progress
line, and its tables: both directions of traffic, energy with and without the download,
means and paired intervals over seeds."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from qfd_app.runs.checkpoint import commit_checkpoint, stage_checkpoint
from qfd_app.runs.compare import (
    CompareError,
    Progress,
    check_folder,
    check_settings,
    comparison_key,
    default_folder,
    parse_seeds,
    parse_variants,
    price_sources,
    read_runs,
    run_state,
    with_earlier_runs,
    write_comparison,
)
from qfd_app.runs.ledger import ROUND_FIELDS, read_csv


def test_a_variant_may_name_its_downlink():
    variants = parse_variants("fedavg, ondemand@delta, fixed:4@assigned", {"bits": 8})
    assert [v.label for v in variants] == [
        "fedavg",
        "ondemand@delta",
        "fixed:4@assigned",
    ]
    assert "downlink" not in variants[0].overrides
    assert variants[1].overrides == {"strategy": "ondemand", "downlink": "delta"}
    assert variants[2].overrides["downlink"] == "assigned"
    assert variants[2].overrides["bits"] == 4
    with pytest.raises(CompareError, match="downlink must be one of fp32, fp16"):
        parse_variants("ondemand@fp8", {})


def fake_run(
    root, name, *, downlink="fp32", up, down, energy, energy_down, seed=0, fid=3.0
):
    """A finished run directory as the ServerApp leaves it (the files the tables
    read), with a final evaluation of two draws around `fid`."""
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "resource_policy": "optimal",
        "rounds": 2,
        "energy_j": energy,
        "energy_compute_j": energy - energy_down - 1.0,
        "energy_upload_j": 1.0,
        "energy_download_j": energy_down,
        "bytes_up": up,
        "bytes_down": down,
        "devices_excluded": 0,
        "deadline_misses": 0,
        "wall_s": 10.0,
        "final_fid": fid + 0.1,  # draw 0: the last round's own evaluation
        "final_fid_mean": fid,
        "final_fid_se": 0.1,
        "final_kid_mean": fid / 1000,
        "final_kid_se": 1e-4,
        "final_precision_mean": 0.8,
        "final_recall_mean": 0.7,
        "final_draws": 2,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"downlink": downlink, "seed": seed}))
    (run / "devices.csv").write_text(
        "round,partition_id,status,bits,bits_min,bits_max\n1,0,ok,4,2,8\n"
    )
    rows = [",".join(ROUND_FIELDS)]
    for r in (1, 2):
        row = {k: "" for k in ROUND_FIELDS}
        row |= {"round": r, "energy_j": energy / 2, "bytes_up": up // 2}
        row |= {"bytes_down": down // 2, "fid": fid if r == 2 else ""}
        rows.append(",".join(str(row[k]) for k in ROUND_FIELDS))
    (run / "rounds.csv").write_text("\n".join(rows) + "\n")
    return run


def test_the_table_counts_both_directions_against_the_first(tmp_path):
    runs = [
        (
            "fedavg",
            fake_run(tmp_path, "a", up=400, down=400, energy=10, energy_down=1),
        ),
        (
            "ondemand@delta",
            fake_run(
                tmp_path,
                "b",
                downlink="delta",
                up=100,
                down=60,
                energy=5,
                energy_down=0.5,
            ),
        ),
    ]
    write_comparison(tmp_path, runs)
    first, row = read_csv(tmp_path / "comparison.csv")
    assert row["downlink"] == "delta" and first["downlink"] == "fp32"
    assert float(row["bytes_total"]) == 160
    assert float(row["bytes_up_vs_first"]) == pytest.approx(0.25)
    assert float(row["bytes_total_vs_first"]) == pytest.approx(160 / 800)
    assert float(row["energy_without_download_j"]) == pytest.approx(4.5)
    # quality: the final evaluation's mean over draws, not the last round's draw
    assert float(row["fid"]) == 3.0 and float(row["fid_se"]) == 0.1
    table = (tmp_path / "comparison.md").read_text()
    assert "downlink MB" in table and "| 20.0 % |" in table
    for plot in ("energy_bytes", "fid", "bars", "bits"):
        assert (tmp_path / "plots" / f"{plot}.png").exists()


def test_the_summary_gives_means_and_paired_intervals_over_seeds(tmp_path):
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2]
    seed_effect = rng.normal(0, 2, size=3)
    energy = {"fedavg": 10 + seed_effect, "ondemand": 4 + 0.4 * seed_effect}
    energy["ondemand"] += rng.normal(0, 0.2, size=3)
    fid = {"fedavg": 3 + seed_effect / 4, "ondemand": 3.3 + seed_effect / 4}
    runs = [
        (
            label,
            fake_run(
                tmp_path / label,
                f"seed-{s}",
                seed=s,
                up=400 if label == "fedavg" else 100,
                down=400,
                energy=float(energy[label][i]),
                energy_down=0.5,
                fid=float(fid[label][i]),
            ),
        )
        for i, s in enumerate(seeds)
        for label in ("fedavg", "ondemand")
    ]
    write_comparison(tmp_path, runs)
    rows = read_csv(tmp_path / "comparison.csv")
    assert [(r["strategy"], int(r["seed"])) for r in rows] == [
        (label, s) for s in seeds for label in ("fedavg", "ondemand")
    ]
    summary = {
        (r["strategy"], r["metric"]): {
            k: float(v) for k, v in r.items() if k not in ("strategy", "metric")
        }
        for r in read_csv(tmp_path / "comparison-summary.csv")
    }
    e = summary[("ondemand", "energy_j")]
    ci = stats.ttest_1samp(energy["ondemand"], 0).confidence_interval()
    assert (e["seeds"], e["mean"]) == (3, pytest.approx(energy["ondemand"].mean()))
    assert (e["low"], e["high"]) == pytest.approx((ci.low, ci.high))
    ratios = energy["ondemand"] / energy["fedavg"]
    ci = stats.ttest_1samp(ratios, 0).confidence_interval()
    assert e["ratio"] == pytest.approx(ratios.mean())
    assert (e["ratio_low"], e["ratio_high"]) == pytest.approx((ci.low, ci.high))
    f = summary[("ondemand", "fid")]
    ci = stats.ttest_rel(fid["ondemand"], fid["fedavg"]).confidence_interval()
    assert f["difference"] == pytest.approx(0.3)
    assert (f["difference_low"], f["difference_high"]) == pytest.approx(
        (ci.low, ci.high)
    )
    assert summary[("fedavg", "bytes_up")]["ratio"] == 1.0
    assert summary[("ondemand", "bytes_up")]["ratio"] == pytest.approx(0.25)
    table = (tmp_path / "comparison.md").read_text()
    assert "| ondemand | 3 |" in table and "FID − fedavg" in table
    assert "25.0 ± 0.0 %" in table  # uplink vs fedavg, the same on every seed


def test_comparison_folders_of_today_and_before_are_read(tmp_path):
    run = fake_run(tmp_path, "a", up=1, down=1, energy=1, energy_down=0)
    (tmp_path / "runs.json").write_text(json.dumps({"fedavg": str(run)}))
    assert read_runs(tmp_path) == [("fedavg", run)]
    # today's: relative to the folder, which may move
    (tmp_path / "runs.json").write_text(json.dumps([["fedavg", "a"]]))
    assert read_runs(tmp_path) == [("fedavg", run)]


def test_a_later_call_keeps_the_runs_of_earlier_ones_in_the_tables(tmp_path):
    def run(label, seed):
        return fake_run(
            tmp_path / "runs" / label / f"seed-{seed}",
            "r",
            up=1,
            down=1,
            energy=1,
            energy_down=0,
            seed=seed,
        )

    earlier = [("fedavg", run("fedavg", 0)), ("fedavg", run("fedavg", 1))]
    earlier.append(("ondemand", run("ondemand", 0)))
    (tmp_path / "runs.json").write_text(
        json.dumps([[label, str(r.relative_to(tmp_path))] for label, r in earlier])
    )
    # this call: ondemand on seed 1 and fedavg on seed 0 again (a newer run of it)
    newer = fake_run(
        tmp_path / "runs" / "fedavg" / "seed-0",
        "s",
        up=1,
        down=1,
        energy=1,
        energy_down=0,
    )
    now = [("ondemand", run("ondemand", 1)), ("fedavg", newer)]
    assert with_earlier_runs(tmp_path, now) == now + [earlier[1], earlier[2]]


def test_a_policy_twin_listed_later_is_priced_from_the_earlier_one():
    def sources(spec):
        variants = parse_variants(spec, {"bits": 8})
        return price_sources(variants, check_settings(variants, {"downlink": "fp32"}))

    assert sources("fedavg:optimal,ondemand,fedavg,fixed:4,fedavg@delta") == {
        "fedavg": "fedavg:optimal"
    }
    assert sources("fedavg,fedavg:optimal") == {"fedavg:optimal": "fedavg"}
    # the same policy, or other settings besides the policy: no twin
    assert sources("fedavg,fedavg:race-to-idle,fedavg:optimal:fp32-training") == {}
    # ondemand chooses among widths: a policy could change what it trains
    assert sources("ondemand,fixed:4,fixed:8") == {}


@pytest.mark.parametrize(
    "spec, base, message",
    [
        ("0,x", {}, "distinct integers"),
        ("1,1", {}, "distinct integers"),
        ("-1", {}, "distinct integers"),
        ("0,1", {"seed": 3}, "in one place"),
    ],
)
def test_bad_seeds_are_refused_naming_the_option(spec, base, message):
    with pytest.raises(CompareError, match=f"--seeds.*{message}"):
        parse_seeds(spec, base)


def test_seeds_are_parsed_in_order():
    assert parse_seeds(" 2, 0,1 ", {}) == [2, 0, 1]
    assert parse_seeds("", {"seed": 3}) == []


def test_a_run_folder_says_done_resume_or_new(tmp_path):
    folder = tmp_path / "seed-0"
    assert run_state(folder) == ("new", None)
    killed_early = folder / "20261202-100000-ondemand-1"  # no complete checkpoint
    killed_early.mkdir(parents=True)
    (killed_early / "config.json").write_text("{}")
    assert run_state(folder) == ("new", None)
    killed = folder / "20261202-110000-ondemand-2"
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    model = {"w": torch.zeros(2)}
    commit_checkpoint(killed, stage_checkpoint(killed, 3, model, {"wall_s": 1.0}))
    assert run_state(folder) == ("resume", killed)
    (killed / "summary.json").write_text("{}")
    assert run_state(folder) == ("done", killed)


def test_the_same_arguments_find_the_same_folder_and_others_are_refused(tmp_path):
    key = comparison_key("default", {"num-server-rounds": 48}, 10)
    assert default_folder(key) == default_folder(dict(key))
    assert default_folder(key) != default_folder(comparison_key("default", {}, 10))
    assert default_folder(key).name.startswith("compare-default-")
    check_folder(tmp_path, key)
    check_folder(tmp_path, key)  # the same comparison: goes on
    other = comparison_key("default", {"num-server-rounds": 24}, 10)
    with pytest.raises(CompareError, match="--output.*settings.*48.*24"):
        check_folder(tmp_path, other)


def test_progress_says_which_run_its_round_and_the_time_left():
    lines = []
    progress = Progress(lines.append)
    progress.start("[2/6] ondemand seed 1", later_rounds=40)
    progress.line("INFO : [qfd] run directory: /x")  # not a round: nothing
    progress.line("INFO :      [qfd] round 3/10: devices_ok 2, fid 4.1")
    assert lines[0].startswith("[2/6] ondemand seed 1: started")
    assert len(lines) == 2
    assert lines[1].startswith("[2/6] ondemand seed 1: round 3/10; left: this run ")
    assert "min, the comparison " in lines[1]
