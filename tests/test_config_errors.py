"""Every bad run-config or scenario value: `qfd run` exits ≠ 0 with one line that
names the key, before it starts anything (no `flwr`, no SuperLink, no device)."""

import subprocess

import pytest
from typer.testing import CliRunner

from qfd_app.runs import launch
from qfd_app.runs.cli import app
from qfd_app.runs.launch import APP_DIR

# run-config overrides → the key the message must name
RUN_CONFIG_ERRORS = [
    ("strategy='fedsgd'", "strategy"),
    ("scenario='nowhere'", "scenario"),
    ("resource-policy='fast'", "resource-policy"),
    ("resource-policy='race-to-idle' strategy='ondemand'", "resource-policy"),
    ("codec='zip'", "codec"),
    ("strategy='ondemand' codec='nf4'", "codec"),
    ("bits=0", "bits"),
    ("bits=33", "bits"),
    ("quantized-training='yes'", "quantized-training"),
    ("low-bit-compute='fp16'", "low-bit-compute"),
    ("num-server-rounds=0", "num-server-rounds"),
    ("num-server-rounds=2.5", "num-server-rounds"),
    ("fraction-train=1.5", "fraction-train"),
    ("fraction-train=0.0", "fraction-train"),
    ("local-epochs=0", "local-epochs"),
    ("batch-size=-1", "batch-size"),
    ("learning-rate=nan", "learning-rate"),
    ("learning-rate=2.0", "learning-rate"),
    ("lr-schedule='step'", "lr-schedule"),
    ("lr-warmup-steps=-1", "lr-warmup-steps"),
    ("max-grad-norm=-0.5", "max-grad-norm"),
    ("dataset='cifar10'", "dataset"),
    ("image-size=12", "image-size"),
    ("test-fraction=0.9", "test-fraction"),
    ("partitioner='shards'", "partitioner"),
    ("dirichlet-alpha=0.0", "dirichlet-alpha"),
    ("model='huge'", "model"),
    ("eval-interval=-1", "eval-interval"),
    ("eval-samples=1", "eval-samples"),
    ("final-eval-samples=-512", "final-eval-samples"),
    ("final-eval-samples=1000", "final-eval-samples"),  # not a multiple of 512
    ("sample-steps=0", "sample-steps"),
    ("sample-eps-scale=0.0", "sample-eps-scale"),
    ("seed=-1", "seed"),
    ("output-dir='relative/runs'", "output-dir"),
    ("device='tpu'", "device"),
    ("client-threads=-2", "client-threads"),
    ("max-update-norm=-1.0", "max-update-norm"),
    ("resume='relative/run'", "resume"),
    ("resume='/no/such/run'", "resume"),
    ("rounds=3", "rounds"),  # not a setting
]

# scenario TOML (extending the default) → the key the message must name
SCENARIO_ERRORS = [
    ("[network]\ndeadline_s = -1.0", "deadline_s"),
    ("[network]\nbandwidth_hz = 0.0", "bandwidth_hz"),
    ("[network]\nbandwidth_policy = 'greedy'", "bandwidth_policy"),
    ("[budget]\nepsilon = nan", "epsilon"),
    ("[training]\ngamma = -1.0", "gamma"),
    ("[classes.iot]\nbits_min = 0", "bits_min"),
    ("[classes.iot]\nbits_min = 6", "bits_min"),  # above its bits_max of 4
    ("[classes.phone]\nbits_max = 40", "bits_max"),
    ("[classes.edge]\ncpu_hz_max = 'fast'", "cpu_hz_max"),
    ("[classes.edge]\nkappa = -1e-28", "kappa"),
    ("[devices]\nrobot = 2", "robot"),
    ("[network]\ndeadline = 30.0", "deadline"),  # a typo of deadline_s
    ("seed = -3", "seed"),
]


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if `qfd run` tries to start any process (flwr, a SuperLink)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0]}")

    monkeypatch.setattr(launch.subprocess, "Popen", refuse)
    monkeypatch.setattr(launch.subprocess, "run", refuse)


def qfd_run(run_config):
    return CliRunner().invoke(app, ["run", str(APP_DIR), "--run-config", run_config])


def assert_one_line_naming(result, key):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qfd: error: "), result.output
    assert key in lines[0], lines[0]


@pytest.mark.parametrize("run_config, key", RUN_CONFIG_ERRORS)
def test_a_bad_run_config_value_stops_qfd_run_naming_the_key(
    nothing_starts, run_config, key
):
    assert_one_line_naming(qfd_run(run_config), key)


@pytest.mark.parametrize("toml, key", SCENARIO_ERRORS)
def test_a_bad_scenario_value_stops_qfd_run_naming_the_key(
    nothing_starts, tmp_path, toml, key
):
    path = tmp_path / "bad.toml"
    path.write_text(f'extends = "default"\n{toml}\n')
    assert_one_line_naming(qfd_run(f"scenario='{path}'"), key)


def test_a_resume_of_a_run_with_other_settings_names_the_keys(nothing_starts, tmp_path):
    from qfd_app.runs.rundir import create_run_dir
    from qfd_app.settings import Settings, default_run_config

    settings = Settings.from_run_config(
        {**default_run_config(), "output-dir": str(tmp_path), "local-epochs": 2}
    )
    run_dir = create_run_dir(settings, "1")
    result = CliRunner().invoke(
        app, ["resume", str(run_dir), "--app-dir", str(APP_DIR)]
    )
    assert_one_line_naming(result, "resume")  # no checkpoint yet
    assert "checkpoint" in result.output
    assert_one_line_naming(
        qfd_run(f"output-dir='{tmp_path}' resume='{run_dir}'"), "local-epochs"
    )


def test_the_exit_code_is_real_from_the_command_line():
    done = subprocess.run(
        [str(launch.BIN / "qfd"), "run", str(APP_DIR), "-c", "bits=99"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        done.stderr.strip()
    ]
    assert "'bits'" in done.stderr and done.stdout == ""


def test_a_superlink_that_does_not_answer_is_not_taken_for_ready(tmp_path):
    """`flwr ls --format json` exits 0 when it reaches no SuperLink: readiness
    reads its JSON."""
    import subprocess
    import sys

    home = tmp_path / "flwr-home"
    home.mkdir()
    port = launch.free_port()  # nothing listens there
    (home / "config.toml").write_text(
        f'[superlink.nowhere]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(RuntimeError, match="did not answer `flwr ls`.*still runs"):
            launch.wait_for_control_api(
                launch.flower_env(home), "nowhere", sleeper, timeout_s=3
            )
    finally:
        sleeper.kill()
        sleeper.wait()
