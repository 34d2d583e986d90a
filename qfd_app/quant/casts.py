"""Plain float casts as codecs: `fp32` (the full-precision baseline), `fp16` and `bf16`.

Wire layout: the n values in the target dtype, little-endian, nothing else, so
`size_bytes` = n·b/8. The casts round to nearest, deterministically, so the expected
squared error of a given tensor is its actual squared error, which `error_bound`
computes by casting there and back (per value at most 2^-11·|x| for fp16 and
2^-8·|x| for bf16, above the subnormal range). `fp32` is exact for float32,
float16 and bfloat16 input.

fp16 overflows past 65504: encode refuses such tensors rather than sending Inf (use
bf16, whose range is float32's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .codec import Codec, Encoded, all_finite, check_finite_input, check_fixed_bits


class _CastCodec(Codec):
    """A codec that sends every value cast to `wire_dtype`."""

    stochastic = False
    wire_dtype: torch.dtype

    def __init__(self, bits: int | None = None) -> None:
        self.bits = check_fixed_bits(self.name, bits, self.wire_dtype.itemsize * 8)

    def size_bytes(self, shape: Sequence[int]) -> int:
        """n values of `bits/8` bytes each."""
        return math.prod(shape) * self.wire_dtype.itemsize

    def encode(
        self, tensor: torch.Tensor, generator: torch.Generator | None = None
    ) -> Encoded:
        """Cast to the wire dtype (round to nearest); `generator` is ignored."""
        self._check_dtype(tensor)
        # cast from the original dtype, once
        flat = tensor.detach().reshape(-1).to("cpu")
        check_finite_input(flat, self.name)
        # copy: a snapshot, never a view of x
        wire = flat.to(self.wire_dtype, copy=True)
        if not all_finite(wire):
            raise ValueError(
                f"Codec {self.name!r} overflows: the largest |value| is "
                f"{flat.abs().max().item():.4g}, beyond what {self.wire_dtype} holds. "
                "Use 'bf16' or 'uniform'."
            )
        return self._new_encoded(tensor, wire.view(torch.uint8))

    def _decode(self, encoded: Encoded) -> torch.Tensor:
        """The values cast to the original dtype; see `Codec.decode`."""
        # copy: the buffer may be a read-only view of received bytes
        return encoded.buffer.view(self.wire_dtype).to(encoded.dtype, copy=True)

    def error_bound(self, tensor: torch.Tensor) -> float:
        """‖cast(x) − x‖²: exact, since rounding to nearest is deterministic."""
        return self._round_trip_error(tensor)


class Float32Codec(_CastCodec):
    """`fp32`: raw float32, 32 bits per value; the full-precision baseline."""

    name = "fp32"
    wire_dtype = torch.float32


class Float16Codec(_CastCodec):
    """`fp16`: IEEE half precision, 16 bits per value, |x| ≤ 65504."""

    name = "fp16"
    wire_dtype = torch.float16


class BFloat16Codec(_CastCodec):
    """`bf16`: bfloat16, 16 bits per value, float32's range with 8 significand bits."""

    name = "bf16"
    wire_dtype = torch.bfloat16
