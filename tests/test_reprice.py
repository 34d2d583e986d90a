"""`runs.reprice` refuses a run that another policy could train differently, and
leaves nothing behind when it does. (That a priced run is the other policy's run is
shown on real runs: tests/integration/test_plan_is_the_run.py.)"""

import json

import pytest

from qfd_app.runs.ledger import EXCLUDED, OK, DeviceRecord, Ledger
from qfd_app.runs.reprice import RepriceError, reprice
from qfd_app.settings import Settings, default_run_config


def finished_run(root, strategy, statuses):
    """A finished run's files as `reprice` reads them: one round, one device per
    status (phones, 450 samples each)."""
    run = root / "run"
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
                num_examples=450 if status == OK else 0,
                bytes_up=1052100 if status == OK else 0,
                bytes_down=1052100 if status == OK else 0,
            )
        )
    ledger.write_round({"round": 1})
    return run


@pytest.mark.parametrize(
    "strategy, statuses, message",
    [
        ("ondemand", [OK, OK], "chooses among bit-widths"),
        ("fedavg", [OK, EXCLUDED], "partition 1 is excluded"),
    ],
)
def test_a_run_another_policy_could_train_differently_is_refused(
    tmp_path, strategy, statuses, message
):
    run = finished_run(tmp_path, strategy, statuses)
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
