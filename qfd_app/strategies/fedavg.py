"""`fedavg`: the full-precision baseline — fp32 training, fp32 updates on the wire."""

from __future__ import annotations

import numpy as np

from qfd_app.edge import Allocation, Candidates, Devices, Network, candidate_bits, race_to_idle, solve_round
from qfd_app.planning import RESOURCE_POLICIES
from qfd_app.strategies.base import EdgeStrategy


class FullPrecisionFedAvg(EdgeStrategy):
    """Federated averaging of float32 updates (McMahan et al., 2017), every device alike.

    `resource_policy` "race-to-idle" runs every device at f_max and p_max on an equal share
    of the band (the classic FL client); "optimal" lets the solver set f, p and B.
    """

    def __init__(self, *args, resource_policy: str = "race-to-idle", **kwargs):
        super().__init__(*args, **kwargs)
        if resource_policy not in RESOURCE_POLICIES:
            raise ValueError(f"resource_policy must be one of {RESOURCE_POLICIES}; got {resource_policy!r}")
        self.resource_policy = resource_policy

    def candidate_bits(self, states) -> np.ndarray:
        return candidate_bits(np.full(len(states), 32), np.full(len(states), 32))

    def codec_for(self, bits: int) -> str:
        return "fp32"

    def allocate(self, devices: Devices, candidates: Candidates, network: Network) -> Allocation:
        if self.resource_policy == "race-to-idle":
            return race_to_idle(devices, candidates, network)
        return solve_round(devices, candidates, network)
