"""TensorBoard events read back with tensorboard's own reader equal what was booked; a
writer that fails is switched off with its reason, and the run goes on."""

import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qfd_app.runs.tensorboard import TensorBoardLog

ROWS = [
    {
        "round": 1,
        "devices_ok": 2,
        "energy_j": 1.25,
        "bytes_up": 412345,
        "train_loss": 0.147,
    },
    {"round": 2, "devices_ok": 1, "energy_j": 0.5, "bytes_up": 200001, "fid": 86.2},
]


def read(folder):
    events = EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    )
    events.Reload()
    return events


def test_scalars_histograms_images_and_hparams_come_back(tmp_path):
    tb = TensorBoardLog(tmp_path, "ondemand-seed0")
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    tb.round(1, ROWS[0], bits=[2, 4, 4], images=images)
    tb.round(2, ROWS[1], bits=[8])
    tb.finish(
        {"strategy": "ondemand", "seed": 0, "bits": 8}, {"fid": 86.2, "note": "x"}
    )
    events = read(tmp_path / "tensorboard" / "ondemand-seed0")
    tags = events.Tags()
    compared = 0
    for row in ROWS:
        for key, value in row.items():
            if key == "round":
                continue
            (point,) = [
                p for p in events.Scalars(f"rounds/{key}") if p.step == row["round"]
            ]
            # TensorBoard keeps float32
            assert point.value == pytest.approx(value, rel=1e-6)
            compared += 1
    assert compared == 8  # every number of both rows
    first, second = events.Histograms("bits/assigned")
    assert (first.step, first.histogram_value.num, first.histogram_value.sum) == (
        1,
        3,
        10,
    )
    assert (second.step, second.histogram_value.min, second.histogram_value.max) == (
        2,
        8,
        8,
    )
    assert [i.step for i in events.Images("samples")] == [1]
    assert "samples" in tags["images"]
    hparams = read(tmp_path / "tensorboard" / "ondemand-seed0" / ".")
    assert "final/fid" in hparams.Tags()["scalars"]


def test_a_writer_that_cannot_write_is_switched_off_and_says_why(tmp_path, caplog):
    (tmp_path / "tensorboard").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        tb = TensorBoardLog(tmp_path, "fedavg-seed0")
        tb.round(1, ROWS[0], bits=[32])  # no exception: the run goes on
        tb.finish({"seed": 0}, {"fid": 1.0})
    assert tb.writer is None
    assert "TensorBoard events are off" in caplog.text


def test_a_disk_that_fills_up_mid_run_switches_the_log_off(
    tmp_path, caplog, monkeypatch
):
    tb = TensorBoardLog(tmp_path, "fixed:4-seed0")
    tb.round(1, ROWS[0], bits=[4])

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tb.writer, "add_scalar", full)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        tb.round(2, ROWS[1], bits=[4])
        tb.round(3, ROWS[1], bits=[4])
    assert tb.writer is None and caplog.text.count("No space left on device") == 1
    events = read(tmp_path / "tensorboard" / "fixed:4-seed0")
    assert [p.step for p in events.Scalars("rounds/energy_j")] == [1]
