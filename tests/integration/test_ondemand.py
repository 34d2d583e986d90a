"""End to end: `ondemand` in a real Flower simulation; its ledger checked against the
physics, and `qfd compare` running strategies on the same devices and channels."""

import json
import math
import re

import pytest
import torch
from typer.testing import CliRunner

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.profile import model_profile
from qfd_app.edge import load_scenario
from qfd_app.edge.energy import downlink_rate_bps
from qfd_app.runs import cli
from qfd_app.runs.compare import parse_variants, run_comparison
from qfd_app.runs.launch import flwr_run, superlink
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow

RUN = (
    "scenario='smoke' num-server-rounds=2 local-epochs=1 fraction-train=1.0 "
    "eval-interval=0 eval-samples=64 final-eval-samples=0 sample-steps=10 "
    "downlink='fp32'"  # every download the same size: the physics test reads it
)
FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"


@pytest.fixture(scope="module")
def ondemand_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ondemand")
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:
        done = flwr_run(
            env,
            run_config=f"{RUN} output-dir='{root / 'out'}'",
            federation_config=FEDERATION,
        )
    assert done.returncode == 0, done.stdout[-5000:]
    (run_dir,) = (root / "out").iterdir()
    return run_dir


def expected_payload_bytes(bits: int) -> int:
    """The uniform codec's size per tensor of n values (DESIGN §3, uniform.py):
    4 fp32 scales per super-block of 3072, 10 bits per sub-block of 48, ⌈n·b/8⌉ bytes
    of codes; fp32 at 32 bits."""
    torch.manual_seed(0)
    sizes = [v.numel() for v in ddpm.build_unet("tiny", 16).state_dict().values()]
    if bits == 32:
        return 4 * sum(sizes)
    return sum(
        16 * math.ceil(n / 3072)
        + math.ceil(10 * math.ceil(n / 48) / 8)
        + math.ceil(n * bits / 8)
        for n in sizes
    )


def test_every_device_trained_within_its_demand_and_sent_exactly_its_bit_width(
    ondemand_run,
):
    scenario = load_scenario("smoke")
    demand = {c.name: (c.bits_min, c.bits_max) for c in scenario.classes}
    devices = read_csv(ondemand_run / "devices.csv")
    assert len(devices) == 6 and {d["status"] for d in devices} == {"ok"}
    assert {d["device_class"] for d in devices} == {"iot", "phone", "edge"}
    for d in devices:
        lo, hi = demand[d["device_class"]]
        assert (int(d["bits_min"]), int(d["bits_max"])) == (lo, hi)
        assert lo <= int(d["bits"]) <= hi
        assert int(d["bytes_up"]) == expected_payload_bytes(int(d["bits"]))


def energy(d) -> float:
    """A device's energy: compute, upload and download (receive)."""
    return sum(float(d[f"energy_{k}_j"]) for k in ("compute", "upload", "download"))


def test_the_ledger_energy_is_recomputable_from_devices_csv(ondemand_run):
    scenario = load_scenario("smoke")
    torch.manual_seed(0)
    model_values = sum(
        v.numel() for v in ddpm.build_unet("tiny", 16).state_dict().values()
    )
    classes = {c.name: c for c in scenario.classes}
    flops = model_profile("tiny", 16, 1).flops_per_sample
    devices = read_csv(ondemand_run / "devices.csv")
    noise = scenario.noise_w_per_hz
    for d in devices:
        cls, bits, f = classes[d["device_class"]], int(d["bits"]), float(d["cpu_hz"])
        work = (
            1
            * int(d["num_examples"])
            * flops
            * cls.cycles_per_flop
            * (bits / 32) ** scenario.gamma
        )
        assert float(d["compute_s"]) == pytest.approx(work / f, rel=1e-6)
        assert float(d["energy_compute_j"]) == pytest.approx(
            cls.kappa * work * f**2, rel=1e-6
        )
        b, g, p = float(d["bandwidth_hz"]), float(d["gain"]), float(d["power_w"])
        rate = b * math.log2(1 + g * p / (noise * b))
        assert float(d["upload_s"]) == pytest.approx(
            8 * int(d["bytes_up"]) / rate, rel=1e-6
        )
        assert float(d["energy_upload_j"]) == pytest.approx(
            p * float(d["upload_s"]), rel=1e-6
        )
        rate_down = downlink_rate_bps(
            scenario.downlink_bandwidth_hz,
            scenario.bs_power_w,
            g,
            noise,
            sum(e["round"] == d["round"] for e in devices),
        )
        assert int(d["bytes_down"]) == 4 * model_values  # the fp32 broadcast
        assert float(d["download_s"]) == pytest.approx(
            8 * int(d["bytes_down"]) / rate_down, rel=1e-6
        )
        assert float(d["energy_download_j"]) == pytest.approx(
            cls.receive_power_w * float(d["download_s"]), rel=1e-6
        )
        spent = float(d["download_s"]) + float(d["compute_s"]) + float(d["upload_s"])
        assert spent <= scenario.deadline_s * (1 + 1e-6)
        assert d["deadline_missed"] == "False" and p <= cls.power_w_max * (1 + 1e-9)
        assert cls.cpu_hz_min * (1 - 1e-9) <= f <= cls.cpu_hz_max * (1 + 1e-9)
    for r in read_csv(ondemand_run / "rounds.csv"):
        mine = [d for d in devices if d["round"] == r["round"]]
        total = sum(energy(d) for d in mine)
        assert float(r["energy_j"]) == pytest.approx(total, rel=1e-9)
        assert sum(float(d["bandwidth_hz"]) for d in mine) <= scenario.bandwidth_hz * (
            1 + 1e-9
        )


def test_the_run_summary_totals_the_ledger(ondemand_run):
    summary = json.loads((ondemand_run / "summary.json").read_text())
    devices = read_csv(ondemand_run / "devices.csv")
    assert summary["strategy"] == "ondemand" and summary["scenario"] == "smoke"
    assert summary["bytes_up"] == sum(int(d["bytes_up"]) for d in devices)
    assert summary["energy_j"] == pytest.approx(sum(energy(d) for d in devices))
    assert summary["bytes_down"] == sum(int(d["bytes_down"]) for d in devices)
    assert (ondemand_run / "plots" / "bits.png").exists() and math.isfinite(
        summary["final_fid"]
    )


def test_compare_runs_strategies_paired_on_seeds_and_goes_on_where_it_stopped(
    tmp_path,
):
    variants = parse_variants("fedavg,ondemand@delta", {"bits": 8})
    base = {
        "num-server-rounds": 2,
        "local-epochs": 1,
        "fraction-train": 0.67,
        "eval-interval": 0,
        "eval-samples": 64,
        "final-eval-samples": 128,
        "sample-steps": 5,
    }

    def compare(seeds, lines):
        return run_comparison(
            "smoke",
            variants,
            tmp_path / "cmp",
            base=base,
            num_devices=3,
            seeds=seeds,
            echo=lines.append,
        )

    out = compare([0], [])
    fedavg, ondemand = read_csv(out / "comparison.csv")
    assert [fedavg["strategy"], ondemand["strategy"]] == ["fedavg", "ondemand@delta"]
    assert float(ondemand["bytes_up"]) < 0.5 * float(fedavg["bytes_up"])
    # 2 of 3 devices a round: one trains twice and gets a delta the second time
    assert ondemand["downlink"] == "delta"
    assert float(ondemand["bytes_down"]) < float(fedavg["bytes_down"])
    assert float(ondemand["bytes_total_vs_first"]) < 1
    assert float(ondemand["energy_j"]) < float(fedavg["energy_j"])
    assert int(ondemand["demand_violations"]) == 0
    assert int(ondemand["draws"]) == 2 and float(ondemand["fid_se"]) > 0

    # killed after its last checkpoint, before its summary: resumed, not redone
    fedavg_run = out / fedavg["run_dir"]
    (fedavg_run / "summary.json").unlink()
    lines = []
    out = compare([0, 1], lines)
    assert any("[1/4] fedavg seed 0, resumed from" in line for line in lines)
    assert any("[2/4] ondemand@delta seed 0: finished before, kept" in line
               for line in lines)  # fmt: skip
    assert any(re.search(r"\[4/4\] ondemand@delta seed 1: round 2/2; left", line)
               for line in lines)  # fmt: skip
    rows = read_csv(out / "comparison.csv")
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        ("fedavg", "0"), ("ondemand@delta", "0"),
        ("fedavg", "1"), ("ondemand@delta", "1"),
    ]  # fmt: skip
    assert out / rows[0]["run_dir"] == fedavg_run
    assert float(rows[0]["energy_j"]) == pytest.approx(float(fedavg["energy_j"]))
    summary = read_csv(out / "comparison-summary.csv")
    assert {int(r["seeds"]) for r in summary} == {2}
    for name in ("comparison.md", "plots/fid.png", "plots/bars.png"):
        assert (out / name).exists(), name

    def sampled(row):
        devices = read_csv(out / row["run_dir"] / "devices.csv")
        return {(d["round"], d["partition_id"], d["gain"]) for d in devices}

    # paired: on one seed the same devices (2 of 3 a round) with the same fading
    assert sampled(rows[0]) == sampled(rows[1]) and len(sampled(rows[0])) == 4
    assert sampled(rows[2]) == sampled(rows[3]) != sampled(rows[0])
    # `qfd report` redraws a comparison from its runs
    for png in (out / "plots").glob("*.png"):
        png.unlink()
    result = CliRunner().invoke(cli.app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (out / "plots").glob("*.png")} == {
        "energy_bytes.png",
        "fid.png",
        "bars.png",
        "bits.png",
    }


def test_each_round_is_timed_by_phase_and_the_phases_fit_in_the_round(ondemand_run):
    for r in read_csv(ondemand_run / "rounds.csv"):
        phases = {
            k: float(r[k] or 0)
            for k in (
                "query_s",
                "solve_s",
                "train_s",
                "encode_s",
                "decode_s",
                "aggregate_s",
                "checkpoint_s",
                "evaluate_s",
            )
        }
        assert all(
            phases[k] > 0
            for k in (
                "query_s",
                "solve_s",
                "train_s",
                "encode_s",
                "decode_s",
                "aggregate_s",
            )
        )
        assert sum(phases.values()) <= float(r["round_s"])
