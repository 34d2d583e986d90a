"""The `qfd` command line."""

import torch
from typer.testing import CliRunner

from qfd_app import __version__, ddpm
from qfd_app.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_sample_draws_a_grid_from_an_exported_pipeline(tmp_path):
    torch.manual_seed(0)
    ddpm.export_pipeline(ddpm.build_unet("tiny", 16), tmp_path / "final")
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", str(tmp_path / "final"), "--out", str(out), "--num", "6", "--steps", "2"])
    assert result.exit_code == 0, result.output
    import matplotlib.image

    picture = matplotlib.image.imread(out)
    # 6 images in rows of 8: one row of 16-pixel tiles with 1-pixel borders, enlarged 4×
    assert picture.shape[:2] == ((1 + 17) * 4, (1 + 8 * 17) * 4)


def test_sample_of_a_missing_folder_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["sample", str(tmp_path / "nope")])
    assert result.exit_code != 0
