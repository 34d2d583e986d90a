"""A private SuperLink on loopback, and `flwr run` of this app against it or the user's
(`qfd run`, `qfd compare`, tests), with the run's final status.

The SuperLink is started in its own session (process group) and stopped by that group's
id and the PIDs found below it, so every process it spawned (SuperExec, simulation, Ray)
goes with it and nothing else on the machine is touched. Flower's environment switches
that keep a run offline and quiet are set for every process (no telemetry, no update
check, no dependency install).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# the folder with pyproject.toml (a checkout)
APP_DIR = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONNECTION = "qfd-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TORCHDYNAMO_DISABLE="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        # the SuperLink spawns flower-superexec and flwr-serverapp by name
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    )
    return env


def user_env() -> dict[str, str]:
    """The caller's environment for `flwr` (their FLWR_HOME and connections), with
    this venv's executables first and, unless set, no per-run dependency install
    (the app's are installed)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    return env


def start_superlink(
    flwr_home: Path, **extra_env: str
) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start `flower-superlink --simulation` on a free loopback port in
    its own process group.

    Returns the process (stop it with `stop_group`) and the environment for `flwr`
    commands against it (connection `CONNECTION` in `flwr_home`).
    """
    port = free_port()
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(flwr_home, **extra_env)
    with open(flwr_home / "superlink.log", "w") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_control_api(env, CONNECTION, proc)
    except RuntimeError as err:
        stop_group(proc)
        log = (flwr_home / "superlink.log").read_text()[-2000:]
        raise RuntimeError(f"{err}; its log ends:\n{log}") from None
    return proc, env


def wait_for_control_api(
    env: dict[str, str], connection: str, proc: subprocess.Popen, timeout_s: float = 180
) -> None:
    """Wait until the SuperLink behind `connection` answers `flwr ls` (its
    control API, what `flwr run` talks to) — readiness asked of the server, not
    guessed from an open port.

    Raises RuntimeError saying what was awaited when the process
    exits or the time is up.
    """
    deadline = time.time() + timeout_s
    args = [str(BIN / "flwr"), "ls", connection, "--format", "json"]
    answer = ""
    while proc.poll() is None and time.time() < deadline:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and _listed(done.stdout):
            return
        answer = (done.stdout + done.stderr).strip()[-300:]
        time.sleep(0.5)
    state = (
        f"exited with {proc.returncode}" if proc.poll() is not None else "still runs"
    )
    raise RuntimeError(
        f"the SuperLink of connection {connection!r} did not answer `flwr ls` "
        f"(its control API) within {timeout_s:.0f} s; the process {state}; last "
        f"answer: {answer!r}"
    )


@contextmanager
def superlink(flwr_home: Path, **extra_env: str):
    """A private SuperLink (`start_superlink`) for the `with` block; yields
    the env for `flwr`."""
    proc, env = start_superlink(flwr_home, **extra_env)
    try:
        yield env
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left of it and
    of every process below it (Flower starts its SuperExec, and Ray its agents, in
    sessions of their own)."""
    below = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    _signal_all(below, signal.SIGKILL)  # those that left the group and outlived it


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process below it at once, as a crash of
    that machine would."""
    _signal_all([proc.pid, *descendants(proc.pid)], signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The PIDs of the children of `pid`, their children, and so on
    (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def flwr_run(
    env: dict,
    run_config: str,
    federation_config: str = "",
    timeout_s: float = 900,
    app: Path = APP_DIR,
    on_line: Callable[[str], None] | None = None,
    connection: str | None = CONNECTION,
) -> subprocess.CompletedProcess:
    """`flwr run <app> [connection] --stream` until the run ends (connection None:
    the user's default).

    Every output line (stdout and stderr, merged) goes to `on_line` as it comes; the
    finished process carries all of them in `stdout`. A run past `timeout_s` is killed.
    """
    args = [
        str(BIN / "flwr"),
        "run",
        str(app),
        *([connection] if connection else []),
        "--stream",
        "--run-config",
        run_config,
        *(["--federation-config", federation_config] if federation_config else []),
    ]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
    return subprocess.CompletedProcess(
        args, proc.returncode, stdout="".join(lines), stderr=""
    )


def _listed(output: str) -> bool:
    """Whether `flwr ls --format json` printed a listing: it exits 0 also when
    the SuperLink is unreachable, with `"success": false` in its JSON."""
    try:
        return json.loads(output).get("success", True) is not False
    except (ValueError, AttributeError):
        return False


def run_status(env: dict, output: str, connection: str | None = CONNECTION) -> str:
    """How the run that `flwr run` printed in `output` ended, as `flwr ls` says
    (`finished:completed`, `finished:failed`, …); `unknown` if it cannot tell.

    `flwr run --stream` exits 0 even when the ServerApp failed: this is how to know.
    """
    started = re.search(r"Successfully started run (\d+)", output)
    if not started:
        return "unknown"
    args = [
        str(BIN / "flwr"),
        "ls",
        *([connection] if connection else []),
        "--run-id",
        started[1],
        "--format",
        "json",
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    try:
        return str(json.loads(done.stdout)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        return "unknown"


def run_config_arg(config: Mapping[str, Any]) -> str:
    """`config` as one `--run-config` argument (`key=value ...`, TOML values)."""
    return " ".join(f"{key}={_toml(value)}" for key, value in config.items())


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else repr(value)
