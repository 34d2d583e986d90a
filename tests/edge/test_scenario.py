"""Scenario files: the default is DESIGN §2's, every shipped one loads, bad
input names its key."""

import math
import os
import re
import tomllib

import pytest

from qfd_app.edge.scenario import SCENARIO_DIR, ScenarioError, available, load_scenario


def test_the_default_scenario_is_the_one_fixed_in_the_design():
    s = load_scenario("default")
    classes = {c.name: c for c in s.classes}
    assert dict(zip([c.name for c in s.classes], s.counts)) == {
        "iot": 4,
        "phone": 4,
        "edge": 2,
    }
    table = {  # DESIGN §2: demand, f_min … f_max, cycles per FLOP, p_max, κ
        "iot": ((2, 4), (0.3e9, 1.0e9), 0.5, 0.1, 1e-28),
        "phone": ((4, 8), (0.5e9, 2.0e9), 0.25, 0.2, 1e-28),
        "edge": ((8, 16), (0.8e9, 3.0e9), 0.125, 0.2, 1e-28),
    }
    for name, (bits, cpu, cycles, power, kappa) in table.items():
        c = classes[name]
        assert (c.bits_min, c.bits_max) == bits
        assert (c.cpu_hz_min, c.cpu_hz_max) == cpu
        assert (c.cycles_per_flop, c.power_w_max, c.kappa) == (cycles, power, kappa)
        assert c.distance_m is None  # placed uniformly in the cell
    assert s.cell_radius_m == 500.0 and s.bandwidth_hz == 10e6
    assert s.noise_dbm_per_hz == -174.0 and s.shadowing_db == 8.0
    # DESIGN's 1 epoch in 30 s, scaled to the 10 epochs the default run
    # trains (docs/model.md)
    assert s.gamma == 1.0 and s.deadline_s == 300.0 and s.epsilon == 0.05
    assert s.noise_w_per_hz == pytest.approx(3.981e-21, rel=1e-3)
    # the downlink (docs/model.md §5): a macro cell's 46 dBm over 10 MHz (3GPP TR
    # 36.814) and each class's receive power
    assert s.downlink_bandwidth_hz == 10e6
    assert s.bs_power_w == pytest.approx(10 ** (46 / 10) / 1000, rel=1e-3)
    receive = {name: c.receive_power_w for name, c in classes.items()}
    assert receive == {"iot": 0.1, "phone": 1.3, "edge": 1.3}


def test_the_paper_scenario_has_a_20_mhz_downlink_at_49_dbm():
    s = load_scenario("paper")
    assert s.downlink_bandwidth_hz == 20e6
    assert s.bs_power_w == pytest.approx(10 ** (49 / 10) / 1000, rel=1e-3)


@pytest.mark.parametrize(
    "name", ["default", "paper", "heterogeneous", "many-devices", "smoke"]
)
def test_every_shipped_scenario_loads(name):
    assert name in available()
    s = load_scenario(name)
    assert s.num_devices == len(s.fleet()) and s.description


def test_extends_changes_only_what_the_file_lists():
    paper, default = load_scenario("paper"), load_scenario("default")
    assert paper.deadline_s == 600.0 and paper.bandwidth_hz == 20e6
    assert (
        paper.shadowing_db == default.shadowing_db
        and paper.classes[0] == default.classes[1]
    )
    assert [c.name for c in paper.classes] == [
        "phone",
        "edge",
    ]  # iot = 0 drops the class


def test_replicating_devices_keeps_the_class_mix():
    s = load_scenario("default")
    assert s.class_index(25).tolist()[:12] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 0]


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


POSITIVE = "must be a float in the range (0, inf)"
BITS = "must be an int in the range [1, 32]"

BAD = [  # (TOML after `extends = "default"`, words the message must hold)
    (
        "[network]\nbs_power_w = -40.0",
        ["Scenario key 'network.bs_power_w'", POSITIVE, "; got -40.0."],
    ),
    (
        "[network]\ndownlink_bandwidth_hz = 0.0",
        ["Scenario key 'network.downlink_bandwidth_hz'", POSITIVE, "; got 0.0."],
    ),
    (
        '[network]\nbs_power_w = "46 dBm"',
        ["Scenario key 'network.bs_power_w'", POSITIVE, "; got '46 dBm'."],
    ),
    (
        "[classes.iot]\nreceive_power_w = -0.1",
        [
            "Scenario key 'classes.iot.receive_power_w'",
            "must be a float in the range [0, inf)",
            "; got -0.1.",
        ],
    ),
    (
        "[classes.tablet]\nbits_min = 4\nbits_max = 8\ncpu_hz_min = 5e8\n"
        "cpu_hz_max = 2e9\ncycles_per_flop = 0.2\npower_w_max = 0.2\nkappa = 1e-28\n"
        "[devices]\ntablet = 1",
        [
            "Scenario key 'classes.tablet.receive_power_w' is missing",
            "; it must be a float in the range [0, inf).",
        ],
    ),
    (
        "[classes.iot]\npower_w_max = -0.1",
        ["Scenario key 'classes.iot.power_w_max'", POSITIVE, "; got -0.1."],
    ),
    (
        "[classes.phone]\nbits_min = 9",
        ["classes.phone.bits_min", "≤ classes.phone.bits_max", "9 > 8"],
    ),
    (
        "[classes.edge]\nbits_max = 33",
        ["Scenario key 'classes.edge.bits_max'", BITS, "; got 33."],
    ),
    (
        "[classes.edge]\nbits_min = 0",
        ["Scenario key 'classes.edge.bits_min'", BITS, "; got 0."],
    ),
    (
        "[devices]\ntablet = 3",
        ["devices.tablet", "unknown device class", "iot, phone, edge"],
    ),
    (
        "[classes.tablet]\nbits_min = 4\n[devices]\ntablet = 1",
        [
            "Scenario key 'classes.tablet.bits_max' is missing",
            "; it must be an int in the range [1, 32].",
        ],
    ),
    (
        '[network]\ndeadline_s = "30"',
        ["Scenario key 'network.deadline_s'", POSITIVE, "; got '30'."],
    ),
    (
        "[devices]\niot = 2.5",
        [
            "Scenario key 'devices.iot'",
            "must be an int in the range [0, inf)",
            "; got 2.5.",
        ],
    ),
    ("[classes.iot]\ncount = true", ["classes.iot.count", "unknown key", "bits_max"]),
    (
        "[network]\nbandwith_hz = 1e6",
        ["network.bandwith_hz", "unknown key", "bandwidth_hz"],
    ),
    (
        '[network]\nbandwidth_policy = "fair"',
        [
            "Scenario key 'network.bandwidth_policy'",
            "must be one of 'equal', 'optimal'",
            "; got 'fair'.",
        ],
    ),
    (
        "[classes.phone]\ncpu_hz_min = 3e9",
        ["classes.phone.cpu_hz_min", "≤ classes.phone.cpu_hz_max"],
    ),
    (
        "[network]\nmin_distance_m = 600.0",
        ["network.min_distance_m", "< network.cell_radius_m"],
    ),
    ("[devices]\niot = 0\nphone = 0\nedge = 0", ["devices", "at least one device"]),
    (
        "[network]\ndeadline_s = nan",
        ["Scenario key 'network.deadline_s'", POSITIVE, "; got nan."],
    ),
    (
        "[network]\ndeadline_s = inf",
        ["Scenario key 'network.deadline_s'", POSITIVE, "; got inf."],
    ),
    (
        "[budget]\nepsilon = -1.0",
        [
            "Scenario key 'budget.epsilon'",
            "must be a float in the range [0, inf]",
            "; got -1.0.",
        ],
    ),
    (
        "seed = -3",
        ["Scenario key 'seed'", "must be an int in the range [0, inf)", "; got -3."],
    ),
    (
        "[training]\ngamma = -1.0",
        [
            "Scenario key 'training.gamma'",
            "must be a float in the range [0, inf)",
            "; got -1.0.",
        ],
    ),
    (
        '[model]\npreset = "tiny"',
        ["'model.preset' is no longer a scenario key", "the run's `model` setting"],
    ),
    (
        "[data]\ntrain_samples = 300",
        ["'data.train_samples' is no longer a scenario key", "partition"],
    ),
]


@pytest.mark.parametrize(("body", "words"), BAD, ids=[w[0] for _, w in BAD])
def test_a_bad_value_is_one_error_that_names_the_key(tmp_path, body, words):
    path = write(tmp_path, 'extends = "default"\n' + body)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith("s.toml: ") and "\n" not in message
    for word in words:
        assert word in message


def test_missing_keys_in_a_standalone_file_are_named(tmp_path):
    text = (SCENARIO_DIR / "default.toml").read_text().replace("deadline_s = 300.0", "")
    missing = (
        "Scenario key 'network.deadline_s' is missing; it must be a float in "
        "the range (0, inf)."
    )
    with pytest.raises(ScenarioError, match=re.escape(missing)):
        load_scenario(write(tmp_path, text))


def test_bad_toml_unknown_names_and_loops_are_errors(tmp_path):
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[network\n"))
    with pytest.raises(ScenarioError, match="Unknown scenario 'nope'.*default"):
        load_scenario("nope")
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "absent.toml")
    write(tmp_path, 'extends = "b.toml"', "a.toml")
    write(tmp_path, 'extends = "a.toml"', "b.toml")
    with pytest.raises(ScenarioError, match="loops"):
        load_scenario(tmp_path / "a.toml")
    refusal = (
        "c.toml: Scenario key 'extends' must be a scenario name or the path of a "
        ".toml file; got 3."
    )
    with pytest.raises(ScenarioError, match=re.escape(refusal)):
        load_scenario(write(tmp_path, "extends = 3", "c.toml"))


def test_scenario_errors_are_value_errors():
    assert issubclass(ScenarioError, ValueError)


def test_an_infinite_budget_switches_it_off(tmp_path):
    s = load_scenario(write(tmp_path, 'extends = "default"\n[budget]\nepsilon = inf'))
    assert math.isinf(s.epsilon)


def test_a_scenario_file_is_parsed_once_until_it_changes(tmp_path, monkeypatch):
    parsed = []
    loads = tomllib.loads
    monkeypatch.setattr(
        tomllib, "loads", lambda text: parsed.append(text) or loads(text)
    )
    base = write(tmp_path, (SCENARIO_DIR / "default.toml").read_text(), "base.toml")
    path = write(
        tmp_path, 'extends = "base.toml"\n[network]\ndeadline_s = 100.0\n', "child.toml"
    )
    first = load_scenario(path)
    # the file and the one it extends
    assert len(parsed) == 2 and first.deadline_s == 100.0
    monkeypatch.chdir(tmp_path)
    assert load_scenario(path) is first and load_scenario("child.toml") is first
    assert len(parsed) == 2

    stat = path.stat()
    path.write_text('extends = "base.toml"\n[network]\ndeadline_s = 200.0\n')
    # a new mtime, whatever the clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_scenario(path)
    # only the changed file
    assert second is not first and second.deadline_s == 200.0 and len(parsed) == 3

    stat = base.stat()
    base.write_text(base.read_text().replace("seed = 0", "seed = 7"))
    os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = load_scenario(path)
    # a changed base reloads too
    assert third is not second and third.seed == 7 and third.deadline_s == 200.0


def test_a_demand_that_no_codec_sends_is_refused_by_the_run_settings(tmp_path):
    from qfd_app.quant.registry import codec_bits
    from qfd_app.settings import Settings, SettingsError, default_run_config

    path = write(
        tmp_path, 'extends = "default"\n[classes.edge]\nbits_min = 17\nbits_max = 20'
    )
    with pytest.raises(
        ScenarioError,
        match=r"classes.edge: the demand \[17, 20\] holds no bit-width with a codec",
    ):
        load_scenario(path).check_widths(codec_bits())
    with pytest.raises(
        SettingsError,
        match=r"The 'scenario' setting must be a scenario that loads .*\[17, 20\]",
    ):
        Settings.from_run_config({**default_run_config(), "scenario": str(path)})
