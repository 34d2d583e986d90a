"""The `qfd` command line."""

import torch
from typer.testing import CliRunner

from qfd_app import __version__
from qfd_app.diffusion import ddpm
from qfd_app.runs.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_sample_draws_a_grid_from_an_exported_pipeline(tmp_path):
    torch.manual_seed(0)
    ddpm.export_pipeline(ddpm.build_unet("tiny", 16), tmp_path / "final")
    out = tmp_path / "grid.png"
    result = runner.invoke(
        app,
        [
            "sample",
            str(tmp_path / "final"),
            "--out",
            str(out),
            "--num",
            "6",
            "--steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    import matplotlib.image

    picture = matplotlib.image.imread(out)
    # 6 images in rows of 8: one row of 16-pixel tiles with 1-pixel
    # borders, enlarged 4×
    assert picture.shape[:2] == ((1 + 17) * 4, (1 + 8 * 17) * 4)


def test_sample_uses_the_runs_epsilon_scaling_unless_told_otherwise(tmp_path):
    torch.manual_seed(0)
    ddpm.export_pipeline(ddpm.build_unet("tiny", 16), tmp_path / "final")
    (tmp_path / "config.json").write_text('{"sample-eps-scale": 1.5}')
    grids = {}
    for name, extra in {
        "run's": [],
        "1.5": ["--eps-scale", "1.5"],
        "1": ["--eps-scale", "1"],
    }.items():
        out = tmp_path / f"{name}.png"
        result = runner.invoke(
            app,
            [
                "sample",
                str(tmp_path / "final"),
                "--out",
                str(out),
                "--num",
                "4",
                "--steps",
                "3",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        grids[name] = out.read_bytes()
    assert grids["run's"] == grids["1.5"] != grids["1"]


def test_sample_of_a_missing_folder_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short path, which the error box does not wrap
    result = runner.invoke(app, ["sample", "nope"])
    assert result.exit_code != 0
    # a refusal, not a traceback
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output  # a bad argument, as click reports one
    assert "'nope'" in flat(result.output) and "does not exist" in flat(
        result.output
    ), result.output
    assert not (tmp_path / "samples.png").exists()


import pytest  # noqa: E402


def flat(output: str) -> str:
    """The message of a rich error box on one line (its borders and
    wrapping removed)."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["compare", "default", "--strategies", "fedavg,sgd"],
            "--strategies: 'sgd' is not a strategy",
        ),
        (
            ["compare", "default", "--strategies", "fixed:many"],
            "fixed takes a bit-width",
        ),
        (
            ["compare", "default", "--strategies", "ondemand,ondemand"],
            "lists a strategy twice",
        ),
        (["compare", "nowhere"], "Unknown scenario 'nowhere'"),
        (
            ["compare", "default", "--run-config", "batch-size=0"],
            "'batch-size' setting must be",
        ),
        (["compare", "default", "--strategies", "fixed:40"], "'bits' setting must be"),
    ],
)
def test_compare_refuses_bad_options_before_running_anything(tmp_path, args, message):
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "cmp")])
    assert result.exit_code == 1
    assert message in flat(result.output), result.output
    assert not (tmp_path / "cmp").exists()  # nothing started


def test_report_of_a_folder_without_a_run_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "neither a run" in flat(result.output)
