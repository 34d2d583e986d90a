"""bitsandbytes codecs: blockwise dynamic 8-bit, NF4 and FP4
(`bitsandbytes.functional`).

These quantize deterministically (round to the nearest entry of a fixed code table,
after dividing each block by its absolute maximum), so unlike `uniform` they are biased;
they are here for comparison and for users who want bitsandbytes' formats.

Wire layout of one tensor, B = ⌈n/m⌉ blocks:

    bytes [0, 4·B)    absmax_j, float32
    bytes [4·B, …)    codes: n bytes (8-bit), or ⌈n/2⌉ bytes (4-bit, two per
                      byte, high nibble first — bitsandbytes' own packing)

Only absmax and the codes travel. The rest of bitsandbytes' `QuantState` is fixed by the
codec (code table, block size, dtype, quant type) or by the tensor's shape, so `decode`
rebuilds the state in the serialised form `QuantState.as_dict(packed=True)` gives,
restores it with `QuantState.from_dict` and dequantizes with bitsandbytes' own
functions; the tests check that this equals bitsandbytes' dequantization of its
own state bit for bit.

CPU speed. Tensors are always handed to bitsandbytes flattened to 1-D, and 4-bit ones
padded to even length with one zero (which changes neither a block's absmax nor the
number of blocks, since m is even). On an odd last dimension — every 3×3 convolution
— bitsandbytes' CPU `dequantize_4bit` leaves its native kernel for a `torch.compile`d
path that compiles for seconds per new shape; 1-D even shapes always take the
native kernel. Block sizes ≥ 2048 take that path too on AVX-512 machines, so 4-bit
block sizes stop at 1024.

Error bound. The rounding is deterministic, so the expected squared error of a
given tensor is its actual squared error; `error_bound` computes it by a round trip
(the tightest bound there is). The tests check independently that every value lands
within h·absmax_j of the input, h the largest distance from a point of [−1, 1] to
the nearest code-table entry. (bitsandbytes' 8-bit CPU kernel is nearest-entry up to
~0.15% of values near a midpoint, and never emits the 9 entries nearest zero: 0 decodes
to ±2.1e-5·absmax.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import cache

import torch

from .codec import (
    Codec,
    Encoded,
    PayloadError,
    all_finite,
    check_finite_input,
    check_fixed_bits,
)

# bitsandbytes logs a warning at import on CPUs with AVX512-BF16 about an optional
# `kernels` package it does not need here; keep it quiet unless the user configured it.
if logging.getLogger("bitsandbytes").level == logging.NOTSET:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import bitsandbytes.functional as bnbf  # noqa: E402
from bitsandbytes.utils import pack_dict_to_tensor  # noqa: E402

_CHUNK_VALUES = 1 << 18  # a multiple of every allowed block size, and even


class _BnbCodec(Codec):
    """Shared layout, validation and error bound of the bitsandbytes codecs."""

    stochastic = False
    option_names = ("block_size",)
    default_block_size: int
    allowed_block_sizes: tuple[int, ...]

    def __init__(self, bits: int | None = None, block_size: int | None = None) -> None:
        self.bits = check_fixed_bits(self.name, bits, self.fixed_bits)
        if block_size is None:
            block_size = self.default_block_size
        if (
            isinstance(block_size, bool)
            or not isinstance(block_size, int)
            or block_size not in self.allowed_block_sizes
        ):
            raise ValueError(
                f"The 'block_size' parameter of codec {self.name!r} must be one of "
                f"{', '.join(map(str, self.allowed_block_sizes))}. Got {block_size!r}."
            )
        self.block_size = block_size

    fixed_bits: int

    def _code_nbytes(self, n: int) -> int:
        raise NotImplementedError

    def size_bytes(self, shape: Sequence[int]) -> int:
        """4·⌈n/m⌉ bytes of absmax plus the codes."""
        n = math.prod(shape)
        return 4 * _ceil_div(n, self.block_size) + self._code_nbytes(n)

    def _split(self, buffer: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        absmax_bytes = 4 * _ceil_div(n, self.block_size)
        return buffer[:absmax_bytes].view(torch.float32), buffer[absmax_bytes:]

    def _pack(
        self, tensor: torch.Tensor, absmax: torch.Tensor, codes: torch.Tensor
    ) -> Encoded:
        buffer = torch.cat([absmax.reshape(-1).view(torch.uint8), codes.reshape(-1)])
        return self._new_encoded(tensor, buffer)

    def _checked_absmax(self, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_buffer(encoded)
        absmax, codes = self._split(encoded.buffer, encoded.numel)
        if not all_finite(absmax):
            raise PayloadError("The block scales (absmax) contain NaN or Inf.")
        if bool((absmax < 0).any()):
            raise PayloadError("A block absmax is negative; absolute maxima are ≥ 0.")
        return absmax.clone(), codes  # clone: bitsandbytes may write into its state

    def _decode(self, encoded: Encoded) -> torch.Tensor:
        """Dequantize with bitsandbytes from the restored `QuantState`."""
        state = self.quant_state(encoded)  # validates the buffer first
        _, codes = self._split(encoded.buffer, encoded.numel)
        return self._dequantize(codes, state).reshape(-1)[: encoded.numel]

    def quant_state(self, encoded: Encoded) -> bnbf.QuantState:
        """bitsandbytes' `QuantState` for `encoded`, restored with
        `QuantState.from_dict`.

        Raises
        ------
        PayloadError
            If the buffer has the wrong length or invalid absmax values.
        """
        absmax, _ = self._checked_absmax(encoded)
        return bnbf.QuantState.from_dict(
            self._state_dict(absmax, encoded.numel), device="cpu"
        )

    def error_bound(self, tensor: torch.Tensor) -> float:
        """‖decode(encode(x)) − x‖²: exact, since the rounding
        is deterministic."""
        return self._round_trip_error(tensor)

    def _dequantize(self, codes: torch.Tensor, state: bnbf.QuantState) -> torch.Tensor:
        raise NotImplementedError

    def _state_dict(self, absmax: torch.Tensor, n: int) -> dict:
        raise NotImplementedError


class BnbBlockwise8Codec(_BnbCodec):
    """`bnb-blockwise8`: bitsandbytes' blockwise dynamic 8-bit quantization.

    Parameters
    ----------
    bits : int or None
        8 or None.
    block_size : int, default 256
        Values per absmax block: 64, 128, …, 4096 (0.125 bits/value of scale at 256).
    """

    name = "bnb-blockwise8"
    fixed_bits = 8
    default_block_size = 256
    allowed_block_sizes = (64, 128, 256, 512, 1024, 2048, 4096)

    def _code_nbytes(self, n: int) -> int:
        return n

    def encode(
        self, tensor: torch.Tensor, generator: torch.Generator | None = None
    ) -> Encoded:
        """Quantize with `bitsandbytes.functional.quantize_blockwise`; no randomness."""
        flat = self._flat_input(tensor)
        check_finite_input(flat, self.name)
        if flat.numel() == 0:
            return self._new_encoded(tensor, torch.empty(0, dtype=torch.uint8))
        codes, state = bnbf.quantize_blockwise(
            flat, code=_code_table(self.name), blocksize=self.block_size
        )
        return self._pack(tensor, state.absmax, codes)

    def _dequantize(self, codes: torch.Tensor, state: bnbf.QuantState) -> torch.Tensor:
        if codes.numel() == 0:
            return torch.empty(0)
        return bnbf.dequantize_blockwise(codes, state)

    def _state_dict(self, absmax: torch.Tensor, n: int) -> dict:
        # the form QuantState.as_dict(packed=True) gives when quant_type is None
        return {
            "quant_type": None,
            "absmax": absmax,
            "blocksize": self.block_size,
            "quant_map": _code_table(self.name).clone(),
            "dtype": "float32",
            "shape": None,
        }


class _Bnb4BitCodec(_BnbCodec):
    """NF4/FP4 through `bitsandbytes.functional.quantize_4bit` / `dequantize_4bit`."""

    fixed_bits = 4
    default_block_size = 64
    allowed_block_sizes = (32, 64, 128, 256, 512, 1024)
    quant_type: str

    def _code_nbytes(self, n: int) -> int:
        return _ceil_div(n, 2)

    def encode(
        self, tensor: torch.Tensor, generator: torch.Generator | None = None
    ) -> Encoded:
        """Quantize with `bitsandbytes.functional.quantize_4bit`; no randomness."""
        flat = self._flat_input(tensor)
        check_finite_input(flat, self.name)
        if flat.numel() == 0:
            return self._new_encoded(tensor, torch.empty(0, dtype=torch.uint8))
        # (n rounded up to even,)
        even = torch.cat([flat, flat.new_zeros(flat.numel() % 2)])
        # bitsandbytes' CPU 4-bit quantizer is plain torch on the whole tensor;
        # whole-block chunks give the same codes and absmax and run ~2× faster
        # (cache-sized temporaries)
        codes, absmax = [], []
        for start in range(0, even.numel(), _CHUNK_VALUES):
            chunk_codes, state = bnbf.quantize_4bit(
                even[start : start + _CHUNK_VALUES],
                blocksize=self.block_size,
                quant_type=self.quant_type,
            )
            codes.append(chunk_codes.view(-1))
            absmax.append(state.absmax)
        return self._pack(tensor, torch.cat(absmax), torch.cat(codes))

    def _dequantize(self, codes: torch.Tensor, state: bnbf.QuantState) -> torch.Tensor:
        if codes.numel() == 0:
            return torch.empty(0)
        return bnbf.dequantize_4bit(codes.view(-1, 1), state)

    def _state_dict(self, absmax: torch.Tensor, n: int) -> dict:
        # exactly what QuantState.as_dict(packed=True) holds for a 1-D
        # input of even length
        scalars = {
            "quant_type": self.quant_type,
            "blocksize": self.block_size,
            "dtype": "float32",
            "shape": (n + n % 2,),
        }
        return {
            "absmax": absmax,
            "quant_map": _code_table(self.name).clone(),
            f"quant_state.bitsandbytes__{self.quant_type}": pack_dict_to_tensor(
                scalars
            ),
        }


class BnbNF4Codec(_Bnb4BitCodec):
    """`bnb-nf4`: 4-bit NormalFloat (QLoRA), block size 32–1024 (default 64)."""

    name = "bnb-nf4"
    quant_type = "nf4"


class BnbFP4Codec(_Bnb4BitCodec):
    """`bnb-fp4`: bitsandbytes' 4-bit float, block size 32–1024 (default 64)."""

    name = "bnb-fp4"
    quant_type = "fp4"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@cache
def _code_table(name: str) -> torch.Tensor:
    """The fixed code table of a codec: 256 dynamic-map values or 16 4-bit values."""
    if name == "bnb-blockwise8":
        return bnbf.create_dynamic_map().to("cpu")
    return bnbf.get_4bit_type(name.removeprefix("bnb-"), device="cpu")
