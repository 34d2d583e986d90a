"""The round planner: the measured model, exact payloads, the stand-in history, the
record, and how a strategy's rules and the run's settings shape the plan."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from qfd_app.diffusion.profile import model_profile
from qfd_app.edge.scenario import load_scenario
from qfd_app.quant.registry import codec_bits
from qfd_app.runs.plan import plan_first_round
from qfd_app.settings import Settings, SettingsError, default_run_config
from qfd_app.strategies import get_strategy, planner
from qfd_app.strategies.planner import gaussian_range, payload_bits, stand_in_history

torch.set_num_threads(1)


def settings(**overrides):
    return Settings.from_run_config(
        {
            **default_run_config(),
            **{k.replace("_", "-"): v for k, v in overrides.items()},
        }
    )


def inputs(**overrides):
    """The solver's inputs of round 1 of a run with these settings,
    every device sampled."""
    s = settings(**{"fraction_train": 1.0, **overrides})
    record = plan_first_round(s)
    bits = [[c["bits"] for c in d["candidates"]] for d in record["devices"]]
    work = [[c["work_cycles"] for c in d["candidates"]] for d in record["devices"]]
    return record, bits, work


@pytest.fixture(scope="module")
def tiny():
    return model_profile("tiny", 16, 1)


def test_the_model_is_measured_not_guessed(tiny):
    from qfd_app.diffusion.ddpm import build_unet

    real = build_unet("tiny", 16, 1)
    assert tiny.parameters == sum(p.numel() for p in real.parameters())
    # notes/cpu-ml.md: 9.1e7 fwd + bwd
    assert tiny.flops_per_sample == pytest.approx(9.1e7, rel=0.1)
    small = model_profile("small", 16, 1)
    assert small.flops_per_sample == pytest.approx(3.6e8, rel=0.1)


def uniform_size_bytes(shape, bits):
    """An independent statement of the uniform codec's wire size: ⌈n·b/8⌉ packed
    codes plus an fp32 minimum and step per block of 256 values (64 at b ≤ 3); fp32
    is 4 bytes a value."""
    n = math.prod(shape)
    if bits == 32:
        return 4 * n
    sub_blocks = math.ceil(n / 48)  # 16 bytes per 64 sub-blocks, 10 bits per one
    return (
        math.ceil(n * bits / 8)
        + 16 * math.ceil(sub_blocks / 64)
        + math.ceil(10 * sub_blocks / 8)
    )


def test_payloads_are_the_codecs_exact_sizes(tiny):
    widths = codec_bits("uniform", "fp32")
    assert widths == (*range(1, 17), 32)
    for bits in widths:
        codec = "fp32" if bits == 32 else "uniform"
        for shapes in (tiny.shapes[:12], ((1,),), ((65,),), ((257,),)):
            assert payload_bits(codec, bits, shapes) == 8 * sum(
                uniform_size_bytes(s, bits) for s in shapes
            )


def test_payload_is_about_d_times_b_plus_the_scales(tiny):
    d = tiny.parameters
    for bits in (2, 4, 8, 16):
        # 0.25 bits of scales per value in whole super-blocks; the tiny UNet's 120
        # tensors below one super-block (3072 values) still pay 16 bytes each: 0.307
        assert payload_bits("uniform", bits, tiny.shapes) == pytest.approx(
            d * (bits + 0.307), rel=0.001
        )
    assert payload_bits("fp32", 32, tiny.shapes) == 32 * d


def test_the_expected_gaussian_range_is_right():
    assert gaussian_range(1) == pytest.approx(0.0, abs=1e-9)
    assert gaussian_range(2) == pytest.approx(2 / math.sqrt(math.pi), rel=1e-6)
    assert 5.4 < gaussian_range(256) < 5.8  # tables: ≈ 5.6 for n = 256
    assert gaussian_range(64) < gaussian_range(256)


def test_the_stand_in_error_falls_with_bits_and_scales_with_the_update(tiny):
    from qfd_app.edge.state import fleet_state
    from qfd_app.quant.registry import default_block_size

    state = fleet_state(load_scenario("smoke").fleet(), 0, 1, 100)

    def v(bits, rms):  # noqa: E306
        history = stand_in_history([0], tiny.shapes, rms, 1.0)
        return replace(state, range_sq=history.range_sq[0]).error(
            bits, default_block_size(bits)
        )

    errors = [v(b, 1e-3) for b in range(1, 17)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert v(4, 2e-3) == pytest.approx(4 * v(4, 1e-3))
    assert stand_in_history(
        [0], tiny.shapes, 1e-3, 0.5
    ).update_sq_norm == pytest.approx(0.5 * tiny.parameters * 1e-6)


def test_an_unknown_model_preset_names_the_setting():
    with pytest.raises(
        SettingsError, match="The 'model' setting must be one of .*; got 'huge'"
    ):
        settings(model="huge")


def test_the_plan_follows_the_scenario_the_strategy_and_the_run_settings():
    record, bits, work = inputs()
    assert [bits[n] for n in (0, 4, 8)] == [
        [2, 3, 4],
        [4, 5, 6, 7, 8],
        list(range(8, 17)),
    ]
    # 4500 images, 450 each
    np.testing.assert_allclose([d["weight"] for d in record["devices"]], 0.1)
    assert (
        record["network"]["bandwidth_hz"] == 10e6
        and record["network"]["deadline_s"] == 300.0
    )
    # W = E · D_n · φ · c_n · (b/32)^γ, E and D_n from the run's settings and data
    phi = record["model"]["flops_per_sample"]
    assert work[0][0] == pytest.approx(10 * 450 * phi * 0.5 * 2 / 32)
    _, _, work_e2 = inputs(local_epochs=2)
    assert work_e2[0][0] == pytest.approx(work[0][0] / 5)
    _, fedavg, _ = inputs(strategy="fedavg")
    assert all(row == [32] for row in fedavg)
    _, fixed, _ = inputs(strategy="fixed", bits=6)
    assert all(row == [6] for row in fixed)
    scaled = plan_first_round(settings(fraction_train=1.0), num_devices=30)
    # as in a run: the band stays
    assert len(scaled["devices"]) == 30 and scaled["network"]["bandwidth_hz"] == 10e6


def test_the_run_samples_a_fraction_of_the_devices_and_the_plan_the_same_ones():
    record = plan_first_round(settings(fraction_train=0.2))
    expected = planner.sample_partitions(
        list(range(10)), connected=10, fraction=0.2, min_train=1, seed=0, server_round=1
    )
    assert [d["partition_id"] for d in record["devices"]] == expected and len(
        expected
    ) == 2


def test_with_gamma_zero_the_work_does_not_depend_on_bits(tmp_path):
    path = tmp_path / "flat.toml"
    path.write_text('extends = "default"\n[training]\ngamma = 0.0\n')
    _, _, work = inputs(scenario=str(path))
    for row in work:
        assert len(set(row)) == 1


def test_the_record_holds_inputs_outputs_and_totals_and_the_stand_in_budget_binds():
    record = plan_first_round(
        settings(scenario="smoke", fraction_train=1.0), stand_in=True
    )
    assert (
        record["scenario"] == "smoke"
        and record["strategy"] == "ondemand"
        and record["history"] == "stand-in"
    )
    assert len(record["devices"]) == 3
    energy = sum(d["energy_j"] for d in record["devices"])
    assert record["totals"]["energy_j"] == pytest.approx(energy)
    used = sum(
        d["weight_used"] ** 2
        * next(c["error"] for c in d["candidates"] if c["bits"] == d["bits"])
        for d in record["devices"]
    )
    assert record["totals"]["error"] == pytest.approx(used)
    assert (
        record["totals"]["budget_met"]
        and 0 < used <= record["totals"]["error_budget_abs"]
    )
    for d in record["devices"]:
        assert d["bits_min"] <= d["bits"] <= d["bits_max"]


def test_round_one_of_a_run_has_no_history_so_the_budget_is_off():
    record = plan_first_round(settings(scenario="smoke", fraction_train=1.0))
    assert record["network"]["error_budget"] is None and record["history"] == "none"
    assert [d["bits"] for d in record["devices"]] == [
        d["bits_min"] for d in record["devices"]
    ]


def test_plans_repeat_for_the_same_seed_and_round_and_differ_for_another_round():
    s = settings(fraction_train=1.0)
    a, b = plan_first_round(s, round_=3), plan_first_round(s, round_=3)
    c = plan_first_round(s, round_=4)
    gains = lambda r: [d["gain"] for d in r["devices"]]  # noqa: E731
    assert gains(a) == gains(b) and gains(a) != gains(c)
    assert [d["energy_j"] for d in a["devices"]] == [
        d["energy_j"] for d in b["devices"]
    ]


def test_ondemand_uses_less_energy_than_fedavg_on_the_paper_model():
    paper = {
        "scenario": "paper",
        "model": "ddpm-cifar10",
        "image_size": 32,
        "local_epochs": 1,
        "fraction_train": 1.0,
    }
    ondemand = plan_first_round(settings(**paper))
    fedavg = plan_first_round(
        settings(**paper, strategy="fedavg", resource_policy="optimal")
    )
    race = plan_first_round(settings(**paper, strategy="fedavg"))
    assert race["resource_policy"] == "race-to-idle"
    assert ondemand["model"]["parameters"] > 35e6
    assert (
        ondemand["totals"]["energy_j"]
        < fedavg["totals"]["energy_j"]
        < race["totals"]["energy_j"]
    )
    assert ondemand["totals"]["payload_bits"] < fedavg["totals"]["payload_bits"]
    for d in race["devices"]:
        if d["status"] == "scheduled":
            assert (
                d["cpu_hz"] == d["cpu_hz_max"]
                and d["power_w"] == d["power_w_max"]
                and d["bits"] == 32
            )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {"strategy": "greedy"},
            "The 'strategy' setting must be one of 'fedavg', 'fixed', "
            "'ondemand'; got 'greedy'",
        ),
        (
            {"strategy": "fixed", "bits": 20},
            "The 'bits' setting with codec 'uniform' must be one of 1, .*16; got 20",
        ),
        (
            {"resource_policy": "race-to-idle"},
            "with strategy 'ondemand' must be one of 'auto', 'optimal'; got 'race",
        ),
        (
            {"strategy": "fedavg", "resource_policy": "lazy"},
            "The 'resource-policy' setting must be one of",
        ),
        (
            {"strategy": "ondemand", "codec": "fp16", "bits": 16},
            "'codec' setting with strategy 'ondemand' must be",
        ),
    ],
)
def test_settings_that_do_not_fit_the_strategy_are_refused_before_planning(
    overrides, words
):
    with pytest.raises(SettingsError, match=words):
        settings(**overrides)


def test_every_strategy_plans_with_its_own_codec_sizes():
    for name, codec, bits in (
        ("fixed", "bnb-nf4", 4),
        ("fixed", "fp16", 16),
        ("ondemand", "uniform", 8),
    ):
        record = plan_first_round(
            settings(
                scenario="smoke",
                fraction_train=1.0,
                strategy=name,
                codec=codec,
                bits=bits,
            )
        )
        rules = get_strategy(name)(codec=codec, bits=bits)
        shapes = model_profile("tiny", 16, 1).shapes
        for d in record["devices"]:
            for c in d["candidates"]:
                assert c["payload_bits"] == payload_bits(
                    rules.codec_for(c["bits"]), c["bits"], shapes
                )


def _downlink_plan(downlink, resync=()):
    """Round 1 of the smoke scenario's three devices under `downlink`."""
    from qfd_app.edge.state import device_state

    s = settings(scenario="smoke", fraction_train=1.0, downlink=downlink)
    scenario = s.load_scenario()
    physics = planner.round_physics(s, scenario, 1)
    states = {p: device_state(scenario, p, 3, 1, 450, {}, {}) for p in range(3)}
    plan = planner.plan_round(s.rules(), physics, states, planner.History(), resync)
    return physics, plan


@pytest.mark.parametrize("downlink", planner.DOWNLINKS)
def test_the_download_size_follows_the_downlink_and_resync_sends_fp32(downlink):
    physics, plan = _downlink_plan(downlink, resync={1})
    assert physics.downlink == downlink
    c = plan.candidates
    valid = c.valid
    fp32 = payload_bits("fp32", 32, physics.shapes)
    fixed = {"fp32": fp32, "fp16": payload_bits("fp16", 16, physics.shapes)}
    for n, partition in enumerate(plan.partitions):
        sizes = c.download_bits[n, valid[n]]
        if partition == 1:  # a resync: the full model in fp32 whatever the scheme
            assert np.all(sizes == fp32)
        elif downlink in fixed:  # the same model at every bit-width
            assert np.all(sizes == fixed[downlink])
        else:  # assigned, delta: encoded as the device's update at its bits
            np.testing.assert_array_equal(sizes, c.payload_bits[n, valid[n]])
    # the assignment carries the download the data path and the ledger need
    a = plan.allocation
    for n, partition in enumerate(plan.partitions):
        job = plan.assignments.get(partition)
        if job is None:
            continue
        expected = planner.download_codec(downlink, job.codec, job.bits)
        assert (job.download_codec, job.download_bits) == (
            ("fp32", 32) if partition == 1 else expected
        )
        assert job.download_s == a.download_s[n] > 0
        rate = job.download_rate_bps
        assert job.download_s == pytest.approx(a.download_bits[n] / rate)
        assert job.energy_download_j == pytest.approx(
            job.receive_power_w * job.download_s
        )
        assert job.receive_power_w == plan.states[n].device_class.receive_power_w


def test_the_scenario_downlink_reaches_the_network():
    physics, _ = _downlink_plan("fp32")
    scenario = load_scenario("smoke")
    assert physics.network.downlink_bandwidth_hz == scenario.downlink_bandwidth_hz
    assert physics.network.bs_power_w == scenario.bs_power_w
