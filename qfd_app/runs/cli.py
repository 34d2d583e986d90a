"""The `qfd` command: registers subcommands, each a thin wrapper around library code."""

from __future__ import annotations

import json
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from qfd_app import __version__

app = typer.Typer(
    no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]}
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qfd {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Show the version.",
        ),
    ] = False,
) -> None:
    """On-demand quantized federated training of diffusion models, on Flower."""


@app.command()
def sample(
    model_dir: Annotated[
        Path,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="A run's final/ folder (a diffusers DDPMPipeline).",
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="PNG file to write the image grid to.")
    ] = Path("samples.png"),
    num: Annotated[int, typer.Option(min=1, help="Number of images.")] = 64,
    steps: Annotated[int, typer.Option(min=1, max=1000, help="DDIM steps.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise.")] = 0,
    eps_scale: Annotated[
        float | None,
        typer.Option(
            min=0.5,
            max=2.0,
            help="Epsilon scaling: DDIM divides the predicted noise by 1 + "
            "(this - 1)·t/T. Default: the run's sample-eps-scale (config.json "
            "beside final/), else 1.",
        ),
    ] = None,
) -> None:
    """Draw images from an exported model and save them as a grid."""
    from qfd_app.runs.report import sample_grid_from_pipeline

    if eps_scale is None:  # sample as the run evaluated
        config = model_dir.parent / "config.json"
        eps_scale = (
            json.loads(config.read_text()).get("sample-eps-scale", 1.0)
            if config.is_file()
            else 1.0
        )
    typer.echo(
        sample_grid_from_pipeline(
            model_dir, out, num=num, steps=steps, seed=seed, eps_scale=eps_scale
        )
    )


@app.command()
def evaluate(
    run_dir: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="A finished run (with final/)."
        ),
    ],
    samples: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Images in all, in draws of the run's eval-samples (default: the "
            "run's final-eval-samples, else 2048).",
        ),
    ] = None,
) -> None:
    """Score a finished run's final model as the ServerApp's final evaluation does
    (a run from before it, or with more draws): writes final-eval.json and the
    final_* scores of summary.json."""
    import click
    from diffusers import UNet2DModel

    from qfd_app.diffusion import ddpm
    from qfd_app.diffusion.evaluation import Evaluator
    from qfd_app.runs.rundir import final_evaluation
    from qfd_app.settings import SettingsError, run_dir_settings

    try:
        changes = {} if samples is None else {"final-eval-samples": samples}
        settings = run_dir_settings(run_dir, **changes)
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError, SettingsError) as err:
        raise click.ClickException(f"{run_dir}: not a finished run: {err}") from None
    if settings.final_eval_draws < 1:
        raise click.ClickException(
            f"{run_dir}: final-eval-samples is 0; give --samples."
        )
    evaluator = Evaluator(
        settings.data,
        settings.eval_samples,
        settings.sample_steps,
        ddpm.pick_device(settings.device),
        eps_scale=settings.sample_eps_scale,
    )
    model = UNet2DModel.from_pretrained(run_dir / "final" / "unet")
    first, _ = evaluator(model)  # draw 0: the last round's evaluation
    scores = {**first, **final_evaluation(
        run_dir, evaluator, model, settings.final_eval_draws, first
    )}  # fmt: skip
    summary.update({f"final_{k}": v for k, v in scores.items()})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(scores, indent=1))


@app.command()
def plan(
    scenario: Annotated[
        str,
        typer.Argument(
            help="Scenario name (default, paper, …) or path to a .toml file."
        ),
    ],
    run_config: Annotated[
        str,
        typer.Option(
            "--run-config",
            "-c",
            help="The run's settings, as for `qfd run` / `flwr run --run-config`.",
        ),
    ] = "",
    devices: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=(
                "Devices (SuperNodes) of the run (default: as many as "
                "the scenario lists)."
            ),
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="Shorthand for --run-config \"strategy='…'\" (see docs/strategies.md)."
        ),
    ] = None,
    bits: Annotated[
        int | None,
        typer.Option(
            help="Shorthand for the `bits` setting (the bit-width of `fixed`)."
        ),
    ] = None,
    resource_policy: Annotated[
        str | None,
        typer.Option(
            help=(
                "Shorthand for the `resource-policy` setting (auto, "
                "race-to-idle, optimal)."
            )
        ),
    ] = None,
    downlink: Annotated[
        str | None,
        typer.Option(
            help=(
                "Shorthand for the `downlink` setting (fp32, fp16, assigned, delta): "
                "how the model is sent to the devices."
            )
        ),
    ] = None,
    round_: Annotated[
        int,
        typer.Option(
            "--round", min=1, help="Round number (selects the fading and the sample)."
        ),
    ] = 1,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0, help="Seed of placement and fading (default: the scenario's)."
        ),
    ] = None,
    bandwidth_policy: Annotated[
        str | None, typer.Option(help="equal or optimal (default: the scenario's).")
    ] = None,
    stand_in: Annotated[
        bool,
        typer.Option(
            "--stand-in-history",
            help="Enforce ε with the scenario's stand-in update statistics "
            "(a run has none before round 2).",
        ),
    ] = False,
    app_dir: Annotated[
        Path | None,
        typer.Option(
            help="The Flower app whose defaults apply (default: this package's)."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON instead of a table.")
    ] = False,
) -> None:
    """Plan a round exactly as a run with these settings would, without
    training, and print it."""
    from qfd_app.edge.problem import BANDWIDTH_POLICIES
    from qfd_app.runs.plan import format_plan, plan_first_round
    from qfd_app.validation import Options, check_value

    given = {
        "strategy": strategy,
        "bits": bits,
        "resource-policy": resource_policy,
        "downlink": downlink,
    }
    shorthands = {k: v for k, v in given.items() if v is not None}
    settings = _checked_settings(
        app_dir, run_config, {"scenario": scenario, **shorthands}
    )
    try:
        if bandwidth_policy is not None:
            check_value(
                "--bandwidth-policy", bandwidth_policy, Options(BANDWIDTH_POLICIES)
            )
        record = plan_first_round(
            settings,
            num_devices=devices,
            round_=round_,
            scenario_seed=seed,
            bandwidth_policy=bandwidth_policy,
            stand_in=stand_in,
        )
    except ValueError as err:
        _fail(str(err))
    typer.echo(json.dumps(record, indent=1) if json_out else format_plan(record))


@app.command()
def compare(
    scenario: Annotated[
        str,
        typer.Argument(
            help="Scenario name (default, heterogeneous, …) or path to a .toml file."
        ),
    ],
    strategies: Annotated[
        str,
        typer.Option(
            help="Comma-separated strategies, each `name[:option]` "
            "(docs/strategies.md): e.g. fedavg, fedavg:optimal, fixed:4, ondemand; "
            "add :fp32-training to train in fp32."
        ),
    ] = "fedavg,fixed,ondemand",
    rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Rounds of every run (default: the app's)."),
    ] = None,
    bits: Annotated[
        int, typer.Option(min=1, max=32, help="Bit-width of a plain `fixed`.")
    ] = 8,
    seeds: Annotated[
        str,
        typer.Option(
            help="Comma-separated seeds: every strategy runs on each (paired); "
            "default: the run config's seed."
        ),
    ] = "",
    output: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Folder of the comparison (default: ~/qfd-runs/compare-<scenario>-"
                "<digest of scenario and settings>). Run again, it keeps finished "
                "runs and resumes an unfinished one."
            )
        ),
    ] = None,
    run_config: Annotated[
        str,
        typer.Option(
            help=(
                "More run-config overrides for every run, as for `flwr "
                "run --run-config`."
            )
        ),
    ] = "",
    devices: Annotated[
        int | None,
        typer.Option(
            min=1, help="Virtual devices (default: as many as the scenario lists)."
        ),
    ] = None,
    price_twice: Annotated[
        bool,
        typer.Option(
            help=(
                "Price a strategy that differs from one listed before it only in its "
                "resource policy (fedavg after fedavg:optimal) from that run's "
                "ledger instead of training the same model again."
            )
        ),
    ] = True,
) -> None:
    """Run several strategies on one scenario with the same seeds; write
    a table and plots."""
    import click
    from flwr.common.config import parse_config_args

    from qfd_app.edge import ScenarioError, load_scenario
    from qfd_app.runs.compare import (
        CompareError,
        check_settings,
        parse_seeds,
        parse_variants,
        run_comparison,
    )

    try:
        loaded = load_scenario(scenario)
        base = parse_config_args([run_config]) if run_config else {}
        variants = parse_variants(strategies, {"bits": bits, **base})
        if rounds is not None:
            base["num-server-rounds"] = rounds
        scenario_ref = (
            scenario
            if Path(scenario).suffix != ".toml"
            else str(Path(scenario).resolve())
        )
        seed_list = parse_seeds(seeds, base)
        # every mistake before the first run
        check_settings(variants, {**base, "scenario": scenario_ref})
        out = run_comparison(
            scenario_ref,
            variants,
            output,
            base=base,
            num_devices=devices or loaded.num_devices,
            seeds=seed_list,
            echo=typer.echo,
            price_twice=price_twice,
        )
    except (CompareError, ScenarioError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    typer.echo((out / "comparison.md").read_text())
    typer.echo(f"comparison folder: {out}")


@app.command()
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory, or a comparison folder of `qfd compare`."
        ),
    ],
) -> None:
    """Redraw the plots of a run (plots/) or of a comparison (table and plots)."""
    import click

    from qfd_app.runs.compare import read_runs, write_comparison
    from qfd_app.runs.report import plot_rounds

    if (run_dir / "runs.json").is_file():
        write_comparison(run_dir, read_runs(run_dir))
        typer.echo(f"{run_dir / 'comparison.md'}\n{run_dir / 'plots'}")
    elif (run_dir / "rounds.csv").is_file():
        for path in plot_rounds(run_dir):
            typer.echo(path)
    else:
        raise click.ClickException(
            f"{run_dir} holds neither a run (rounds.csv) nor a comparison (runs.json)."
        )


@app.command()
def run(
    app_dir: Annotated[
        Path, typer.Argument(help="The Flower app (the folder with pyproject.toml).")
    ] = Path("."),
    superlink: Annotated[
        str | None,
        typer.Argument(
            help=(
                "The SuperLink connection of $FLWR_HOME/config.toml "
                "(default: its default)."
            )
        ),
    ] = None,
    run_config: Annotated[
        str,
        typer.Option(
            "--run-config", "-c", help="Overrides, as for `flwr run --run-config`."
        ),
    ] = "",
    federation_config: Annotated[
        str,
        typer.Option(
            help=(
                'Simulation settings, e.g. "num-supernodes=10 '
                'client-resources-num-cpus=1".'
            )
        ),
    ] = "",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            envvar="RAY_ADDRESS",
            help="Run the simulation on this Ray cluster (host:port of its "
            "head; default: $RAY_ADDRESS), through a SuperLink of qfd's "
            "own started with it.",
        ),
    ] = None,
) -> None:
    """Check every setting, then `flwr run --stream`; the exit code says
    whether the run completed.

    A bad setting stops here with one line naming it (exit 2), before any device is
    contacted; a run that fails later exits 1 (`flwr run` itself exits 0 either way).
    With a Ray address the run goes to a private SuperLink on loopback that was started
    with RAY_ADDRESS, so its simulation joins that cluster (a SuperLink that is already
    running keeps the Ray it was started with), and is stopped when the run ends.
    """
    from qfd_app.runs.launch import CONNECTION, flwr_run, run_status, user_env
    from qfd_app.runs.launch import superlink as private_superlink

    settings = _checked_settings(app_dir, run_config)
    if ray_address and superlink:
        _fail(
            "--ray-address (or RAY_ADDRESS) runs the simulation on a SuperLink of "
            f"qfd's own; the SuperLink {superlink!r} runs on the Ray it was started "
            "with. Give one of them."
        )
    with ExitStack() as stack:
        env, connection = user_env(), superlink
        if ray_address:
            typer.echo(f"qfd: a private SuperLink on the Ray cluster at {ray_address}")
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qfd-")))
            env = stack.enter_context(
                private_superlink(home / "flwr-home", RAY_ADDRESS=ray_address)
            )
            connection = CONNECTION
        done = flwr_run(
            env,
            run_config,
            federation_config,
            timeout_s=30 * 24 * 3600,
            app=app_dir.resolve(),
            on_line=typer.echo,
            connection=connection,
        )
        status = run_status(env, done.stdout, connection=connection)
    if done.returncode != 0 or status != "finished:completed":
        typer.echo(
            f"qfd: the run of strategy {settings.strategy!r} did not complete: flwr "
            f"run exited {done.returncode}, status {status}",
            err=True,
        )
        raise typer.Exit(1)
    if ray_address:
        nodes = _ray_nodes(done.stdout)
        if not nodes:
            _fail_run(f"no device reported a Ray node of the cluster at {ray_address}")
        typer.echo(
            f"qfd: devices trained on {len(nodes)} Ray node(s): {', '.join(nodes)}"
        )


def _ray_nodes(output: str) -> list[str]:
    """The Ray nodes the finished run's summary.json lists (its run
    directory is in `output`)."""
    found = re.findall(r"\[qfd\] run directory: (\S+)", output)
    summary = Path(found[-1]) / "summary.json" if found else None
    if summary is None or not summary.is_file():
        return []
    return list(json.loads(summary.read_text()).get("ray_nodes", []))


def _fail_run(message: str) -> None:
    typer.echo(f"qfd: {message}", err=True)
    raise typer.Exit(1)


@app.command()
def resume(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="The run directory of a killed run (it holds config.json)."
        ),
    ],
    superlink: Annotated[
        str | None,
        typer.Argument(help="The SuperLink connection (default: the default)."),
    ] = None,
    app_dir: Annotated[Path, typer.Option(help="The Flower app the run used.")] = Path(
        "."
    ),
    federation_config: Annotated[
        str, typer.Option(help="Simulation settings, as for `qfd run`.")
    ] = "",
) -> None:
    """Go on with a killed run from its last complete round, with the settings it
    was started with."""
    from qfd_app.runs.launch import run_config_arg

    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as err:
        _fail(f"The run directory must hold the config.json of a run: {err}")
    config["resume"] = str(run_dir.expanduser().resolve())
    run(app_dir, superlink, run_config_arg(config), federation_config)


def _checked_settings(app_dir: Path | None, run_config: str, fixed: dict | None = None):
    """The run's settings as the ServerApp will see them, or exit 2 with one
    line naming the bad key.

    `fixed` are settings given by the command's own arguments; `--run-config` may not
    give them a different value.
    """
    from flwr.common.config import parse_config_args

    from qfd_app.runs.rundir import resume_target
    from qfd_app.settings import Settings, default_run_config

    try:
        overrides = parse_config_args([run_config]) if run_config else {}
        for key, value in (fixed or {}).items():
            if overrides.setdefault(key, value) != value:
                raise ValueError(
                    f"--run-config sets {key}={overrides[key]!r}, but the command's "
                    f"arguments say {value!r}: give it once."
                )
        defaults = (
            default_run_config(app_dir / "pyproject.toml")
            if app_dir
            else default_run_config()
        )
        settings = Settings.from_run_config({**defaults, **overrides})
        resume_target(settings)
    except (OSError, ValueError) as err:  # SettingsError, ScenarioError, TOML errors
        _fail(str(err))
    return settings


def _fail(message: str) -> None:
    typer.echo("qfd: error: " + " ".join(message.split()), err=True)
    raise typer.Exit(2)
