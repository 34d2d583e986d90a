"""Scenario files: the default is DESIGN §2's, every shipped one loads, bad input names its key."""

import math

import pytest

from qfd_app.edge.scenario import SCENARIO_DIR, ScenarioError, available, load_scenario


def test_the_default_scenario_is_the_one_fixed_in_the_design():
    s = load_scenario("default")
    classes = {c.name: c for c in s.classes}
    assert dict(zip([c.name for c in s.classes], s.counts)) == {"iot": 4, "phone": 4, "edge": 2}
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
        assert c.distance_m is None                                   # placed uniformly in the cell
    assert s.cell_radius_m == 500.0 and s.bandwidth_hz == 10e6
    assert s.noise_dbm_per_hz == -174.0 and s.shadowing_db == 8.0
    # DESIGN's 1 epoch in 30 s, scaled to the 10 epochs the default run trains (docs/model.md)
    assert s.local_epochs == 10 and s.gamma == 1.0 and s.deadline_s == 300.0 and s.epsilon == 0.05
    assert (s.model_preset, s.image_size, s.channels) == ("tiny", 16, 1)
    assert s.train_samples == 4500 and s.samples().tolist() == [450] * 10
    assert s.noise_w_per_hz == pytest.approx(3.981e-21, rel=1e-3)


@pytest.mark.parametrize("name", ["default", "paper", "heterogeneous", "many-devices", "smoke"])
def test_every_shipped_scenario_loads(name):
    assert name in available()
    s = load_scenario(name)
    assert s.num_devices == len(s.fleet()) and s.description


def test_extends_changes_only_what_the_file_lists():
    paper, default = load_scenario("paper"), load_scenario("default")
    assert paper.model_preset == "ddpm-cifar10" and paper.bandwidth_hz == 20e6
    assert paper.shadowing_db == default.shadowing_db and paper.classes[0] == default.classes[1]
    assert [c.name for c in paper.classes] == ["phone", "edge"]       # iot = 0 drops the class


def test_replicating_devices_keeps_the_class_mix_and_the_data_per_device():
    s = load_scenario("default")
    assert s.class_index(25).tolist()[:12] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 0]
    assert set(s.samples(25).tolist()) == {450}


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD = [  # (TOML after `extends = "default"`, words the message must hold)
    ("[classes.iot]\npower_w_max = -0.1", ["classes.iot.power_w_max", "> 0", "-0.1"]),
    ("[classes.phone]\nbits_min = 9", ["classes.phone.bits_min", "≤ classes.phone.bits_max", "9 > 8"]),
    ("[classes.edge]\nbits_max = 33", ["classes.edge.bits_max", "≤ 32", "33"]),
    ("[classes.edge]\nbits_min = 0", ["classes.edge.bits_min", "≥ 1", "0"]),
    ("[classes.edge]\nbits_min = 17\nbits_max = 20", ["classes.edge", "[17, 20]", "codec"]),
    ("[devices]\ntablet = 3", ["devices.tablet", "unknown device class", "iot, phone, edge"]),
    ("[classes.tablet]\nbits_min = 4\n[devices]\ntablet = 1", ["missing key", "classes.tablet.bits_max"]),
    ("[network]\ndeadline_s = \"30\"", ["network.deadline_s", "a number", "'30'"]),
    ("[devices]\niot = 2.5", ["devices.iot", "an integer", "2.5"]),
    ("[classes.iot]\ncount = true", ["classes.iot.count", "unknown key", "bits_max"]),
    ("[network]\nbandwith_hz = 1e6", ["network.bandwith_hz", "unknown key", "bandwidth_hz"]),
    ("[network]\nbandwidth_policy = \"fair\"", ["network.bandwidth_policy", "'equal', 'optimal'", "'fair'"]),
    ("[classes.phone]\ncpu_hz_min = 3e9", ["classes.phone.cpu_hz_min", "≤ classes.phone.cpu_hz_max"]),
    ("[network]\nmin_distance_m = 600.0", ["network.min_distance_m", "< network.cell_radius_m"]),
    ("[devices]\niot = 0\nphone = 0\nedge = 0", ["devices", "at least one device"]),
    ("[network]\ndeadline_s = nan", ["network.deadline_s", "nan"]),
    ("[budget]\nepsilon = -1.0", ["budget.epsilon", "≥ 0"]),
    ("seed = -3", ["seed", "≥ 0", "-3"]),
    ("[model]\nimage_size = 0", ["model.image_size", "≥ 1"]),
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
    with pytest.raises(ScenarioError, match="missing key 'network.deadline_s'"):
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


def test_scenario_errors_are_value_errors():
    assert issubclass(ScenarioError, ValueError)


def test_an_infinite_budget_switches_it_off(tmp_path):
    s = load_scenario(write(tmp_path, 'extends = "default"\n[budget]\nepsilon = inf'))
    assert math.isinf(s.epsilon)
