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
same fading and draw the same noise; only the strategy differs. With several seeds every
strategy runs on every seed (paired), seed after seed.

Run once, price twice: a variant that differs from one listed before it only in its
resource policy (`fedavg` after `fedavg:optimal`) trains the same model when its
strategy has one bit-width, so it is priced from that run's ledger (`reprice`) instead
of training again, unless the other policy would leave a device out (then it runs) or
`price_twice=False`.

A comparison is kept in one folder, `runs/<label>/seed-<seed>/<run dir>` for its runs:
run again with the same scenario and settings, it keeps the finished runs, resumes an
unfinished one from its checkpoint and starts the rest (more seeds or strategies can be
added that way; the tables hold every finished run of the folder, this call's strategies
first). Tables and plots (`table`, `report.plot_comparison`):
`comparison.csv`, `comparison-summary.csv`, `comparison.md` and `plots/*.png`
(`qfd report` redraws them).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from qfd_app.runs.checkpoint import latest_checkpoint
from qfd_app.runs.reprice import RepriceError, reprice
from qfd_app.settings import Settings, SettingsError, default_run_config
from qfd_app.strategies import get_strategy, strategy_names
from qfd_app.strategies.planner import DOWNLINKS

FP32_TRAINING = "fp32-training"


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


def parse_seeds(spec: str, base: dict) -> list[int]:
    """`--seeds 0,1,2` → [0, 1, 2]; empty: none given (the run config's seed)."""
    if not spec.strip():
        return []
    if "seed" in base:
        raise CompareError(
            "--seeds and a 'seed' in --run-config: give the seeds in one place."
        )
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise CompareError(
            f"--seeds must be distinct integers ≥ 0, comma-separated; got {spec!r}."
        )
    return seeds


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


def price_sources(variants: list[Variant], settings: dict[str, Settings]) -> dict:
    """label → the label of the variant listed before it that it can be priced from:
    the same settings but another resource policy, and one bit-width (`reprice`)."""
    sources = {}
    for i, variant in enumerate(variants):
        mine = settings[variant.label]
        if len(mine.rules().widths()) != 1:
            continue
        for other in variants[:i]:
            theirs = settings[other.label]
            if theirs.resources != mine.resources and mine == replace(
                theirs, resource_policy=mine.resource_policy
            ):
                sources[variant.label] = other.label
                break
    return sources


def comparison_key(scenario: str, base: dict, num_devices: int) -> dict:
    """What makes two calls one comparison: the scenario, the common settings and the
    number of devices (strategies and seeds may grow)."""
    return {"scenario": scenario, "settings": base, "devices": num_devices}


def default_folder(key: dict) -> Path:
    """`~/qfd-runs/compare-<scenario>-<digest of the key>`: the same arguments find
    the same folder again."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    name = Path(key["scenario"]).stem
    return Path(f"~/qfd-runs/compare-{name}-{digest}").expanduser()


def check_folder(out: Path, key: dict) -> None:
    """Refuse a folder that holds a comparison with other scenario or settings."""
    path = out / "comparison.json"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
        return
    saved = json.loads(path.read_text())
    differ = [
        f"{k} {saved.get(k)!r} there, {v!r} now"
        for k, v in key.items()
        if saved.get(k) != json.loads(json.dumps(v))
    ]
    if differ:
        raise CompareError(
            f"--output: {out} holds a comparison with other arguments "
            f"({'; '.join(differ)}); use another folder."
        )


def run_state(folder: Path) -> tuple[str, Path | None]:
    """Where the run of one (strategy, seed) stands in its folder: `("done", run)`
    once it wrote summary.json, `("resume", run)` for an unfinished run with a complete
    checkpoint (the newest such), else `("new", None)`."""
    runs = sorted(p.parent for p in folder.glob("*/config.json"))
    for run in reversed(runs):
        if (run / "summary.json").exists():
            return "done", run
    for run in reversed(runs):
        if latest_checkpoint(run) is not None:
            return "resume", run
    return "new", None


class Progress:
    """One line per round: which run of how many, its round, and the time left,
    estimated from the seconds per round measured so far in this call."""

    ROUND = re.compile(r"\[qfd\] round (\d+)/(\d+)")

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.spent_s, self.timed = 0.0, 0  # seconds and rounds measured
        self.name, self.later_rounds, self.last = "", 0, time.monotonic()

    def start(self, name: str, later_rounds: int) -> None:
        """A run starts; `later_rounds`: the rounds of the runs still to come."""
        self.name, self.later_rounds = name, later_rounds
        self.last = time.monotonic()
        self.echo(f"{name}: started {time.strftime('%H:%M:%S')}")

    def line(self, line: str) -> None:
        match = self.ROUND.search(line)
        if match is None:
            return
        now = time.monotonic()
        self.spent_s += now - self.last
        self.timed += 1
        self.last = now
        rate = self.spent_s / self.timed
        done, total = map(int, match.groups())
        self.echo(
            f"{self.name}: round {done}/{total}; left: this run "
            f"{_minutes(rate * (total - done))}, the comparison "
            f"{_minutes(rate * (total - done + self.later_rounds))}"
        )


def _minutes(seconds: float) -> str:
    minutes = round(seconds / 60)
    return (
        f"{minutes // 60} h {minutes % 60:02d} min"
        if minutes >= 60
        else f"{minutes} min"
    )


def run_comparison(
    scenario: str,
    variants: list[Variant],
    out: Path | None,
    *,
    base: dict,
    num_devices: int,
    seeds: Sequence[int] = (),
    echo: Callable[[str], None] = print,
    timeout_s: float = 3 * 3600,
    price_twice: bool = True,
) -> Path:
    """Run every variant on every seed through Flower's simulation engine (keeping
    finished runs and resuming unfinished ones in `out`, by default
    `default_folder`; pricing a variant from another's run where it can, unless
    `price_twice` is false) and write the comparison; returns the folder.

    Raises
    ------
    CompareError
        Before any run, for bad settings or a folder of another comparison; after the
        runs, naming those that failed (the others are in the tables).
    """
    from flwr.common.config import flatten_dict

    from qfd_app.runs.launch import flwr_run, run_config_arg, superlink

    base = flatten_dict(base)
    seeds = list(seeds) or [base.get("seed", default_run_config()["seed"])]
    for seed in seeds:
        settings = check_settings(
            variants, {**base, "scenario": scenario, "seed": seed}
        )
    key = comparison_key(scenario, base, num_devices)
    out = Path(out or default_folder(key)).expanduser().resolve()
    echo(f"comparison folder: {out}")
    check_folder(out, key)
    jobs = [
        (variant, seed, out / "runs" / _slug(variant.label) / f"seed-{seed}")
        for seed in seeds
        for variant in variants
    ]
    rounds = [settings[variant.label].num_server_rounds for variant, _, _ in jobs]
    sources = price_sources(variants, settings) if price_twice else {}
    to_run = [run_state(folder)[0] != "done" for _, _, folder in jobs]
    progress = Progress(echo)
    federation = f"num-supernodes={num_devices} client-resources-num-cpus=1"
    finished, failed = [], []
    with superlink(out / "flwr-home") as env:
        for number, (variant, seed, folder) in enumerate(jobs, 1):
            name = f"[{number}/{len(jobs)}] {variant.label} seed {seed}"
            state, run = run_state(folder)
            if state == "done":
                echo(f"{name}: finished before, kept ({run})")
                finished.append((variant.label, run))
                continue
            source = sources.get(variant.label)
            if source:
                try:
                    run = _priced(
                        out / "runs" / _slug(source) / f"seed-{seed}",
                        folder,
                        settings[variant.label].resources,
                    )
                    echo(f"{name}: priced from {source}'s run ({run})")
                    finished.append((variant.label, run))
                    continue
                except RepriceError as err:
                    echo(f"{name}: not priced from {source}'s run ({err}); it trains")
            config = {
                **base,
                "scenario": scenario,
                **variant.overrides,
                "seed": seed,
                "output-dir": str(folder),
                **({"resume": str(run)} if state == "resume" else {}),
            }
            progress.start(
                name + (f", resumed from {run}" if run else ""),
                sum(r for r, todo in zip(rounds[number:], to_run[number:]) if todo),
            )
            log_path = out / f"{_slug(variant.label)}-seed{seed}.log"
            with log_path.open("a") as log:

                def on_line(line: str, log=log) -> None:
                    log.write(line + "\n")
                    progress.line(line)

                done = flwr_run(
                    env,
                    run_config_arg(config),
                    federation,
                    timeout_s=timeout_s,
                    on_line=on_line,
                )
            state, run = run_state(folder)
            if done.returncode != 0 or state != "done":
                echo(f"{name}: failed (exit {done.returncode}); see {log_path}")
                failed.append(name)
                continue
            finished.append((variant.label, run))
    finished = with_earlier_runs(out, finished)
    # relative: the folder may move (docs/results/ keeps comparisons in the repo)
    (out / "runs.json").write_text(
        json.dumps(
            [[label, str(run.relative_to(out))] for label, run in finished], indent=1
        )
        + "\n"
    )
    if finished:
        write_comparison(out, finished)
    if failed:
        raise CompareError(
            f"{len(failed)} of {len(jobs)} runs failed: {', '.join(failed)}; run the "
            "same command again to retry them (finished runs are kept)."
        )
    return out


def _slug(label: str) -> str:
    return label.replace(":", "-")


def _priced(source: Path, folder: Path, resource_policy: str) -> Path:
    """The finished run in the variant folder `source`, priced into `folder`."""
    state, run = run_state(source)
    if state != "done":
        raise RepriceError("it has not finished")
    return reprice(run, folder, resource_policy)


def with_earlier_runs(out: Path, finished: list[tuple[str, Path]]) -> list:
    """This call's finished runs, then those that earlier calls listed in runs.json
    and this one did not (other strategies or seeds), in their order."""
    mine = {run.parent for _, run in finished}
    earlier = read_runs(out) if (out / "runs.json").exists() else []
    return finished + [
        (label, run)
        for label, run in earlier
        if run.parent not in mine and (run / "summary.json").exists()
    ]


def read_runs(out: Path) -> list[tuple[str, Path]]:
    """The finished runs of a comparison folder, from its runs.json (paths relative
    to the folder; older folders wrote `{label: absolute path}`)."""
    saved = json.loads((out / "runs.json").read_text())
    pairs = saved.items() if isinstance(saved, dict) else saved
    return [(label, out / run) for label, run in pairs]


def write_comparison(out: Path, runs: list[tuple[str, Path]]) -> list[dict]:
    """The tables (`table.write_tables`) and plots of finished runs
    `(label, run directory)`; returns the rows of comparison.csv."""
    from qfd_app.runs.report import plot_comparison
    from qfd_app.runs.table import write_tables

    rows, summary = write_tables(out, runs)
    plot_comparison(rows, summary, out / "plots")
    return rows
