"""Run once, price twice: a finished run's ledger under another resource policy.

The resource policy sets the clock, transmit power and bandwidth of the devices a round
trains, not what they train. When the strategy gives every device the same bit-width
whatever the policy (one width: `fedavg`'s fp32) and the other policy schedules the same
devices in every round, both runs train the same devices on the same data from the same
seeds, so they train the same model bit for bit (docs/results.md shows it for `fedavg`
over 48 rounds). Only the ledger differs: every device's plan is solved again under the
other policy (`planner.plan_round`, on the states the run booked: class, gain, D_n) and
booked with the bytes the run really exchanged (`ledger.planned_record`). A device the
run left out (`excluded`, e.g. fp32 cannot meet the deadline) must be left out by the
other policy too; it is booked again with that policy's reason.

`reprice` writes that run as a run directory of its own: config.json with the other
policy, devices.csv and rounds.csv re-booked (rounds.csv keeps the run's scores and host
times), summary.json with the new totals and `priced_from` (the run's path from it), and
the run's final-eval.json. The final model stays in the run priced from. A run it cannot
price (more than one width, a device that failed or was rejected, one the other policy
would leave out or would train though the run left it out, or a left-out device booked
without its D_n by an older qfd) raises `RepriceError` with the reason: such a run must
train.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from qfd_app.edge.state import DeviceState
from qfd_app.runs.ledger import (
    EXCLUDED,
    OK,
    Ledger,
    excluded_record,
    planned_record,
    read_csv,
)
from qfd_app.settings import run_dir_settings
from qfd_app.strategies.planner import History, plan_round, round_physics

# rounds.csv columns that follow from the plan; the rest (scores, host times) stay
PRICED_COLUMNS = (
    "deadline_misses",
    "energy_j",
    "energy_compute_j",
    "energy_upload_j",
    "energy_download_j",
)


class RepriceError(ValueError):
    """A run that cannot be priced under another policy without training again."""


def reprice(source: Path, parent: Path, resource_policy: str) -> Path:
    """Price the finished run `source` under `resource_policy`; returns the new run
    directory, written whole into `parent` (named after `source` and the policy).

    Raises
    ------
    RepriceError
        When the other policy could train another model (see the module docstring).
    """
    source = Path(source)
    settings = run_dir_settings(source, **{"resource-policy": resource_policy})
    rules = settings.rules()
    if len(rules.widths()) != 1:
        raise RepriceError(
            f"{rules.label()} chooses among bit-widths {rules.widths()}, so another "
            "policy may choose others and train another model"
        )
    if not (source / "summary.json").exists():
        raise RepriceError(f"{source} is not a finished run (no summary.json)")
    scenario = settings.load_scenario()
    unet = json.loads((source / "final" / "unet" / "config.json").read_text())
    physics = round_physics(settings, scenario, unet["in_channels"])
    classes = {c.name: c for c in scenario.classes}

    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pricing-", dir=parent))
    try:
        ledger, booked = Ledger(work), Ledger(source)
        sent_before: set[int] = set()
        for server_round in sorted({r.round for r in booked.records}):
            rows = booked.of_round(server_round)
            sampled = {r.partition_id for r in rows}
            # under `delta` a device's first download is the fp32 model (a resync)
            resync = sampled - sent_before if settings.downlink == "delta" else set()
            sent_before |= {r.partition_id for r in rows if r.status == OK}
            for record in _price_round(rows, rules, physics, classes, resync):
                ledger.book(record)
        for row in read_csv(source / "rounds.csv"):
            priced = ledger.summarise(int(row["round"]))
            ledger.write_round({**row, **{k: priced[k] for k in PRICED_COLUMNS}})
        dest = parent / f"{source.name}-priced-{settings.resources}"
        summary = json.loads((source / "summary.json").read_text())
        summary.update(
            resource_policy=settings.resources,
            **ledger.totals(),
            # relative: a comparison folder may move (docs/results/ is in the repo)
            priced_from=os.path.relpath(source.resolve(), dest.resolve()),
        )
        (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (work / "config.json").write_text(
            json.dumps(settings.to_run_config(), indent=2) + "\n"
        )
        if (source / "final-eval.json").exists():
            shutil.copy2(source / "final-eval.json", work / "final-eval.json")
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def _price_round(rows, rules, physics, classes, resync):
    """The records of one booked round, planned again under `physics`' policy."""
    trouble = [r for r in rows if r.status not in (OK, EXCLUDED)]
    if trouble:
        raise RepriceError(
            f"round {rows[0].round}: partition {trouble[0].partition_id} is "
            f"{trouble[0].status} ({trouble[0].reason}); only a run where "
            "every sampled device trained or was left out can be priced again"
        )
    states = {r.partition_id: _state(r, classes) for r in rows}
    plan = plan_round(rules, physics, states, History(), resync)
    for r in rows:
        assignment = plan.assignments.get(r.partition_id)
        if assignment is None:
            n = plan.partitions.index(r.partition_id)
            reason = plan.allocation.reason[n]
            if r.status == OK:
                raise RepriceError(
                    f"round {r.round}: {rules.resource_policy} leaves partition "
                    f"{r.partition_id} out ({reason}), so it trains another model"
                )
            yield excluded_record(
                r.round, r.node_id, r.partition_id, states[r.partition_id], reason
            )
            continue
        if r.status == EXCLUDED:
            raise RepriceError(
                f"round {r.round}: {rules.resource_policy} trains partition "
                f"{r.partition_id}, which the run left out ({r.reason}), so it "
                "trains another model"
            )
        yield planned_record(
            r.round,
            r.node_id,
            assignment,
            OK,
            "",
            noise_w_per_hz=physics.network.noise_w_per_hz,
            deadline_s=physics.network.deadline_s,
            sent=r.bytes_up,
            metrics={
                "num-examples": r.num_examples,
                "train-loss": r.train_loss,
                "train-s": r.host_train_s,
                "encode-s": r.host_encode_s,
            },
            ray_node=r.ray_node,
            bytes_down=r.bytes_down,
        )


def _state(record, classes):
    """The state the device reported, as the run booked it (its class by name, with
    the demand it reported; the distance is not booked and not needed)."""
    if record.status == EXCLUDED and record.num_examples <= 0:
        raise RepriceError(
            f"round {record.round}: partition {record.partition_id} was left out "
            "and its D_n was not booked (a run of a qfd before 2026-12-03), so "
            "another policy's plan for it cannot be solved"
        )
    if record.device_class not in classes:
        raise RepriceError(
            f"round {record.round}: partition {record.partition_id} is of class "
            f"{record.device_class!r}, which the scenario does not have"
        )
    profile = replace(
        classes[record.device_class],
        bits_min=record.bits_min,
        bits_max=record.bits_max,
    )
    return DeviceState(profile, math.nan, record.gain, record.num_examples)
