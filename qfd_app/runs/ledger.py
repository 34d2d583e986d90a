"""The ledger: what every device did and sent in every round, and one line per round.

Rows are appended to `devices.csv` and `rounds.csv` in the run directory as
the run goes, so progress is on disk at every moment and a killed run loses
nothing already booked. A ledger opened on a run directory that has a devices.csv
(a resumed run) goes on from it.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfd_app.edge.energy import uplink_rate_bps

OK, FAILED, REJECTED, EXCLUDED = "ok", "failed", "rejected", "excluded"
DEADLINE_RTOL = 1e-9


@dataclass(frozen=True)
class DeviceRecord:
    """One sampled device in one round (SI units).

    status is `ok` (update aggregated), `failed` (the device returned an error or
    no reply), `rejected` (its state or reply was malformed; `reason` says how) or
    `excluded` (the solver left it out, e.g. it cannot meet the deadline; not trained).
    bits_min and bits_max are the demand the device reported; the plan columns (bits,
    cpu_hz, power_w, bandwidth_hz) are what the server assigned. `bytes_up` counts the
    payload bytes of the update the server received; `upload_s` and `energy_upload_j`
    are computed from those bytes at the assigned rate, `energy_compute_j` from the
    assigned clock. `bytes_down` counts the bytes of the model the server sent the
    device; `download_s` and `energy_download_j` are computed from them at the planned
    downlink rate and the device's receive power. `deadline_missed` flags
    download_s + compute_s + upload_s > the deadline.
    host_train_s and host_encode_s are the wall times the simulation host really took to
    train and encode (not the modelled device's); `ray_node` the Ray node its ClientApp
    ran on (empty outside Ray). A device whose reply never came is charged nothing
    (nothing is known of it), though the bytes sent to it are booked.
    """

    round: int
    node_id: int
    partition_id: int
    device_class: str
    status: str
    reason: str
    bits: int = 0
    bits_min: int = 0
    bits_max: int = 0
    cpu_hz: float = 0.0
    power_w: float = 0.0
    bandwidth_hz: float = 0.0
    gain: float = 0.0
    compute_s: float = 0.0
    upload_s: float = 0.0
    energy_compute_j: float = 0.0
    energy_upload_j: float = 0.0
    bytes_up: int = 0
    deadline_missed: bool = False
    num_examples: int = 0
    train_loss: float = float("nan")
    host_train_s: float = 0.0
    host_encode_s: float = 0.0
    ray_node: str = ""
    bytes_down: int = 0
    download_s: float = 0.0
    energy_download_j: float = 0.0

    @property
    def energy_j(self) -> float:
        return self.energy_download_j + self.energy_compute_j + self.energy_upload_j


def planned_record(
    server_round: int,
    node: int,
    plan: Any,
    status: str,
    reason: str,
    *,
    noise_w_per_hz: float,
    deadline_s: float,
    sent: int = 0,
    metrics: dict | None = None,
    ray_node: str = "",
    bytes_down: int = 0,
) -> DeviceRecord:
    """The row of a device that was planned (`strategies.planner.Assignment`):
    energy from its plan and the bytes exchanged — upload time = bits the server
    received / the assigned rate, download time = bits the server sent (`bytes_down`)
    / the planned downlink rate, receive energy = the receive power × that time.

    A device whose reply never came (`failed`) is charged nothing:
    nothing is known of it.
    """
    charged = status != FAILED
    download_s = 0.0
    if bytes_down and charged:
        download_s = 8.0 * bytes_down / plan.download_rate_bps
    upload_s = 0.0
    if sent:
        upload_s = float(
            8
            * sent
            / uplink_rate_bps(
                plan.bandwidth_hz, plan.gain, plan.power_w, noise_w_per_hz
            )
        )
    compute_s = plan.compute_s if charged else 0.0
    metrics = metrics or {}
    return DeviceRecord(
        round=server_round,
        node_id=node,
        partition_id=plan.partition_id,
        device_class=plan.device_class,
        status=status,
        reason=reason,
        bits=plan.bits,
        bits_min=plan.bits_min,
        bits_max=plan.bits_max,
        cpu_hz=plan.cpu_hz,
        power_w=plan.power_w,
        bandwidth_hz=plan.bandwidth_hz,
        gain=plan.gain,
        compute_s=compute_s,
        upload_s=upload_s,
        energy_compute_j=plan.energy_compute_j if charged else 0.0,
        energy_upload_j=plan.power_w * upload_s,
        bytes_up=sent,
        deadline_missed=charged
        and download_s + compute_s + upload_s > deadline_s * (1 + DEADLINE_RTOL),
        num_examples=metrics.get("num-examples", 0),
        train_loss=metrics.get("train-loss", math.nan),
        host_train_s=metrics.get("train-s", 0.0),
        host_encode_s=metrics.get("encode-s", 0.0),
        ray_node=ray_node,
        bytes_down=bytes_down,
        download_s=download_s,
        energy_download_j=plan.receive_power_w * download_s,
    )


def excluded_record(
    server_round: int, node: int, partition: int, state: Any, reason: str
) -> DeviceRecord:
    """The row of a device the plan left out (`state`: the `edge.state.DeviceState` it
    reported): its demand, channel and D_n, so the round can be planned again from
    the ledger (`runs.reprice`); nothing trained, sent or charged."""
    profile = state.device_class
    return DeviceRecord(
        server_round,
        node,
        partition,
        profile.name,
        EXCLUDED,
        reason,
        bits_min=profile.bits_min,
        bits_max=profile.bits_max,
        gain=state.gain,
        num_examples=state.num_examples,
    )


# Wall time of a round's phases on the simulation host (s): the server's query and
# solve, the slowest device's training and encoding, the server's decode (with booking),
# aggregation, checkpoint and evaluation, and the whole round.
PHASES = (
    "query_s",
    "solve_s",
    "train_s",
    "encode_s",
    "decode_s",
    "aggregate_s",
    "checkpoint_s",
    "evaluate_s",
    "round_s",
)

ROUND_FIELDS = (
    "round",
    "devices_ok",
    "devices_failed",
    "devices_rejected",
    "devices_excluded",
    "deadline_misses",
    "train_loss",
    "energy_j",
    "energy_compute_j",
    "energy_upload_j",
    "energy_download_j",
    "bytes_up",
    "bytes_down",
    *PHASES,
    "fid",
    "kid",
    "precision",
    "recall",
    "coverage",
    "class_entropy",
    "inception_score",
    "wall_s",
)


class Ledger:
    """Books device records and round rows, writing both CSV files as it goes."""

    def __init__(self, run_dir: Path):
        self.devices_csv = Path(run_dir) / "devices.csv"
        self.rounds_csv = Path(run_dir) / "rounds.csv"
        self.records = (
            [_parse_record(row) for row in read_csv(self.devices_csv)]
            if self.devices_csv.exists()
            else []
        )
        self.phases: dict[int, dict[str, float]] = {}

    def book(self, record: DeviceRecord) -> None:
        record = dataclasses.replace(record, reason=one_line(record.reason))
        self.records.append(record)
        _append(
            self.devices_csv,
            [f.name for f in dataclasses.fields(DeviceRecord)],
            dataclasses.asdict(record),
        )

    def book_phases(self, server_round: int, **seconds: float) -> None:
        """Wall times of phases of a round (keys of `PHASES`)."""
        unknown = set(seconds) - set(PHASES)
        if unknown:
            raise ValueError(
                f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}"
            )
        self.phases.setdefault(server_round, {}).update(seconds)

    def of_round(self, server_round: int) -> list[DeviceRecord]:
        return [r for r in self.records if r.round == server_round]

    def summarise(self, server_round: int) -> dict:
        """Counts, example-weighted train loss, device energy and uploaded
        bytes of one round."""
        rows = self.of_round(server_round)
        ok = [r for r in rows if r.status == OK]
        examples = sum(r.num_examples for r in ok)
        return {
            "round": server_round,
            "devices_ok": len(ok),
            "devices_failed": sum(r.status == FAILED for r in rows),
            "devices_rejected": sum(r.status == REJECTED for r in rows),
            "devices_excluded": sum(r.status == EXCLUDED for r in rows),
            "deadline_misses": sum(r.deadline_missed for r in rows),
            "train_loss": sum(r.train_loss * r.num_examples for r in ok) / examples
            if examples
            else float("nan"),
            "energy_j": sum(r.energy_j for r in rows),
            "energy_compute_j": sum(r.energy_compute_j for r in rows),
            "energy_upload_j": sum(r.energy_upload_j for r in rows),
            "energy_download_j": sum(r.energy_download_j for r in rows),
            "bytes_up": sum(r.bytes_up for r in rows),
            "bytes_down": sum(r.bytes_down for r in rows),
            "train_s": max((r.host_train_s for r in rows), default=0.0),
            "encode_s": max((r.host_encode_s for r in rows), default=0.0),
            **self.phases.get(server_round, {}),
        }

    def totals(self) -> dict:
        """Sums over the whole run: device energy, uplink and downlink bytes,
        exclusions, deadline misses."""
        rows = self.records
        return {
            "energy_j": sum(r.energy_j for r in rows),
            "energy_compute_j": sum(r.energy_compute_j for r in rows),
            "energy_upload_j": sum(r.energy_upload_j for r in rows),
            "energy_download_j": sum(r.energy_download_j for r in rows),
            "bytes_up": sum(r.bytes_up for r in rows),
            "bytes_down": sum(r.bytes_down for r in rows),
            "devices_excluded": sum(r.status == EXCLUDED for r in rows),
            "deadline_misses": sum(r.deadline_missed for r in rows),
            "ray_nodes": sorted({r.ray_node for r in rows if r.ray_node}),
        }

    def write_round(self, row: dict) -> None:
        """Append one line to rounds.csv; keys missing from `row` are left empty."""
        _append(
            self.rounds_csv,
            list(ROUND_FIELDS),
            {k: row.get(k, "") for k in ROUND_FIELDS},
        )


def one_line(reason: str, limit: int = 300) -> str:
    """A reason fit for one CSV cell: Flower's error replies carry whole tracebacks,
    whose last `Message:` line (or last line) says what went wrong."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return ""
    message = next((line for line in reversed(lines) if "Message:" in line), lines[-1])
    return message[:limit]


def _append(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()
    if not new:
        _upgrade(path, fields)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _upgrade(path: Path, fields: list[str]) -> None:
    """Rewrite a CSV an older run wrote with fewer columns under the header `fields`,
    its rows' new cells empty (read back as the field's default), so that the rows
    appended next line up with the header."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header == fields or not set(header) < set(fields):
        return
    rows = read_csv(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


_FROM_CSV = {
    "int": int,
    "float": float,
    "str": str,
    "bool": lambda text: text == "True",
}


def _parse_record(row: dict[str, str]) -> DeviceRecord:
    """A devices.csv row back as the record that wrote it (a column that an older run
    did not write, or left empty, takes its default)."""
    return DeviceRecord(
        **{
            f.name: _FROM_CSV[f.type](row[f.name])
            for f in dataclasses.fields(DeviceRecord)
            if f.name in row and (row[f.name] != "" or f.type == "str")
        }
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a ledger CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
