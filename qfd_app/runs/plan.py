"""`qfd plan`: the round a run would plan, without training — as a
record and as a table.

`plan_first_round` builds exactly what the ServerApp builds for round r of a run with
the same settings and number of devices: the same physics (`planner.round_physics`: the
run's model, E and γ), the same sampled devices (`planner.sample_partitions`), each
device's state as its ClientApp would report it (D_n from the run's data partition), and
the same `planner.plan_round`. Under `downlink = "delta"` round 1 is every device's
first download (fp32, a resync); later rounds are planned as if each device held its
copy. Before any training a run has no update history, so ε is not enforced in round 1;
`stand_in=True` plans with the scenario's stand-in history
instead (docs/model.md, "error budget").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from qfd_app.edge.energy import w_to_dbm
from qfd_app.edge.state import device_state
from qfd_app.strategies import planner


def plan_first_round(
    settings: Any,
    *,
    num_devices: int | None = None,
    round_: int = 1,
    scenario_seed: int | None = None,
    bandwidth_policy: str | None = None,
    stand_in: bool = False,
) -> dict[str, Any]:
    """The plan of round `round_` of a run with `settings` on `num_devices` devices
    (default: the scenario's), as the JSON-ready record of `planner.RoundPlan.record`
    plus its context."""
    scenario = settings.load_scenario()
    if scenario_seed is not None:
        scenario = dataclasses.replace(scenario, seed=scenario_seed)
    if bandwidth_policy is not None:
        scenario = dataclasses.replace(scenario, bandwidth_policy=bandwidth_policy)
    n = num_devices or scenario.num_devices
    sampled = planner.sample_partitions(
        list(range(n)),
        connected=n,
        fraction=settings.fraction_train,
        min_train=1,
        seed=settings.seed,
        server_round=round_,
    )
    # only the sampled devices are asked, as in a run: only their partitions load
    partitions = {p: settings.data.load_partition(p, n) for p in sampled}
    channels = int(partitions[sampled[0]].pixels.shape[1])
    physics = planner.round_physics(settings, scenario, channels)
    states = {
        p: device_state(scenario, p, n, round_, len(partitions[p]), {}, {})
        for p in sampled
    }
    history = planner.History()
    if stand_in:
        history = planner.stand_in_history(
            sampled, physics.shapes, scenario.update_rms, scenario.update_coherence
        )
    rules = settings.rules()
    # a `delta` device's first download is the full model in fp32: in round 1 everyone's
    resync = sampled if settings.downlink == "delta" and round_ == 1 else ()
    plan = planner.plan_round(rules, physics, states, history, resync)
    return {
        "scenario": scenario.name,
        "strategy": settings.strategy,
        "resource_policy": rules.resource_policy,
        "downlink": physics.downlink,
        "round": round_,
        "seed": scenario.seed,
        "devices_total": n,
        "history": "stand-in" if stand_in else "none",
        "model": {
            "preset": settings.model,
            "image_size": settings.image_size,
            "channels": channels,
            "parameters": sum(math.prod(s) for s in physics.shapes),
            "flops_per_sample": physics.flops_per_sample,
            "epochs": physics.epochs,
            "gamma": physics.gamma,
        },
        **plan.record(),
    }


def format_plan(record: dict[str, Any]) -> str:
    """A readable table of a plan: one line per device, then totals and warnings."""
    net, model, tot = record["network"], record["model"], record["totals"]
    budget = net["error_budget"]
    lines = [
        f"scenario {record['scenario']} · strategy {record['strategy']} "
        f"({record['resource_policy']}) · round {record['round']} "
        f"· seed {record['seed']} · {len(record['devices'])} of "
        f"{record['devices_total']} devices sampled",
        f"model {model['preset']} "
        f"{model['image_size']}×{model['image_size']}×{model['channels']}: "
        f"{model['parameters']:,} parameters, {model['flops_per_sample']:.3g} training "
        f"FLOPs per sample, E = {model['epochs']}, γ = {model['gamma']:g}",
        f"band {net['bandwidth_hz'] / 1e6:g} MHz ({net['bandwidth_policy']} "
        f"split) · downlink {record['downlink']} over "
        f"{net['downlink_bandwidth_hz'] / 1e6:g} MHz at "
        f"{float(w_to_dbm(net['bs_power_w'])):.0f} dBm · deadline "
        f"{net['deadline_s']:g} s · error budget ε = "
        f"{'off' if budget is None else format(budget, 'g')}"
        + (
            " (no update history yet: a run enforces ε from round 2)"
            if budget is None and record["history"] == "none"
            else ""
        ),
        "",
    ]
    header = (
        "#",
        "class",
        "dist m",
        "gain dB",
        "bits",
        "CPU GHz",
        "P dBm",
        "B kHz",
        "MB down",
        "down s",
        "compute s",
        "upload s",
        "E_rx J",
        "energy J",
        "status",
    )
    rows = [header]
    for d in record["devices"]:
        on = d["status"] == "scheduled"
        rows.append(
            (
                str(d["partition_id"]),
                d["class"],
                f"{d['distance_m']:.0f}",
                f"{d['gain_db']:.1f}",
                str(d["bits"]) if on else "-",
                f"{d['cpu_hz'] / 1e9:.3f}" if on else "-",
                f"{float(w_to_dbm(d['power_w'])):.1f}" if on else "-",
                f"{d['bandwidth_hz'] / 1e3:.1f}" if on else "-",
                f"{d['download_bits'] / 8e6:.3g}" if on else "-",
                f"{d['download_s']:.3g}" if on else "-",
                f"{d['compute_s']:.3g}" if on else "-",
                f"{d['upload_s']:.3g}" if on else "-",
                f"{d['energy_download_j']:.3g}" if on else "-",
                f"{d['energy_j']:.4g}" if on else "-",
                d["status"] + (f": {d['reason']}" if d["reason"] else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        lines.append(
            "  ".join(c.rjust(w) for c, w in zip(r[:-1], widths, strict=True))
            + "  "
            + r[-1]
        )
    budget_abs = tot["error_budget_abs"]
    lines += [
        "",
        f"total energy {tot['energy_j']:.4g} J (download "
        f"{tot['energy_download_j']:.4g} J, compute {tot['energy_compute_j']:.4g} "
        f"J, upload {tot['energy_upload_j']:.4g} J) · down "
        f"{tot['download_bits'] / 8e6:.4g} MB, payload "
        f"{tot['payload_bits'] / 8e6:.4g} MB · {tot['scheduled']} scheduled, "
        f"{tot['excluded']} excluded",
        f"error {tot['error']:.4g} / budget "
        f"{'off' if budget_abs is None else format(budget_abs, '.4g')} "
        f"({'met' if tot['budget_met'] else 'NOT met'}) · solved in "
        f"{tot['solve_s'] * 1e3:.1f} ms",
    ]
    lines += [f"warning: {w}" for w in record["warnings"]]
    return "\n".join(lines)
