"""End to end: a real Flower simulation (Ray backend) of a few devices, 2 rounds."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from qfd_app.diffusion import ddpm
from qfd_app.runs import cli
from qfd_app.runs.launch import flwr_run, superlink
from qfd_app.runs.ledger import read_csv

pytestmark = pytest.mark.slow


COMMON = (
    "num-server-rounds=2 local-epochs=1 eval-interval=1 eval-samples=64 "
    "final-eval-samples=192 sample-steps=10 fraction-train=1.0"
)
FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    """One private SuperLink for the module's runs; yields a function
    that runs the app."""
    root = tmp_path_factory.mktemp("sim")
    with superlink(root / "flwr-home", QFD_CACHE_DIR=str(root / "cache")) as env:

        def run(name, extra=""):
            out = root / name
            done = flwr_run(
                env,
                run_config=f"{COMMON} {extra} output-dir='{out}'",
                federation_config=FEDERATION,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            runs = list(out.iterdir())
            assert len(runs) == 1, runs
            return runs[0], done.stdout + done.stderr

        yield run


@pytest.fixture(scope="module")
def fedavg_run(flower):
    return flower("fedavg", "strategy='fedavg'")


@pytest.fixture(scope="module")
def assigned_run(flower):
    return flower("assigned", "strategy='ondemand' downlink='assigned'")


@pytest.fixture(scope="module")
def fixed4_run(flower):
    return flower("fixed4", "strategy='fixed' codec='uniform' bits=4")


def test_run_directory_holds_every_output(fedavg_run):
    run_dir, log = fedavg_run
    for name in (
        "config.json",
        "rounds.csv",
        "devices.csv",
        "summary.json",
        "final/model_index.json",
        "samples/round_001.png",
        "samples/round_002.png",
        "checkpoints/round_002/model.safetensors",
        "plots/rounds.png",
        "final-eval.json",
    ):
        assert (run_dir / name).exists(), name
    assert str(run_dir) in log  # the run directory is printed
    assert json.loads((run_dir / "config.json").read_text())["num-server-rounds"] == 2


def test_the_last_round_is_scored_in_three_draws_with_mean_and_error(fedavg_run):
    run_dir, _ = fedavg_run
    final = json.loads((run_dir / "final-eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    last = read_csv(run_dir / "rounds.csv")[-1]
    assert (final["draws"], final["samples_per_draw"]) == (3, 64)
    assert len(set(final["per_draw"]["fid"])) == 3  # three draws of noise
    for key in ("fid", "kid", "precision", "recall"):
        draws = final["per_draw"][key]
        assert len(draws) == 3
        # draw 0 is the round's own evaluation, as every earlier round's
        assert draws[0] == pytest.approx(float(last[key])) == summary[f"final_{key}"]
        assert summary[f"final_{key}_mean"] == pytest.approx(np.mean(draws))
        assert summary[f"final_{key}_se"] == pytest.approx(
            np.std(draws, ddof=1) / np.sqrt(3)
        )


def test_every_device_trained_and_its_upload_was_booked(fedavg_run):
    run_dir, _ = fedavg_run
    devices = read_csv(run_dir / "devices.csv")
    assert len(devices) == 6 and {d["status"] for d in devices} == {"ok"}
    assert {d["partition_id"] for d in devices} == {"0", "1", "2"}
    fp32_bytes = 4 * 263_025
    for d in devices:
        assert fp32_bytes <= int(d["bytes_up"]) <= 1.05 * fp32_bytes
    rounds = read_csv(run_dir / "rounds.csv")
    assert [r["round"] for r in rounds] == ["1", "2"]
    assert all(float(r["fid"]) > 0 and float(r["train_loss"]) > 0 for r in rounds)
    assert sum(int(r["bytes_up"]) for r in rounds) == sum(
        int(d["bytes_up"]) for d in devices
    )


def test_every_device_says_which_ray_node_it_trained_on(fedavg_run):
    run_dir, _ = fedavg_run
    nodes = {d["ray_node"] for d in read_csv(run_dir / "devices.csv")}
    # one local Ray
    assert len(nodes) == 1 and re.fullmatch(r"[0-9a-f]{56}", nodes.pop())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["ray_nodes"]) == 1


def test_tensorboard_holds_what_rounds_csv_holds(fedavg_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = fedavg_run
    (folder,) = (run_dir / "tensorboard").iterdir()
    assert folder.name == "fedavg:race-to-idle-seed0"
    events = EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0}
    )
    events.Reload()
    compared = 0
    for row in read_csv(run_dir / "rounds.csv"):
        for key, text in row.items():
            if key == "round" or not text or not math.isfinite(float(text)):
                continue
            points = {p.step: p.value for p in events.Scalars(f"rounds/{key}")}
            assert points[int(row["round"])] == pytest.approx(float(text), rel=1e-6), (
                key
            )
            compared += 1
    assert compared >= 2 * 20
    bits = events.Histograms("bits/assigned")
    assert [h.step for h in bits] == [1, 2] and all(
        h.histogram_value.min == 32 for h in bits
    )
    assert [i.step for i in events.Images("samples")] == [1, 2]  # eval-interval 1


def test_global_model_changed_from_its_seeded_initialisation(fedavg_run):
    run_dir, _ = fedavg_run
    torch.manual_seed(0)
    initial = ddpm.build_unet("tiny", 16).state_dict()
    trained = load_file(run_dir / "checkpoints" / "round_002" / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert all(torch.isfinite(v).all() for v in trained.values())
    moved = sum(float((trained[k] - initial[k]).abs().sum()) for k in initial)
    assert moved > 1.0


def test_final_model_loads_as_a_diffusers_pipeline_and_samples(fedavg_run):
    run_dir, _ = fedavg_run
    pipeline = DDPMPipeline.from_pretrained(run_dir / "final")
    images = pipeline(batch_size=2, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 16, 16, 1)
    # the export is the moving average of the global models (ema-decay),
    # checkpointed beside the last one
    averaged = load_file(run_dir / "checkpoints" / "round_002" / "average.safetensors")
    last = load_file(run_dir / "checkpoints" / "round_002" / "model.safetensors")
    exported = pipeline.unet.state_dict()
    assert averaged.keys() and all(
        torch.equal(exported[k], v) for k, v in averaged.items()
    )
    assert any(not torch.equal(exported[k], last[k]) for k in averaged)


def test_fixed_4_bit_uploads_weigh_half_a_byte_per_parameter_plus_scales(fixed4_run):
    run_dir, _ = fixed4_run
    torch.manual_seed(0)
    sizes = [v.numel() for v in ddpm.build_unet("tiny", 16).state_dict().values()]
    # 4 bits per value, plus 10 bits per sub-block of 48 values and 4 fp32 scales
    # per super-block of 3072 (uniform.py)
    expected = sum(
        math.ceil(n * 4 / 8)
        + math.ceil(10 * math.ceil(n / 48) / 8)
        + 16 * math.ceil(n / 3072)
        for n in sizes
    )
    devices = read_csv(run_dir / "devices.csv")
    assert len(devices) == 6 and {d["status"] for d in devices} == {"ok"}
    for d in devices:
        assert int(d["bytes_up"]) == expected
    assert int(devices[0]["bytes_up"]) < 0.15 * 4 * sum(sizes)


def test_fixed_4_bit_run_trains_the_model(fixed4_run):
    run_dir, _ = fixed4_run
    rounds = read_csv(run_dir / "rounds.csv")
    assert float(rounds[1]["train_loss"]) < float(rounds[0]["train_loss"])
    torch.manual_seed(0)
    initial = ddpm.build_unet("tiny", 16).state_dict()
    trained = load_file(run_dir / "checkpoints" / "round_002" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert sum(float((trained[k] - initial[k]).abs().sum()) for k in initial) > 1.0


def test_each_device_downloads_the_model_at_its_bits_and_pays_for_it(assigned_run):
    """downlink = 'assigned': per device and round, the bytes sent down are the
    codec's exact size at that device's bits, and the download time and receive energy
    are the physics of docs/model.md recomputed from devices.csv. Every update was
    accepted, which the server does only when the device's digest of the model it
    trained from equals the server's own decoding of what it sent."""
    from qfd_app.edge import load_scenario
    from qfd_app.edge.energy import downlink_rate_bps
    from qfd_app.quant import expected_payload_bytes, get_codec

    run_dir, _ = assigned_run
    scenario = load_scenario("default")
    receive_w = {c.name: c.receive_power_w for c in scenario.classes}
    shapes = [t.shape for t in ddpm.build_unet("tiny", 16).state_dict().values()]
    devices = read_csv(run_dir / "devices.csv")
    assert len(devices) == 6 and {d["status"] for d in devices} == {"ok"}
    bits = set()
    for d in devices:
        codec = get_codec("uniform", bits=int(d["bits"]))
        assert int(d["bytes_down"]) == expected_payload_bytes(codec, shapes)
        sampled = sum(e["round"] == d["round"] for e in devices)
        rate = downlink_rate_bps(
            scenario.downlink_bandwidth_hz,
            scenario.bs_power_w,
            float(d["gain"]),
            scenario.noise_w_per_hz,
            sampled,
        )
        download_s = 8 * int(d["bytes_down"]) / rate
        assert float(d["download_s"]) == pytest.approx(download_s, rel=1e-9)
        assert float(d["energy_download_j"]) == pytest.approx(
            receive_w[d["device_class"]] * download_s, rel=1e-9
        )
        bits.add(int(d["bits"]))
    assert len(bits) > 1  # devices of different classes got different downloads
    rounds = read_csv(run_dir / "rounds.csv")
    for r in rounds:
        mine = [d for d in devices if d["round"] == r["round"]]
        assert int(r["bytes_down"]) == sum(int(d["bytes_down"]) for d in mine)


def test_qfd_evaluate_scores_a_finished_run_as_its_last_round_did(fedavg_run, tmp_path):
    run_dir, _ = fedavg_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "final-eval.json").unlink()
    result = CliRunner().invoke(cli.app, ["evaluate", str(copy)])
    assert result.exit_code == 0, result.output
    # the exported model, scored again: the same draws, the same numbers
    assert json.loads((copy / "final-eval.json").read_text()) == json.loads(
        (run_dir / "final-eval.json").read_text()
    )
    assert json.loads((copy / "summary.json").read_text()) == json.loads(
        (run_dir / "summary.json").read_text()
    )
    result = CliRunner().invoke(cli.app, ["evaluate", str(copy), "--samples", "256"])
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "summary.json").read_text())["final_draws"] == 4
