"""The mobile edge network: device model, channel, energy formulas and
the per-round solver.

Plain numpy, depending on nothing else of qfd. docs/model.md states the model; the
public surface is re-exported here.
"""

from qfd_app.edge.allocate import race_to_idle, solve_round
from qfd_app.edge.devices import DeviceClass, Fleet
from qfd_app.edge.problem import (
    Allocation,
    Candidates,
    Devices,
    Network,
    candidate_bits,
)
from qfd_app.edge.record import round_record
from qfd_app.edge.scenario import Scenario, ScenarioError, load_scenario

__all__ = [
    "Allocation",
    "Candidates",
    "DeviceClass",
    "Devices",
    "Fleet",
    "Network",
    "Scenario",
    "ScenarioError",
    "candidate_bits",
    "load_scenario",
    "race_to_idle",
    "round_record",
    "solve_round",
]
