"""`ondemand`: every device gets its own bit-width within its demand, chosen for least energy.

The solver (`qfd_app.edge.solve_round`) picks, per device, b ∈ [b_min, b_max] together
with its clock, power and bandwidth so that the round meets its deadline and the aggregate's
quantization error stays within ε ‖Δ̄‖² (docs/model.md). Updates travel with the uniform
stochastic codec (its error bound is what the budget prices); 32 bits is raw fp32.
"""

from __future__ import annotations

from qfd_app.edge import Allocation, Candidates, Devices, Network, solve_round
from qfd_app.strategies.base import EdgeStrategy


class OnDemand(EdgeStrategy):
    """Per-device bit-widths within each device's demand, at least energy, under the error budget."""

    def candidate_bits(self, states) -> None:
        return None  # each device's demand

    def codec_for(self, bits: int) -> str:
        return "fp32" if bits == 32 else "uniform"

    def allocate(self, devices: Devices, candidates: Candidates, network: Network) -> Allocation:
        return solve_round(devices, candidates, network)

    def error_budget_active(self) -> bool:
        return True
