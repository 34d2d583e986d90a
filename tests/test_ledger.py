"""The ledger's download booking: bytes_down → download time and receive energy,
the deadline, and the round and run totals."""

import pytest

from qfd_app.runs.ledger import FAILED, OK, Ledger, planned_record
from qfd_app.strategies.planner import Assignment

PLAN = Assignment(
    partition_id=3,
    device_class="phone",
    codec="uniform",
    bits=4,
    bits_min=4,
    bits_max=8,
    cpu_hz=1e9,
    power_w=0.1,
    bandwidth_hz=1e6,
    gain=1e-11,
    compute_s=10.0,
    energy_compute_j=0.5,
    download_codec="fp32",
    download_bits=32,
    download_rate_bps=8e6,
    receive_power_w=1.3,
    download_s=1.0,
    energy_download_j=1.3,
)


def record(status=OK, bytes_down=2_000_000, deadline_s=30.0, sent=0):
    return planned_record(
        1,
        7,
        PLAN,
        status,
        "",
        noise_w_per_hz=4e-21,
        deadline_s=deadline_s,
        sent=sent,
        bytes_down=bytes_down,
    )


def test_the_download_is_timed_at_the_planned_rate_and_charged_at_receive_power():
    row = record()
    # 2 MB = 16 Mbit at 8 Mbit/s
    assert row.bytes_down == 2_000_000 and row.download_s == pytest.approx(2.0)
    assert row.energy_download_j == pytest.approx(1.3 * 2.0)
    assert row.energy_j == pytest.approx(
        row.energy_download_j + row.energy_compute_j + row.energy_upload_j
    )


def test_the_download_counts_in_the_deadline():
    # 10 s of compute, 2 s of download: within 12 s, over 11.5 s
    assert not record(deadline_s=12.0 + 1e-6).deadline_missed
    assert record(deadline_s=11.5).deadline_missed


def test_a_device_that_never_replied_is_charged_nothing_but_its_bytes_are_booked():
    row = record(status=FAILED)
    assert row.bytes_down == 2_000_000
    assert row.download_s == 0 and row.energy_j == 0 and not row.deadline_missed


def test_round_and_run_totals_sum_the_devices_downloads(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.book(record())
    ledger.book(record(bytes_down=1_000_000))
    round_row = ledger.summarise(1)
    assert round_row["bytes_down"] == 3_000_000
    assert round_row["energy_download_j"] == pytest.approx(1.3 * 3.0)
    assert round_row["energy_j"] == pytest.approx(1.3 * 3.0 + 2 * 0.5)
    totals = ledger.totals()
    assert totals["bytes_down"] == 3_000_000
    assert totals["energy_download_j"] == pytest.approx(1.3 * 3.0)
    ledger.write_round(round_row)
    header = (tmp_path / "rounds.csv").read_text().splitlines()[0].split(",")
    assert "energy_download_j" in header and "bytes_down" in header


def test_an_old_rounds_csv_takes_the_new_columns_when_a_resumed_run_appends(tmp_path):
    from qfd_app.runs.ledger import ROUND_FIELDS, read_csv

    old = [f for f in ROUND_FIELDS if f != "energy_download_j"]
    (tmp_path / "rounds.csv").write_text(
        ",".join(old) + "\n" + ",".join("1" if f == "round" else "" for f in old) + "\n"
    )
    Ledger(tmp_path).write_round({"round": 2, "energy_download_j": 0.5})
    rows = read_csv(tmp_path / "rounds.csv")
    assert [r["round"] for r in rows] == ["1", "2"]
    assert [r["energy_download_j"] for r in rows] == ["", "0.5"]
