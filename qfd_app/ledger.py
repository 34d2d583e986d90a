"""The ledger: what every device did and sent in every round, and one line per round.

Rows are appended to `devices.csv` and `rounds.csv` in the run directory as the run goes,
so progress is on disk at every moment and a killed run loses nothing already booked.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

OK, FAILED, REJECTED = "ok", "failed", "rejected"


@dataclass(frozen=True)
class DeviceRecord:
    """One device in one round.

    status is `ok` (update aggregated), `failed` (the device returned an error or no reply)
    or `rejected` (its reply was malformed; `reason` says how). `bytes_up` counts the payload
    bytes of the update the server received (0 when nothing usable arrived).
    """

    round: int
    node_id: int
    partition_id: int
    status: str
    reason: str
    num_examples: int
    train_loss: float
    bytes_up: int


ROUND_FIELDS = (
    "round",
    "devices_ok",
    "devices_failed",
    "devices_rejected",
    "train_loss",
    "bytes_up",
    "bytes_down",
    "fid",
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
        self.records: list[DeviceRecord] = []
        self.broadcast_bytes: dict[int, int] = {}

    def book(self, record: DeviceRecord) -> None:
        record = dataclasses.replace(record, reason=one_line(record.reason))
        self.records.append(record)
        _append(self.devices_csv, [f.name for f in dataclasses.fields(DeviceRecord)], dataclasses.asdict(record))

    def book_broadcast(self, server_round: int, num_bytes: int) -> None:
        """The bytes of the global model sent down to the sampled devices (not charged to them)."""
        self.broadcast_bytes[server_round] = num_bytes

    def of_round(self, server_round: int) -> list[DeviceRecord]:
        return [r for r in self.records if r.round == server_round]

    def summarise(self, server_round: int) -> dict:
        """Counts, example-weighted train loss and uploaded bytes of one round."""
        rows = self.of_round(server_round)
        ok = [r for r in rows if r.status == OK]
        examples = sum(r.num_examples for r in ok)
        return {
            "round": server_round,
            "devices_ok": len(ok),
            "devices_failed": sum(r.status == FAILED for r in rows),
            "devices_rejected": sum(r.status == REJECTED for r in rows),
            "train_loss": sum(r.train_loss * r.num_examples for r in ok) / examples if examples else float("nan"),
            "bytes_up": sum(r.bytes_up for r in rows),
            "bytes_down": self.broadcast_bytes.get(server_round, 0),
        }

    def write_round(self, row: dict) -> None:
        """Append one line to rounds.csv; keys missing from `row` are left empty."""
        _append(self.rounds_csv, list(ROUND_FIELDS), {k: row.get(k, "") for k in ROUND_FIELDS})


def one_line(reason: str, limit: int = 300) -> str:
    """A reason fit for one CSV cell: Flower's error replies carry whole tracebacks, whose
    last `Message:` line (or last line) says what went wrong."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return ""
    message = next((line for line in reversed(lines) if "Message:" in line), lines[-1])
    return message[:limit]


def _append(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a ledger CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
