"""A private SuperLink on loopback, and `flwr run` of this app against it (`qfd compare`, tests).

The SuperLink is started in its own session (process group) and stopped by that group's
id, so every process it spawned (SuperExec, simulation, Ray) goes with it and nothing
else on the machine is touched. Flower's environment switches that keep a run offline and
quiet are set for every process (no telemetry, no update check, no dependency install).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]  # the folder with pyproject.toml (a checkout)
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


@contextmanager
def superlink(flwr_home: Path, **extra_env: str):
    """Start `flower-superlink --simulation` on a free loopback port; yield the env for `flwr`."""
    port = free_port()
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(flwr_home, **extra_env)
    log = open(flwr_home / "superlink.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
         "--port", str(port), "--disable-runtime-dependency-installation"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"SuperLink did not start: {(flwr_home / 'superlink.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield env
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def flwr_run(
    env: dict,
    run_config: str,
    federation_config: str,
    timeout_s: float = 900,
    app: Path = APP_DIR,
    on_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess:
    """`flwr run <app> --stream` against the private SuperLink, until the run ends.

    Every output line (stdout and stderr, merged) goes to `on_line` as it comes; the
    finished process carries all of them in `stdout`. A run past `timeout_s` is killed.
    """
    args = [str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream",
            "--federation-config", federation_config, "--run-config", run_config]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    return subprocess.CompletedProcess(args, proc.returncode, stdout="".join(lines), stderr="")
