"""`qfd compare`: several strategies on one scenario, same seeds, partitions and
channels; one table.

Each variant is a real `flwr run` of this app on a private loopback SuperLink (Flower's
simulation engine, one virtual device per scenario device). Variants are written
`name[:option]`, each strategy saying what its option is (docs/strategies.md): `fedavg`,
`fedavg:optimal` (the solver sets its f, p, B), `fixed:4` (fixed at 4 bits;
plain `fixed` takes `--bits`), `ondemand`, and `ondemand:fp32-training` or
`fixed:4:fp32-training` (train in fp32, quantize only the upload; then γ = 0); and
`@<downlink>` after any of them sends the model down that way (`ondemand@delta`;
without it the `downlink` setting holds). Every
run gets the same `seed`, so the same devices are sampled, hold the same data, see the
same fading and draw the same noise; only the strategy differs.

Outputs under the comparison folder: `runs/<label>/<run dir>`, `comparison.csv`,
`comparison.md` and `plots/*.png` (`qfd report` redraws them).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qfd_app.runs.ledger import read_csv
from qfd_app.settings import Settings, SettingsError, default_run_config
from qfd_app.strategies import get_strategy, strategy_names
from qfd_app.strategies.planner import DOWNLINKS

FP32_TRAINING = "fp32-training"

TABLE_FIELDS = (
    "strategy",
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
    "coverage",
    "class_entropy",
    "devices_excluded",
    "deadline_misses",
    "demand_violations",
    "wall_s",
    "run_dir",
)


class CompareError(ValueError):
    """Options of a comparison that cannot run; the message names the option."""


@dataclass(frozen=True)
class Variant:
    """One strategy of a comparison: its label and the run-config keys that make it."""

    label: str
    overrides: dict


def parse_variants(spec: str, base: dict) -> list[Variant]:
    """`fedavg,fedavg:optimal,fixed:4,ondemand` → variants (see the module docstring).

    Each strategy of the registry says what its option means (`Strategy.parse_option`);
    `:fp32-training` after any of them trains in fp32 and quantizes only the upload.
    """
    variants = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        item, _, downlink = item.partition("@")
        name, _, option = item.partition(":")
        overrides: dict = {"strategy": name}
        if downlink:
            if downlink not in DOWNLINKS:
                raise CompareError(
                    f"--strategies: {item}@{downlink}: the downlink must be one of "
                    f"{', '.join(DOWNLINKS)}."
                )
            overrides["downlink"] = downlink
        if option.endswith(FP32_TRAINING):
            overrides["quantized-training"] = False
            option = option.removesuffix(FP32_TRAINING).rstrip(":")
        if name not in strategy_names():
            raise CompareError(
                f"--strategies: {name!r} is not a strategy; use "
                f"{', '.join(strategy_names())}."
            )
        try:
            more, option = get_strategy(name).parse_option(option, base)
        except ValueError as err:
            raise CompareError(f"--strategies: {item!r}: {err}.") from None
        overrides.update(more)
        label = ":".join(
            [
                name,
                *([option] if option else []),
                *([FP32_TRAINING] if "quantized-training" in overrides else []),
            ]
        ) + (f"@{downlink}" if downlink else "")
        variants.append(Variant(label, overrides))
    if not variants:
        raise CompareError("--strategies lists no strategy.")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise CompareError(f"--strategies lists a strategy twice: {', '.join(labels)}.")
    return variants


def check_settings(variants: list[Variant], base: dict) -> dict[str, Settings]:
    """Every variant's settings, validated before any run starts."""
    out = {}
    for variant in variants:
        try:
            out[variant.label] = Settings.from_run_config(
                {**default_run_config(), **base, **variant.overrides}
            )
        except SettingsError as err:
            raise CompareError(f"{variant.label}: {err}") from None
    return out


def run_comparison(
    scenario: str,
    variants: list[Variant],
    out: Path,
    *,
    base: dict,
    num_devices: int,
    echo: Callable[[str], None] = print,
    timeout_s: float = 3 * 3600,
) -> Path:
    """Run every variant through Flower's simulation engine and write the
    comparison into `out`."""
    from flwr.common.config import flatten_dict

    from qfd_app.runs.launch import flwr_run, run_config_arg, superlink

    check_settings(variants, {**base, "scenario": scenario})
    out.mkdir(parents=True, exist_ok=True)
    federation = f"num-supernodes={num_devices} client-resources-num-cpus=1"
    runs = {}
    with superlink(out / "flwr-home") as env:
        for variant in variants:
            folder = out / "runs" / variant.label.replace(":", "-")
            config = {
                **flatten_dict(base),
                "scenario": scenario,
                **variant.overrides,
                "output-dir": str(folder),
            }
            echo(f"== {variant.label}: {time.strftime('%H:%M:%S')}")
            with (out / f"{variant.label.replace(':', '-')}.log").open("w") as log:

                def on_line(line: str, log=log) -> None:
                    log.write(line + "\n")
                    if "[qfd]" in line:  # progress lines of the ServerApp
                        echo(line)

                done = flwr_run(
                    env,
                    run_config_arg(config),
                    federation,
                    timeout_s=timeout_s,
                    on_line=on_line,
                )
            found = sorted(folder.glob("*/summary.json"))
            if done.returncode != 0 or not found:
                raise CompareError(
                    f"{variant.label}: the run failed (exit "
                    f"{done.returncode}); see {log.name}"
                )
            runs[variant.label] = found[-1].parent
    (out / "runs.json").write_text(
        json.dumps({k: str(v) for k, v in runs.items()}, indent=1) + "\n"
    )
    write_comparison(out, runs)
    return out


def write_comparison(out: Path, runs: dict[str, Path]) -> list[dict]:
    """comparison.csv, comparison.md and plots from finished run directories."""
    from qfd_app.runs.report import plot_comparison

    rows = [_row(label, Path(run)) for label, run in runs.items()]
    first = rows[0]
    for row in rows:
        for key in ("energy", "bytes_up", "bytes_total"):
            column = "energy_j" if key == "energy" else key
            row[f"{key}_vs_first"] = _ratio(row[column], first[column])
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "comparison.md").write_text(format_table(rows))
    plot_comparison(runs, out / "plots")
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _row(label: str, run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    devices = read_csv(run_dir / "devices.csv")
    config = json.loads((run_dir / "config.json").read_text())
    # runs from before the downlink was counted: fp32, its bytes and energy unknown
    down = {k: summary.get(k, 0) for k in ("bytes_down", "energy_download_j")}
    return {
        "strategy": label,
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
        "fid": summary.get("final_fid", float("nan")),
        "coverage": summary.get("final_coverage", float("nan")),
        "class_entropy": summary.get("final_class_entropy", float("nan")),
        "demand_violations": sum(
            d["status"] == "ok"
            and not int(d["bits_min"]) <= int(d["bits"]) <= int(d["bits_max"])
            for d in devices
        ),
        "run_dir": str(run_dir),
    }


def format_table(rows: list[dict]) -> str:
    """The comparison as a markdown table; ratios are against the first strategy."""
    first = rows[0]["strategy"]
    lines = [
        "| strategy | downlink | rounds | energy J (compute / upload / download) "
        f"| energy vs {first} | uplink MB | downlink MB | total MB "
        f"| uplink vs {first} | total vs {first} | final FID | coverage "
        "| class entropy | excluded | deadline misses | demand violations | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} ({r['resource_policy']}) | {r['downlink']} "
            f"| {r['rounds']} | {r['energy_j']:.4g} ({r['energy_compute_j']:.3g} / "
            f"{r['energy_upload_j']:.3g} / {r['energy_download_j']:.3g}) "
            f"| {100 * r['energy_vs_first']:.1f} % | {r['bytes_up'] / 1e6:.3f} "
            f"| {r['bytes_down'] / 1e6:.3f} | {r['bytes_total'] / 1e6:.3f} "
            f"| {100 * r['bytes_up_vs_first']:.1f} % "
            f"| {100 * r['bytes_total_vs_first']:.1f} % "
            f"| {r['fid']:.3f} | {r['coverage']:.2f} | {r['class_entropy']:.3f} "
            f"| {r['devices_excluded']} | {r['deadline_misses']} | "
            f"{r['demand_violations']} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"
