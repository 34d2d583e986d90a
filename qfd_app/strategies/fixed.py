"""`fixed`: one bit-width for every device, demands ignored (the quantized baseline)."""

from __future__ import annotations

import numpy as np

from qfd_app.edge import Allocation, Candidates, Devices, Network, candidate_bits, solve_round
from qfd_app.quant import get_codec
from qfd_app.strategies.base import EdgeStrategy


class FixedBits(EdgeStrategy):
    """Every device trains at `bits` (fake-quantized weights below 16) and uploads its update
    with `codec` at `bits`, whatever it would ask for; the solver sets f, p and B."""

    def __init__(self, *args, codec: str, bits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.codec, self.bits = get_codec(codec, bits=bits).name, bits  # fails early on a bad pair

    def candidate_bits(self, states) -> np.ndarray:
        return candidate_bits(np.full(len(states), self.bits), np.full(len(states), self.bits))

    def codec_for(self, bits: int) -> str:
        return self.codec

    def allocate(self, devices: Devices, candidates: Candidates, network: Network) -> Allocation:
        return solve_round(devices, candidates, network)
