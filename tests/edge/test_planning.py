"""Planning a round from a scenario: the measured model, exact payloads, the stand-in error, the record."""

import math

import numpy as np
import pytest
import torch

from qfd_app import planning
from qfd_app.edge.energy import CODEC_BITS
from qfd_app.edge.scenario import ScenarioError, load_scenario
from qfd_app.planning import (
    PlanError,
    gaussian_range,
    model_profile,
    payload_bits,
    plan_round,
    round_inputs,
    uniform_size_bytes,
    update_error,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return model_profile("tiny", 16, 1)


def test_the_model_is_measured_not_guessed(tiny):
    from qfd_app.diffusion.ddpm import build_unet

    real = build_unet("tiny", 16, 1)
    assert tiny.parameters == sum(p.numel() for p in real.parameters())
    assert tiny.flops_per_sample == pytest.approx(9.1e7, rel=0.1)     # notes/cpu-ml.md: 9.1e7 fwd + bwd
    small = model_profile("small", 16, 1)
    assert small.flops_per_sample == pytest.approx(3.6e8, rel=0.1)


def test_the_payload_formula_is_the_codecs_exact_size(tiny):
    quant = pytest.importorskip("qfd_app.quant")
    for bits in CODEC_BITS:
        codec = quant.get_codec("fp32", bits=32) if bits == 32 else quant.get_codec("uniform", bits=bits)
        for shape in (*tiny.shapes[:12], (1,), (65,), (257,)):
            assert codec.size_bytes(shape) == uniform_size_bytes(shape, bits), (bits, shape)
    assert planning.payload_source() == "codec"


def test_payload_is_about_d_times_b_plus_the_scales(tiny):
    d = tiny.parameters
    for bits in (2, 4, 8, 16):
        scales = 64 / (64 if bits <= 3 else 256)
        assert payload_bits(bits, tiny.shapes) == pytest.approx(d * (bits + scales), rel=0.01)
    assert payload_bits(32, tiny.shapes) == 32 * d


def test_the_expected_gaussian_range_is_right():
    assert gaussian_range(1) == pytest.approx(0.0, abs=1e-9)
    assert gaussian_range(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-6)
    assert 5.4 < gaussian_range(256) < 5.8                               # tables: ≈ 5.6 for n = 256
    assert gaussian_range(64) < gaussian_range(256)


def test_the_stand_in_error_falls_with_bits_and_scales_with_the_update(tiny):
    v = [update_error(b, tiny.shapes, 1e-3) for b in CODEC_BITS]
    assert all(a > b for a, b in zip(v, v[1:]))
    assert update_error(4, tiny.shapes, 2e-3) == pytest.approx(4 * update_error(4, tiny.shapes, 1e-3))


def test_an_unknown_model_preset_names_the_key():
    with pytest.raises(ScenarioError, match="model.preset must be one of .*got 'huge'"):
        model_profile("huge", 16, 1)


def test_round_inputs_follow_the_scenario_and_the_strategy():
    s = load_scenario("default")
    inputs = round_inputs(s)
    bits = inputs.candidates.bits
    assert [row[row > 0].tolist() for row in bits[[0, 4, 8]]] == [[2, 3, 4], [4, 5, 6, 7, 8], list(range(8, 17))]
    np.testing.assert_allclose(inputs.devices.weight, 0.1)
    assert inputs.network.bandwidth_hz == 10e6 and inputs.network.deadline_s == 300.0
    # W = E · D_n · φ · c_n · (b/32)^γ
    phi = inputs.model.flops_per_sample
    assert inputs.candidates.work_cycles[0, 0] == pytest.approx(10 * 450 * phi * 0.5 * 2 / 32)
    fedavg = round_inputs(s, strategy="fedavg")
    assert (fedavg.candidates.bits == 32).all()
    fixed = round_inputs(s, strategy="fixed", bits=6)
    assert (fixed.candidates.bits == 6).all()
    scaled = round_inputs(s, num_devices=30)
    assert len(scaled.devices) == 30 and scaled.network.bandwidth_hz == 30e6


def test_with_gamma_zero_the_work_does_not_depend_on_bits(tmp_path):
    path = tmp_path / "flat.toml"
    path.write_text('extends = "default"\n[training]\ngamma = 0.0\n')
    cand = round_inputs(load_scenario(path)).candidates
    for row, bits in zip(cand.work_cycles, cand.bits):
        assert np.unique(row[bits > 0]).size == 1


def test_plan_round_records_inputs_outputs_and_totals():
    record = plan_round("smoke")
    assert record["scenario"] == "smoke" and record["strategy"] == "ondemand"
    assert len(record["devices"]) == 3
    energy = sum(d["energy_j"] for d in record["devices"])
    assert record["totals"]["energy_j"] == pytest.approx(energy)
    used = sum(d["weight_used"] ** 2 * next(c["error"] for c in d["candidates"] if c["bits"] == d["bits"])
               for d in record["devices"])
    assert record["totals"]["error"] == pytest.approx(used)
    assert record["totals"]["budget_met"] and used <= record["totals"]["error_budget_abs"]
    for d in record["devices"]:
        assert d["bits_min"] <= d["bits"] <= d["bits_max"]


def test_plans_repeat_for_the_same_seed_and_round_and_differ_for_another_round():
    a, b = plan_round("default", round_=3), plan_round("default", round_=3)
    c = plan_round("default", round_=4)
    gains = lambda r: [d["gain"] for d in r["devices"]]  # noqa: E731
    assert gains(a) == gains(b) and gains(a) != gains(c)
    assert [d["energy_j"] for d in a["devices"]] == [d["energy_j"] for d in b["devices"]]


def test_ondemand_uses_less_energy_than_fedavg_on_the_paper_model():
    ondemand = plan_round("paper")
    fedavg = plan_round("paper", strategy="fedavg", resource_policy="optimal")
    race = plan_round("paper", strategy="fedavg")
    assert ondemand["model"]["parameters"] > 35e6
    assert ondemand["totals"]["energy_j"] < fedavg["totals"]["energy_j"] < race["totals"]["energy_j"]
    assert ondemand["totals"]["payload_bits"] < fedavg["totals"]["payload_bits"]
    for d in race["devices"]:
        if d["status"] == "scheduled":
            assert d["cpu_hz"] == d["cpu_hz_max"] and d["power_w"] == d["power_w_max"] and d["bits"] == 32


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"strategy": "greedy"}, "--strategy must be one of"),
    ({"strategy": "fixed"}, "needs --bits"),
    ({"strategy": "fixed", "bits": 20}, "--bits must be one of 1–16 or 32"),
    ({"bits": 4}, "--bits sets the bit-width of --strategy fixed"),
    ({"resource_policy": "race-to-idle"}, "fedavg's"),
    ({"strategy": "fedavg", "resource_policy": "lazy"}, "--resource-policy must be one of"),
    ({"bandwidth_policy": "fair"}, "--bandwidth-policy must be one of equal, optimal; got 'fair'"),
])
def test_options_that_do_not_fit_together_are_plan_errors(kwargs, words):
    with pytest.raises(PlanError, match=words):
        plan_round("smoke", **kwargs)
