"""The registry finds every strategy module, and everything that names
strategies reads it."""

import re
from pathlib import Path

import numpy as np
import pytest

from qfd_app.quant.registry import codec_bits
from qfd_app.strategies import get_strategy, strategies, strategy_names
from qfd_app.strategies.registry import RESOURCE_POLICIES, Strategy
from tests.imports import modules_loaded

DOCS = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


def test_the_registry_holds_the_shipped_strategies_each_from_its_own_module():
    assert strategy_names() == ("fedavg", "fixed", "ondemand")
    for name, cls in strategies().items():
        assert issubclass(cls, Strategy) and cls.name == name
        assert cls.__module__ == f"qfd_app.strategies.{name}"
        assert cls.summary and set(cls.resource_policies) <= set(RESOURCE_POLICIES)


def test_an_unknown_strategy_names_the_known_ones():
    with pytest.raises(
        ValueError,
        match="Unknown strategy 'greedy'; choose one of fedavg, fixed, ondemand",
    ):
        get_strategy("greedy")


def test_the_docs_table_lists_every_strategy_as_the_registry_declares_it():
    table = (
        DOCS.read_text()
        .split("<!-- strategies:start")[1]
        .split("<!-- strategies:end -->")[0]
    )
    rows = [
        line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| `")
    ]
    documented = {
        re.sub(r"`", "", cells[0]).strip(): [c.strip() for c in cells] for cells in rows
    }
    assert sorted(documented) == sorted(strategy_names())
    for name, cls in strategies().items():
        _, summary, option, policies, budget = documented[name]
        assert summary == cls.summary
        assert option == (cls.option_help or "—")
        assert policies == ", ".join(cls.resource_policies)
        assert budget == ("yes" if cls.enforces_error_budget else "no")


@pytest.mark.parametrize("name", ["fedavg", "fixed", "ondemand"])
def test_every_candidate_has_a_codec_that_sends_it(name):
    rules = get_strategy(name)(codec="uniform", bits=5)
    demand_min, demand_max = np.array([1, 2, 4, 8, 17]), np.array([3, 4, 8, 32, 32])
    bits = rules.candidate_bits(demand_min, demand_max)
    for n, row in enumerate(bits):
        chosen = [int(b) for b in row if b]
        assert chosen, (name, n)
        for b in chosen:
            assert b in codec_bits(rules.codec_for(b))
            if rules.follows_demand:
                assert demand_min[n] <= b <= demand_max[n]


def test_candidate_bits_match_brute_force():
    ondemand = get_strategy("ondemand")()
    rng = np.random.default_rng(0)
    lo = rng.integers(1, 33, 200)
    hi = np.maximum(lo, rng.integers(1, 33, 200))
    bits = ondemand.candidate_bits(lo, hi)
    for n in range(200):
        expected = [b for b in (*range(1, 17), 32) if lo[n] <= b <= hi[n]]
        assert [int(b) for b in bits[n] if b] == expected


def test_options_of_qfd_compare_are_each_strategys_own():
    fixed, fedavg, ondemand = (get_strategy(n) for n in ("fixed", "fedavg", "ondemand"))
    assert fixed.parse_option("4", {"bits": 8}) == ({"bits": 4}, "4")
    assert fixed.parse_option("", {"bits": 8}) == ({"bits": 8}, "8")
    assert fedavg.parse_option("optimal", {}) == (
        {"resource-policy": "optimal"},
        "optimal",
    )
    assert ondemand.parse_option("", {}) == ({}, "")
    for cls, option in ((fixed, "four"), (fedavg, "lazy"), (ondemand, "optimal")):
        with pytest.raises(ValueError, match=f"{cls.name} takes .*; got {option!r}"):
            cls.parse_option(option, {"bits": 8})


def test_reading_the_registry_loads_neither_flower_nor_torch():
    code = "from qfd_app.strategies import strategies; strategies()"
    assert modules_loaded(code, ("torch", "flwr", "diffusers")) == []
