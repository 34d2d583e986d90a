"""The `qfd` command: registers subcommands, each a thin wrapper around library code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qfd_app import __version__

app = typer.Typer(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qfd {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """On-demand quantized federated training of diffusion models, on Flower."""


@app.command()
def sample(
    model_dir: Annotated[Path, typer.Argument(help="A run's final/ folder (a diffusers DDPMPipeline).")],
    out: Annotated[Path, typer.Option(help="PNG file to write the image grid to.")] = Path("samples.png"),
    num: Annotated[int, typer.Option(min=1, help="Number of images.")] = 64,
    steps: Annotated[int, typer.Option(min=1, max=1000, help="DDIM steps.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
) -> None:
    """Draw images from an exported model and save them as a grid."""
    from qfd_app.report import sample_grid_from_pipeline

    typer.echo(sample_grid_from_pipeline(model_dir, out, num=num, steps=steps, seed=seed))
