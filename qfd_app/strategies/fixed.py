"""`fixed`: one bit-width for every device, demands ignored (the quantized baseline)."""

from __future__ import annotations

from qfd_app.strategies.base import UpdateAveraging


class FixedBits(UpdateAveraging):
    """Every device trains at `bits` (fake-quantized weights) and uploads its update with
    `codec` at `bits`, whatever the device would ask for."""
