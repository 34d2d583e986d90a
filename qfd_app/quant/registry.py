"""Which codecs exist, which bit-widths each sends, and the uniform codec's
sub-block size — as data.

This table is the one place these facts live; it imports nothing (no torch), so settings
validation, the strategies' declarations and the solver (`qfd_app.edge`, which receives
them as arguments) can read them without loading a codec. `codec.get_codec` builds a
codec from the module and class named here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodecEntry:
    """A codec by name: where it is implemented and the bit-widths it sends."""

    module: str  # inside qfd_app.quant
    cls: str
    bits: tuple[int, ...]


CODECS: dict[str, CodecEntry] = {
    "uniform": CodecEntry("uniform", "UniformCodec", tuple(range(1, 17))),
    "fp32": CodecEntry("casts", "Float32Codec", (32,)),
    "fp16": CodecEntry("casts", "Float16Codec", (16,)),
    "bf16": CodecEntry("casts", "BFloat16Codec", (16,)),
    "bnb-blockwise8": CodecEntry("bnb", "BnbBlockwise8Codec", (8,)),
    "bnb-nf4": CodecEntry("bnb", "BnbNF4Codec", (4,)),
    "bnb-fp4": CodecEntry("bnb", "BnbFP4Codec", (4,)),
}

# The uniform codec cuts a tensor into sub-blocks of 48 values (in super-blocks of 64
# sub-blocks) at every bit-width; devices report their update's range sums for it.
UNIFORM_BLOCK_SIZES = (48,)


def codec_names() -> tuple[str, ...]:
    """Names `get_codec` accepts."""
    return tuple(CODECS)


def codec_bits(*names: str) -> tuple[int, ...]:
    """The bit-widths the named codecs send (all codecs when none is
    named), ascending."""
    return tuple(sorted({b for name in (names or CODECS) for b in CODECS[name].bits}))


def default_block_size(bits: int) -> int:
    """The uniform codec's sub-block size at `bits` unless one is given: 48 at
    every b (one layout; `bits` is kept so callers need not know that)."""
    return UNIFORM_BLOCK_SIZES[0]
