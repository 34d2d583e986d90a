"""qfd ServerApp: settings → run directory (new or resumed) → data, model,
strategy → rounds → export."""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.ema import RoundAverage
from qfd_app.diffusion.evaluation import Evaluator
from qfd_app.runs.ledger import Ledger
from qfd_app.runs.report import plot_rounds
from qfd_app.runs.rundir import AfterRound, open_run_dir
from qfd_app.runs.tensorboard import TensorBoardLog
from qfd_app.settings import load_settings
from qfd_app.strategies.base import make_strategy
from qfd_app.strategies.planner import round_physics

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    # fails here, before any device is contacted
    settings = load_settings(context.run_config)
    scenario = settings.load_scenario()
    started = time.time()
    # a bad `resume` fails here too
    run_dir, checkpoint = open_run_dir(settings, context.run_id)
    log(INFO, "[qfd] run directory: %s", run_dir)
    device = ddpm.pick_device(settings.device)

    evaluator = Evaluator(
        settings.data,
        settings.eval_samples,
        settings.sample_steps,
        device,
        eps_scale=settings.sample_eps_scale,
    )
    torch.manual_seed(settings.seed)
    model = ddpm.build_unet(
        settings.model, settings.image_size, evaluator.test.pixels.shape[1]
    )
    log(
        INFO,
        "[qfd] %s UNet, %d parameters; reference FID (train vs held-out) %.3f",
        settings.model,
        sum(p.numel() for p in model.parameters()),
        evaluator.reference_fid,
    )

    ledger = Ledger(run_dir)  # a resumed run's ledger goes on from its checkpoint's
    physics = round_physics(settings, scenario, channels=evaluator.test.pixels.shape[1])
    strategy = make_strategy(settings, ledger, physics)
    if physics.gamma != scenario.gamma:
        log(
            WARNING,
            "[qfd] quantized-training = false: devices compute in fp32, so γ "
            "= 0 (scenario: %g)",
            scenario.gamma,
        )
    log(
        INFO,
        "[qfd] strategy %s on scenario %s (%s resources, γ = %g, "
        "deadline %g s, E = %d)",
        settings.strategy,
        scenario.name,
        settings.resources,
        physics.gamma,
        physics.network.deadline_s,
        physics.epochs,
    )
    average = RoundAverage(model, settings.ema_decay)
    after_round = AfterRound(
        run_dir,
        model,
        ledger,
        evaluator,
        settings.eval_interval,
        settings.num_server_rounds,
        strategy_state=strategy.state,
        final_draws=settings.final_eval_draws,
        average=average,
        strategy_tensors=strategy.tensors,
        started=started,
        tensorboard=TensorBoardLog(run_dir, settings.label),
    )
    done = 0
    if checkpoint is not None:
        done = checkpoint.round
        model.load_state_dict(checkpoint.model)
        if checkpoint.average is not None:
            average.restore(checkpoint.average, checkpoint.state["average_rounds"])
        strategy.restore(
            checkpoint.state["strategy"],
            completed_rounds=done,
            tensors=checkpoint.strategy_tensors,
        )
        after_round.first_round, after_round.wall_before_s = (
            done + 1,
            checkpoint.state["wall_s"],
        )
        after_round.last_scores = checkpoint.state["last_scores"]
        log(
            INFO,
            "[qfd] resuming after round %d of %d (Flower counts the "
            "remaining rounds from 1)",
            done,
            settings.num_server_rounds,
        )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(torch_state_dict=model.state_dict()),
        num_rounds=settings.num_server_rounds - done,
        train_config=ConfigRecord({"local-epochs": settings.local_epochs}),
        evaluate_fn=after_round,  # loads each round's global model into `model`
    )

    # the averaged model (the global one if ema-decay = 0)
    ddpm.export_pipeline(average.model, run_dir / "final")
    plot_rounds(run_dir)
    summary = {
        "strategy": settings.strategy,
        "scenario": scenario.name,
        "resource_policy": settings.resources,
        "gamma": physics.gamma,
        "rounds": settings.num_server_rounds,
        "wall_s": round(after_round.wall_s(), 1),
        "reference_fid": evaluator.reference_fid,
        **{f"final_{k}": v for k, v in after_round.last_scores.items()},
        **ledger.totals(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    after_round.tensorboard.finish(settings.to_run_config(), after_round.last_scores)
    log(INFO, "[qfd] done in %.0f s: %s", summary["wall_s"], summary)
    log(INFO, "[qfd] run directory: %s", run_dir)
