"""`fixed`: one bit-width for every device, demands ignored (the quantized baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qfd_app.strategies.registry import Strategy


class FixedBits(Strategy):
    """Every device trains at `bits` (fake-quantized weights below 16) and
    uploads its update with `codec` at `bits`, whatever it would ask for; the
    solver sets f, p and B."""

    name = "fixed"
    summary = (
        "every device trains at `bits` and uploads with `codec` at "
        "`bits`, demands ignored"
    )
    option_help = "a bit-width, e.g. fixed:4 (plain `fixed`: --bits)"
    codecs = None  # any codec that sends `bits` (settings check the pair)

    def widths(self) -> tuple[int, ...]:
        return (self.bits,)

    def codec_for(self, bits: int) -> str:
        return self.codec

    def label(self) -> str:
        return f"fixed:{self.bits}"

    @classmethod
    def parse_option(
        cls, option: str, base: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str]:
        try:
            bits = int(option) if option else int(base["bits"])
        except ValueError:
            raise ValueError(f"fixed takes {cls.option_help}; got {option!r}") from None
        return {"bits": bits}, str(bits)
