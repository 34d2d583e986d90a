"""`ondemand`: every device gets its own bit-width within its demand,
chosen for least energy.

The solver (`qfd_app.edge.solve_round`) picks, per device, b ∈ [b_min, b_max] together
with its clock, power and bandwidth so that the round meets its deadline and the
aggregate's quantization error stays within ε ‖Δ̄‖² (docs/model.md). Updates
travel with the uniform stochastic codec (its error bound is what the budget prices);
32 bits is raw fp32.
"""

from __future__ import annotations

from qfd_app.quant.registry import codec_bits
from qfd_app.strategies.registry import Strategy


class OnDemand(Strategy):
    name = "ondemand"
    summary = (
        "per-device bits within each device's demand, at least energy, under "
        "the error budget ε"
    )
    enforces_error_budget = True
    follows_demand = True
    codecs = ("uniform",)  # the error budget prices the uniform codec's error

    def widths(self) -> tuple[int, ...]:
        return codec_bits("uniform", "fp32")

    def codec_for(self, bits: int) -> str:
        return "fp32" if bits == 32 else "uniform"
