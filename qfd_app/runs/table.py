"""The tables of a comparison: one row per (strategy, seed) from the finished run
directories, and per strategy the mean and 95 % interval over seeds, with the paired
ratio and difference against the first strategy (`stats`).

Files: `comparison.csv` (the runs), `comparison-summary.csv` (one row per strategy and
metric) and `comparison.md` (both, as markdown).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from qfd_app.runs.ledger import read_csv
from qfd_app.runs.stats import mean_interval, paired_difference, paired_ratio

RUN_FIELDS = (
    "strategy",
    "seed",
    "resource_policy",
    "downlink",
    "rounds",
    "energy_j",
    "energy_compute_j",
    "energy_upload_j",
    "energy_download_j",
    "energy_without_download_j",
    "bytes_up",
    "bytes_down",
    "bytes_total",
    "energy_vs_first",
    "bytes_up_vs_first",
    "bytes_total_vs_first",
    "fid",
    "fid_se",
    "kid",
    "kid_se",
    "precision",
    "recall",
    "draws",
    "coverage",
    "class_entropy",
    "devices_excluded",
    "deadline_misses",
    "demand_violations",
    "wall_s",
    "run_dir",
)

# what the summary gives a mean and an interval over seeds
SUMMARY_METRICS = (
    "energy_j",
    "energy_without_download_j",
    "bytes_up",
    "bytes_down",
    "bytes_total",
    "fid",
    "kid",
    "precision",
    "recall",
    "deadline_misses",
    "demand_violations",
)
SUMMARY_FIELDS = (
    "strategy",
    "metric",
    "seeds",
    "mean",
    "low",
    "high",
    "ratio",
    "ratio_low",
    "ratio_high",
    "difference",
    "difference_low",
    "difference_high",
)
NAN = float("nan")


def run_row(label: str, run_dir: Path) -> dict:
    """One finished run as a row of `comparison.csv`.

    Quality is the final evaluation's mean over its draws (`final-eval-samples`); a run
    without one (older, or `final-eval-samples = 0`) gives its last round's scores.
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    devices = read_csv(run_dir / "devices.csv")
    config = json.loads((run_dir / "config.json").read_text())
    # runs from before the downlink was counted: fp32, its bytes and energy unknown
    down = {k: summary.get(k, 0) for k in ("bytes_down", "energy_download_j")}

    def final(key: str) -> float:
        return summary.get(f"final_{key}_mean", summary.get(f"final_{key}", NAN))

    return {
        "strategy": label,
        "seed": config["seed"],
        "resource_policy": summary["resource_policy"],
        "downlink": config.get("downlink", "fp32"),
        "rounds": summary["rounds"],
        **{
            k: summary[k]
            for k in (
                "energy_j",
                "energy_compute_j",
                "energy_upload_j",
                "bytes_up",
                "devices_excluded",
                "deadline_misses",
                "wall_s",
            )
        },
        **down,
        "energy_without_download_j": summary["energy_j"] - down["energy_download_j"],
        "bytes_total": summary["bytes_up"] + down["bytes_down"],
        **{k: final(k) for k in ("fid", "kid", "precision", "recall")},
        **{f"{k}_se": summary.get(f"final_{k}_se", NAN) for k in ("fid", "kid")},
        "draws": summary.get("final_draws", 1),
        "coverage": summary.get("final_coverage", NAN),
        "class_entropy": summary.get("final_class_entropy", NAN),
        "demand_violations": sum(
            d["status"] == "ok"
            and not int(d["bits_min"]) <= int(d["bits"]) <= int(d["bits_max"])
            for d in devices
        ),
        "run_dir": str(run_dir),
    }


def add_ratios(rows: list[dict]) -> None:
    """`*_vs_first`: each row against the first strategy's run on the same seed."""
    first_label = rows[0]["strategy"]
    firsts = {r["seed"]: r for r in rows if r["strategy"] == first_label}
    for row in rows:
        first = firsts.get(row["seed"])
        for key, column in (
            ("energy", "energy_j"),
            ("bytes_up", "bytes_up"),
            ("bytes_total", "bytes_total"),
        ):
            ref = first[column] if first else 0
            row[f"{key}_vs_first"] = row[column] / ref if ref else NAN


def summarise(rows: list[dict]) -> list[dict]:
    """Per strategy and metric: the mean over seeds with its 95 % interval, and
    against the first strategy the paired ratio and difference over the seeds both
    ran (`stats`)."""
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    by_seed = {
        label: {r["seed"]: r for r in rows if r["strategy"] == label}
        for label in labels
    }
    reference = by_seed[labels[0]]
    out = []
    for label in labels:
        runs = by_seed[label]
        paired = sorted(set(runs) & set(reference))
        for metric in SUMMARY_METRICS:
            values = [float(runs[s][metric]) for s in sorted(runs)]
            mine = [float(runs[s][metric]) for s in paired]
            theirs = [float(reference[s][metric]) for s in paired]
            row = {"strategy": label, "metric": metric, "seeds": len(runs)}
            for prefix, interval in (
                ("", mean_interval(values)),
                ("ratio_", paired_ratio(mine, theirs)),
                ("difference_", paired_difference(mine, theirs)),
            ):
                row[prefix.rstrip("_") or "mean"] = interval.mean
                row[f"{prefix}low"], row[f"{prefix}high"] = interval.low, interval.high
            out.append(row)
    return out


def write_tables(out: Path, runs: list[tuple[str, Path]]) -> tuple[list, list]:
    """comparison.csv, comparison-summary.csv and comparison.md from finished runs
    `(label, run directory)`; returns the run rows and the summary rows."""
    rows = [run_row(label, Path(run)) for label, run in runs]
    add_ratios(rows)
    summary = summarise(rows)
    relative = [
        {**r, "run_dir": os.path.relpath(r["run_dir"], out)} for r in rows
    ]  # the folder may move
    for name, fields, data in (
        ("comparison.csv", RUN_FIELDS, relative),
        ("comparison-summary.csv", SUMMARY_FIELDS, summary),
    ):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(data)
    (out / "comparison.md").write_text(format_tables(rows, summary))
    return rows, summary


def _cell(summary: list[dict], label: str, metric: str, what: str = "") -> str:
    """`mean ± half-width` of a metric (or of its paired ratio / difference)."""
    row = next(r for r in summary if r["strategy"] == label and r["metric"] == metric)
    prefix = f"{what}_" if what else ""
    mean = row[what or "mean"]
    low, high = row[f"{prefix}low"], row[f"{prefix}high"]
    scale, unit, fmt = 1.0, "", ".3g"
    if metric.startswith("bytes") and not what:
        scale, fmt = 1e-6, ".3g"
    if what == "ratio":
        scale, unit, fmt = 100.0, " %", ".1f"
    if math.isnan(mean):
        return "–"
    text = format(scale * mean, fmt)
    if not math.isnan(low):
        half = (high - low) / 2
        # the same value on every seed: rounding noise, not a spread
        half = 0.0 if half <= 1e-9 * abs(mean) else half
        text += f" ± {format(scale * half, fmt)}"
    return text + unit


# the summary table's columns: (header, metric, "" for the mean or ratio/difference);
# "{first}" is the reference strategy
SUMMARY_COLUMNS = (
    ("energy J", "energy_j", ""),
    ("energy vs {first}", "energy_j", "ratio"),
    ("uplink MB", "bytes_up", ""),
    ("uplink vs {first}", "bytes_up", "ratio"),
    ("downlink MB", "bytes_down", ""),
    ("total MB", "bytes_total", ""),
    ("total vs {first}", "bytes_total", "ratio"),
    ("final FID", "fid", ""),
    ("FID − {first}", "fid", "difference"),
    ("KID", "kid", ""),
    ("KID − {first}", "kid", "difference"),
    ("precision", "precision", ""),
    ("recall", "recall", ""),
    ("deadline misses", "deadline_misses", ""),
    ("demand violations", "demand_violations", ""),
)


def format_tables(rows: list[dict], summary: list[dict]) -> str:
    """Markdown: the summary over seeds (mean ± 95 % half-width; ratios and
    differences paired by seed against the first strategy), then every run."""
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    first = labels[0]
    seeds = sorted({r["seed"] for r in rows})
    headers = [header.format(first=first) for header, _, _ in SUMMARY_COLUMNS]
    lines = [
        f"Seeds {', '.join(map(str, seeds))}: mean ± half-width of the 95 % "
        f"interval (Student t); 'vs {first}' is paired by seed.",
        "",
        "| strategy | seeds | " + " | ".join(headers) + " |",
        "|---|---|" + "---|" * len(headers),
    ]
    for label in labels:
        n = next(r["seeds"] for r in summary if r["strategy"] == label)
        cells = [_cell(summary, label, m, what) for _, m, what in SUMMARY_COLUMNS]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Every run (quality: the final evaluation's mean ± standard error over its "
        "draws):",
        "",
        "| strategy | seed | downlink | energy J (compute / upload / download) "
        "| uplink MB | downlink MB | total MB | final FID | KID | precision | recall "
        "| excluded | deadline misses | demand violations | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} ({r['resource_policy']}) | {r['seed']} "
            f"| {r['downlink']} | {r['energy_j']:.4g} ({r['energy_compute_j']:.3g} / "
            f"{r['energy_upload_j']:.3g} / {r['energy_download_j']:.3g}) "
            f"| {r['bytes_up'] / 1e6:.3f} | {r['bytes_down'] / 1e6:.3f} "
            f"| {r['bytes_total'] / 1e6:.3f} | {_with_se(r['fid'], r['fid_se'])} "
            f"| {_with_se(r['kid'], r['kid_se'], '.2e')} | {r['precision']:.3f} "
            f"| {r['recall']:.3f} | {r['devices_excluded']} | {r['deadline_misses']} "
            f"| {r['demand_violations']} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _with_se(value: float, se: float, fmt: str = ".3f") -> str:
    text = format(value, fmt)
    return text if math.isnan(se) else f"{text} ± {format(se, fmt)}"
