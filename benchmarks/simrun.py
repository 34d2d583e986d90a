"""One real simulation of the app for the round and scale benchmarks: run it, watch its
memory, and read the phase times the run writes into rounds.csv."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qfd_app.runs.launch import flwr_run, superlink  # noqa: E402
from qfd_app.runs.ledger import PHASES, read_csv  # noqa: E402


def machine() -> str:
    """The CPU model and core count, as /proc/cpuinfo names them."""
    import os
    import platform

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (Linux /proc; shared pages
    counted per process)."""
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def simulate(
    out: Path, run_config: str, num_supernodes: int, cpus_per_client: float = 1.0
) -> tuple[Path, int, float]:
    """Run the app once; return its run directory, the peak RSS of every process it
    used, the wall time."""
    out.mkdir(parents=True, exist_ok=True)
    peak = [0]
    with superlink(out / "flwr-home", QFD_CACHE_DIR=str(out / "cache")) as env:
        stop = threading.Event()
        me = os.getpid()

        def watch() -> None:
            while not stop.wait(0.5):
                peak[0] = max(peak[0], tree_rss_bytes(me))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.time()
        done = flwr_run(
            env,
            f"{run_config} output-dir='{out / 'runs'}'",
            f"num-supernodes={num_supernodes} "
            f"client-resources-num-cpus={cpus_per_client:g}",
            timeout_s=3 * 3600,
        )
        wall = time.time() - started
        stop.set()
        watcher.join()
    runs = sorted((out / "runs").glob("*/summary.json"))
    if done.returncode != 0 or not runs:
        raise SystemExit(f"the run failed:\n{done.stdout[-4000:]}")
    return runs[-1].parent, peak[0], wall


def phase_table(run_dir: Path, skip_first: bool = True) -> tuple[str, dict[str, float]]:
    """Mean seconds per phase over the rounds (the first skipped: it also
    discovers the devices)."""
    rows = read_csv(run_dir / "rounds.csv")
    rows = rows[1:] if skip_first and len(rows) > 1 else rows
    mean = {k: sum(float(r[k] or 0) for r in rows) / len(rows) for k in PHASES}
    other = mean["round_s"] - sum(mean[k] for k in PHASES if k != "round_s")
    round_s = mean["round_s"]
    lines = ["| phase | mean s per round | share of the round |", "|---|---:|---:|"]
    for k in PHASES[:-1]:
        lines.append(f"| {k[:-2]} | {mean[k]:.3f} | {100 * mean[k] / round_s:.1f} % |")
    lines.append(
        "| other (Flower messaging, Ray dispatch, model (de)serialisation, idle "
        f"cores) | {other:.3f} | {100 * other / round_s:.1f} % |"
    )
    lines.append(f"| **round** | **{round_s:.3f}** | 100 % |")
    non_training = round_s - mean["train_s"] - mean["evaluate_s"]
    mean["non_training_share"] = non_training / round_s
    return "\n".join(lines), mean


def per_round_table(run_dir: Path) -> str:
    """Seconds per phase, one column per round."""
    rows = read_csv(run_dir / "rounds.csv")
    lines = [
        "| phase | " + " | ".join(f"round {r['round']}" for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for k in PHASES:
        lines.append(
            f"| {k[:-2]} | "
            + " | ".join(f"{float(r[k] or 0):.3f}" for r in rows)
            + " |"
        )
    other = [
        float(r["round_s"]) - sum(float(r[k] or 0) for k in PHASES if k != "round_s")
        for r in rows
    ]
    lines.append(
        "| other (messaging, dispatch, serialisation, idle) | "
        + " | ".join(f"{o:.3f}" for o in other)
        + " |"
    )
    return "\n".join(lines)


def write_block(doc: Path, name: str, text: str) -> None:
    """Replace the text between `<!-- name:start -->` and
    `<!-- name:end -->` in `doc`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = doc.read_text()
    if start not in content:
        content += f"\n{start}\n{end}\n"
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")
