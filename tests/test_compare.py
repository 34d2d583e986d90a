"""`qfd compare`'s variants and table: both directions of traffic, and energy with
and without the download, against the first strategy."""

import json

import pytest

from qfd_app.runs.compare import CompareError, parse_variants, write_comparison
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


def fake_run(root, name, *, downlink, up, down, energy, energy_down):
    run = root / name
    run.mkdir()
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
        "final_fid": 3.0,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"downlink": downlink}))
    (run / "devices.csv").write_text(
        "round,partition_id,status,bits,bits_min,bits_max\n1,0,ok,4,2,8\n"
    )
    rows = [",".join(ROUND_FIELDS)]
    for r in (1, 2):
        row = {k: "" for k in ROUND_FIELDS}
        row |= {"round": r, "energy_j": energy / 2, "bytes_up": up // 2}
        row |= {"bytes_down": down // 2, "fid": 3.0 if r == 2 else ""}
        rows.append(",".join(str(row[k]) for k in ROUND_FIELDS))
    (run / "rounds.csv").write_text("\n".join(rows) + "\n")
    return run


def test_the_table_counts_both_directions_against_the_first(tmp_path):
    runs = {
        "fedavg": fake_run(
            tmp_path, "a", downlink="fp32", up=400, down=400, energy=10, energy_down=1
        ),
        "ondemand@delta": fake_run(
            tmp_path, "b", downlink="delta", up=100, down=60, energy=5, energy_down=0.5
        ),
    }
    write_comparison(tmp_path, runs)
    first, row = read_csv(tmp_path / "comparison.csv")
    assert row["downlink"] == "delta" and first["downlink"] == "fp32"
    assert float(row["bytes_total"]) == 160
    assert float(row["bytes_up_vs_first"]) == pytest.approx(0.25)
    assert float(row["bytes_total_vs_first"]) == pytest.approx(160 / 800)
    assert float(row["energy_without_download_j"]) == pytest.approx(4.5)
    table = (tmp_path / "comparison.md").read_text()
    assert "downlink MB" in table and "| 20.0 % |" in table
    assert (tmp_path / "plots" / "energy_bytes.png").exists()
