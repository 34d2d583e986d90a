"""`qfd run` against a real SuperLink: its exit code says whether the run completed
(`flwr run --stream` exits 0 even when the ServerApp fails)."""

import subprocess

import pytest

from qfd_app.runs.launch import APP_DIR, BIN, CONNECTION, superlink

pytestmark = pytest.mark.slow

SMALL = (
    "num-server-rounds=1 local-epochs=1 eval-samples=32 final-eval-samples=0 "
    "sample-steps=2 scenario='smoke'"
)


@pytest.fixture(scope="module")
def qfd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qfd-run")
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:

        def run(run_config):
            args = [
                str(BIN / "qfd"),
                "run",
                str(APP_DIR),
                CONNECTION,
                "-c",
                f"{run_config} output-dir='{root}/out'",
                "--federation-config",
                "num-supernodes=3 client-resources-num-cpus=1",
            ]
            return subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=600
            )

        yield run


def test_a_run_that_completes_exits_0(qfd_run):
    done = qfd_run(SMALL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[qfd] done in" in done.stdout


def test_a_run_whose_server_app_fails_exits_1_with_its_status(qfd_run):
    # valid as a setting (an hf: dataset by local path), but there is nothing to
    # load: the ServerApp fails
    done = qfd_run(f"{SMALL} dataset='hf:/no/such/dataset'")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "did not complete" in done.stderr and "finished:failed" in done.stderr
