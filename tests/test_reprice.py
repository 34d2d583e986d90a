"""`runs.reprice` refuses a run that another policy could train differently, and
leaves nothing behind when it does. (That a priced run is the other policy's run is
shown on real runs: tests/integration/test_plan_is_the_run.py.)"""

import json

import pytest

from qfd_app.runs.ledger import EXCLUDED, FAILED, OK, DeviceRecord, Ledger, read_csv
from qfd_app.runs.reprice import RepriceError, reprice
from qfd_app.settings import Settings, default_run_config


def finished_run(root, strategy, statuses, examples=None):
    """A finished run's files as `reprice` reads them: one round, one device per
    status (phones with `examples` samples each, 450 by default; none booked for a
    left-out device by default, as before 2026-12-03)."""
    run = root / "run"
    if examples is None:
        examples = [450 if status == OK else 0 for status in statuses]
    (run / "final" / "unet").mkdir(parents=True)
    (run / "final" / "unet" / "config.json").write_text('{"in_channels": 1}')
    settings = Settings.from_run_config(
        {**default_run_config(), "strategy": strategy, "downlink": "fp32"}
    )
    (run / "config.json").write_text(json.dumps(settings.to_run_config()))
    (run / "summary.json").write_text("{}")
    ledger = Ledger(run)
    for partition, status in enumerate(statuses):
        ledger.book(
            DeviceRecord(
                1,
                100 + partition,
                partition,
                "phone",
                status,
                "cannot meet the deadline" if status == EXCLUDED else "",
                bits=32 if status == OK else 0,
                bits_min=4,
                bits_max=8,
                gain=1e-12,
                num_examples=examples[partition],
                bytes_up=1052100 if status == OK else 0,
                bytes_down=1052100 if status == OK else 0,
            )
        )
    ledger.write_round({"round": 1})
    return run


@pytest.mark.parametrize(
    "strategy, statuses, examples, message",
    [
        ("ondemand", [OK, OK], None, "chooses among bit-widths"),
        ("fedavg", [OK, FAILED], None, "partition 1 is failed"),
        ("fedavg", [OK, EXCLUDED], None, "its D_n was not booked"),
        # 450 samples fit the deadline: the other policy would train it
        ("fedavg", [OK, EXCLUDED], [450, 450], "trains partition 1, which the run"),
    ],
)
def test_a_run_another_policy_could_train_differently_is_refused(
    tmp_path, strategy, statuses, examples, message
):
    run = finished_run(tmp_path, strategy, statuses, examples)
    out = tmp_path / "priced"
    with pytest.raises(RepriceError, match=message):
        reprice(run, out, "optimal")
    assert not out.exists() or not any(out.iterdir())


def test_a_run_that_every_device_trained_is_priced_into_a_run_of_its_own(tmp_path):
    run = finished_run(tmp_path, "fedavg", [OK, OK])
    priced = reprice(run, tmp_path / "priced", "optimal")
    assert [p.name for p in (tmp_path / "priced").iterdir()] == [priced.name]
    config = json.loads((priced / "config.json").read_text())
    assert config["resource-policy"] == "optimal"
    summary = json.loads((priced / "summary.json").read_text())
    assert summary["resource_policy"] == "optimal"
    assert (priced / summary["priced_from"]).resolve() == run.resolve()
    assert summary["bytes_up"] == summary["bytes_down"] == 2 * 1052100
    assert summary["energy_j"] > 0


def test_a_device_both_policies_leave_out_is_booked_out_with_its_reason(tmp_path):
    """10^6 samples cannot be trained in fp32 within the deadline at any clock: the
    priced run leaves the device out with its reason and D_n, and gives the device
    that trained the whole uplink band, as to a device alone."""
    both = finished_run(tmp_path / "a", "fedavg", [OK, EXCLUDED], [450, 10**6])
    alone = finished_run(tmp_path / "b", "fedavg", [OK])
    rows = [
        read_csv(reprice(run, run.parent / "priced", "optimal") / "devices.csv")
        for run in (both, alone)
    ]
    trained, out = rows[0]
    assert out["status"] == EXCLUDED and "deadline" in out["reason"]
    assert int(out["num_examples"]) == 10**6
    assert float(out["energy_compute_j"]) == float(out["bandwidth_hz"]) == 0
    assert trained["status"] == OK and float(trained["energy_compute_j"]) > 0
    assert trained["bandwidth_hz"] == rows[1][0]["bandwidth_hz"]
