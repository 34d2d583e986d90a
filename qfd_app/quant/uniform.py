"""Stochastic uniform quantization at any bit-width 1–16, with bit-packed codes.

The model (DESIGN §2–3). A tensor of n values is cut into blocks of m consecutive
values (m = 256, or 64 when b ≤ 3 so that the few levels follow the data more
closely). Block j keeps its minimum ℓ_j and a step

    δ_j = (max_j − ℓ_j) / L,      L = 2^b − 1 levels above the minimum,

and each value x becomes the integer code q ∈ {0 … L} by **stochastic rounding** of
s = (x − ℓ_j)/δ_j: q = ⌊s⌋ + 1 with probability s − ⌊s⌋, else ⌊s⌋.
Hence E[q] = s and the decoded value ℓ_j + q·δ_j is an unbiased estimate of x, with
variance δ_j²·f(1 − f) ≤ δ_j²/4 (f the fractional part). Summed over a block
that is m·R_j²/(4L²) with R_j = max_j − ℓ_j: the bound V_n(b) of DESIGN §2
(`uniform_error_bound`).

Wire layout of one tensor (`Encoded.buffer`), for B = ⌈n/m⌉ blocks and scale dtype s
(float32: 4 bytes, bfloat16: 2 bytes):

    bytes [0, B·s)                 ℓ_j, j = 0 … B−1   (little-endian scale dtype)
    bytes [B·s, 2·B·s)             δ_j
    bytes [2·B·s, 2·B·s + ⌈n·b/8⌉)  codes, bit-packed LSB first
                                    (see bitpack.py)

so `size_bytes` = 2·B·s + ⌈n·b/8⌉ exactly, i.e. b + 64/m bits per
value with fp32 scales.

Numerics, and the why of each choice:

- bf16 scales are rounded outward — ℓ down, δ up (computed from the rounded ℓ)
  — so the grid still covers the block and the bound δ_j²/4 holds with
  the δ_j actually sent.
- δ_j is floored at the smallest normal float32 (1.2e-38): a constant block then needs
  no special case (all codes 0, decoded exactly to ℓ_j), and 1/δ_j stays finite.
- The rounding draw compares 16-bit random integers with the fractional part, so
  P(round up) = round(65536·f)/65536: biased by at most 2^-17 of a step, and exactly 0
  for f = 0, which makes values already on the grid round-trip exactly. Four draws come
  from one 64-bit word of the generator, several times cheaper than `torch.rand`.
- s is clamped to L before rounding: float rounding can push it a hair past L, and then
  f = 0 means no round-up, so codes never exceed L.
- s is computed in float32: for b ≥ 12 its rounding error reaches ~1e-3 of a step
  (2^-23·L), negligible next to the rounding noise of ±δ/2.
- Work proceeds in chunks of `CHUNK_VALUES` whole blocks, so temporaries stay in cache
  and every chunk's codes start on a byte boundary (chunks are multiples of 8 values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .bitpack import pack_codes, packed_nbytes, unpack_codes
from .codec import Codec, Encoded, PayloadError, all_finite, check_finite_input
from .registry import UNIFORM_BLOCK_SIZES, default_block_size

MAX_BITS = 16
MAX_BLOCK_SIZE = 1 << 20
CHUNK_VALUES = 1 << 18  # ~1 MiB of float32 per chunk
SCALE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_TINY_STEP = torch.finfo(torch.float32).tiny  # smallest normal float32 (and bfloat16)
_DRAW_LEVELS = 1 << 16  # resolution of the rounding draw


def block_ranges(tensor: torch.Tensor, block_size: int) -> torch.Tensor:
    """Per-block range R_j = max_j − min_j of `tensor` flattened, as
    float32 (⌈n/m⌉,).

    A device can report these (or just their sum of squares) so that the server prices
    the quantization error of any bit-width with
    `uniform_error_bound`, without the update.
    """
    flat = tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    ranges = []
    for start in range(0, flat.numel(), _chunk_values(block_size)):
        blocks = _as_blocks(flat[start : start + _chunk_values(block_size)], block_size)
        ranges.append(blocks.amax(1) - blocks.amin(1))
    return torch.cat(ranges) if ranges else torch.empty(0)


def range_sq_sums(update: Mapping[str, torch.Tensor]) -> dict[int, float]:
    """Σ_j m R_j² over the blocks of every tensor of `update`, for each block
    size m the codec uses.

    With it the server prices the error bound V(b) = Σ_j m R_j² / (4 (2^b − 1)²) of
    any b without seeing the update (a device reports it with its state and its reply).
    """
    sums = {}
    for m in UNIFORM_BLOCK_SIZES:
        total = sum(
            float(block_ranges(t, m).double().square().sum()) for t in update.values()
        )
        sums[m] = float(m * total)
    return sums


def uniform_error_bound(
    block_ranges: torch.Tensor | Sequence[float], bits: int, block_size: int
) -> float:
    """V(b) = Σ_j m·R_j² / (4(2^b − 1)²): the expected
    squared-error bound (DESIGN §2).

    Parameters
    ----------
    block_ranges : tensor or sequence of float
        R_j for each block (e.g. from `block_ranges`, or a device's running estimate).
    bits : int
        Bit-width b, 1–16.
    block_size : int
        m; every block is counted as full, so a short last block is over-counted (safe).

    Returns
    -------
    float
        Bound on E‖x̂ − x‖² summed over all values, in the squared
        units of the tensor.
    """
    _check_bits(bits)
    ranges = torch.as_tensor(block_ranges, dtype=torch.float64)
    levels = (1 << bits) - 1
    return float(block_size * ranges.square().sum() / (4 * levels**2))


class UniformCodec(Codec):
    """Per-block min/step uniform quantizer with stochastic rounding;
    see the module text.

    Parameters
    ----------
    bits : int
        Bit-width b, 1–16 (required).
    block_size : int or None, default None
        Values per block m, a multiple of 8 up to 2^20; None gives
        `default_block_size(b)`.
    scale_dtype : {"float32", "bfloat16"}, default "float32"
        Dtype of the per-block min and step on the wire: 64/m or 32/m bits per value.
    """

    name = "uniform"
    stochastic = True
    option_names = ("block_size", "scale_dtype")

    def __init__(
        self,
        bits: int | None = None,
        block_size: int | None = None,
        scale_dtype: str = "float32",
    ) -> None:
        if bits is None:
            raise ValueError(
                f"Codec 'uniform' needs 'bits', an integer in 1–{MAX_BITS}."
            )
        _check_bits(bits)
        if block_size is None:
            block_size = default_block_size(bits)
        if (
            isinstance(block_size, bool)
            or not isinstance(block_size, int)
            or not 8 <= block_size <= MAX_BLOCK_SIZE
            or block_size % 8
        ):
            raise ValueError(
                "The 'block_size' parameter of codec 'uniform' must be a multiple of 8 "
                f"in [8, {MAX_BLOCK_SIZE}]. Got {block_size!r}."
            )
        if not isinstance(scale_dtype, str) or scale_dtype not in SCALE_DTYPES:
            raise ValueError(
                "The 'scale_dtype' parameter of codec 'uniform' must be one of "
                f"{', '.join(SCALE_DTYPES)}. Got {scale_dtype!r}."
            )
        self.bits = bits
        self.block_size = block_size
        self.scale_dtype = scale_dtype
        self._levels = (1 << bits) - 1
        self._scale_torch_dtype = SCALE_DTYPES[scale_dtype]
        self._scale_nbytes = self._scale_torch_dtype.itemsize

    # -- sizes -------------------------------------------------------------------------

    def size_bytes(self, shape: Sequence[int]) -> int:
        """2·⌈n/m⌉ scales plus ⌈n·b/8⌉ bytes of codes, n = prod(shape)."""
        n = math.prod(shape)
        return 2 * self._num_blocks(n) * self._scale_nbytes + packed_nbytes(
            n, self.bits
        )

    def _num_blocks(self, n: int) -> int:
        return -(-n // self.block_size)

    # -- encode ------------------------------------------------------------------------

    def encode(
        self, tensor: torch.Tensor, generator: torch.Generator | None = None
    ) -> Encoded:
        """Quantize `tensor` stochastically; see `Codec.encode`."""
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                "Codec 'uniform' rounds stochastically: pass a torch.Generator as "
                f"'generator'. Got {generator!r}."
            )
        flat = self._flat_input(tensor)
        n, m = flat.numel(), self.block_size
        buffer = torch.empty(self.size_bytes(tensor.shape), dtype=torch.uint8)
        mins, steps, codes = self._split(buffer, n)
        chunk = _chunk_values(m)
        for start in range(0, n, chunk):
            values = flat[start : start + chunk]
            blocks = _as_blocks(values, m)  # (blocks in chunk, m)
            low, step = self._scales(blocks)
            first = start // m
            mins[first : first + len(low)] = low
            steps[first : first + len(low)] = step
            chunk_codes = self._round(blocks, low, step, generator).view(-1)[
                : values.numel()
            ]
            offset = start * self.bits // 8  # start is a multiple of 8: byte aligned
            packed = pack_codes(chunk_codes, self.bits)
            codes[offset : offset + packed.numel()] = packed
        return self._new_encoded(tensor, buffer)

    def _scales(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block ℓ_j and δ_j (float32, exactly representable in
        the scale dtype)."""
        low, high = blocks.amin(1), blocks.amax(1)  # NaN propagates, so one check below
        check_finite_input(low, self.name)
        check_finite_input(high, self.name)
        if self._scale_torch_dtype == torch.bfloat16:
            low = _round_bfloat16(low, up=False)
            step = _round_bfloat16((high - low) / self._levels, up=True)
        else:
            step = (high - low) / self._levels
        if not all_finite(step):
            raise ValueError(
                "Codec 'uniform' cannot encode a block whose range overflows float32 "
                f"(largest |value| {blocks.abs().max().item():.3g})."
            )
        return low, step.clamp_min_(_TINY_STEP)

    def _round(
        self,
        blocks: torch.Tensor,
        low: torch.Tensor,
        step: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Stochastically rounded codes in [0, L], (blocks, m), uint8 for
        b ≤ 8 else int32."""
        scaled = (blocks - low[:, None]).mul_(step.reciprocal()[:, None])  # s ≥ 0
        scaled.clamp_(max=self._levels)
        floor = scaled.floor()
        # threshold t = 65536·f − 32768.5: a uniform int16 r satisfies r < t with
        # probability round(65536·f)/65536, and never when f = 0 (so never past L)
        threshold = scaled.sub_(floor).mul_(_DRAW_LEVELS).sub_(_DRAW_LEVELS / 2 + 0.5)
        round_up = (
            _int16_draws(blocks.numel(), generator).view(blocks.shape) < threshold
        )
        if self.bits <= 8:  # via int16: float -> uint8 has no fast conversion kernel
            codes = floor.to(torch.int16).to(torch.uint8)
        else:
            codes = floor.to(torch.int32)
        return codes.add_(round_up)

    # -- decode ------------------------------------------------------------------------

    def decode(self, encoded: Encoded) -> torch.Tensor:
        """ℓ_j + q·δ_j for every value; see `Codec.decode`."""
        self._check_buffer(encoded)
        n, m = encoded.numel, self.block_size
        mins, steps, codes = self._split(encoded.buffer, n)
        low, step = mins.float(), steps.float()
        if not (all_finite(low) and all_finite(step)):
            raise PayloadError("The block scales (min or step) contain NaN or Inf.")
        if bool((step < 0).any()):
            raise PayloadError(
                "A block step is negative; the encoder only writes steps ≥ 0."
            )
        out = torch.empty(n, dtype=torch.float32)
        chunk = _chunk_values(m)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            offset = start * self.bits // 8
            chunk_codes = unpack_codes(
                codes[offset : offset + packed_nbytes(stop - start, self.bits)],
                self.bits,
                stop - start,
            )
            self._dequantize(chunk_codes, low, step, start, out[start:stop])
        self._check_finite_output(out)
        return out.view(encoded.shape).to(encoded.dtype)

    def _dequantize(
        self,
        codes: torch.Tensor,
        low: torch.Tensor,
        step: torch.Tensor,
        start: int,
        out: torch.Tensor,
    ) -> None:
        """Write ℓ_j + q·δ_j for the values
        [start, start + len(codes)) into `out`."""
        m = self.block_size
        # whole blocks of this chunk; a short tail may follow
        full = codes.numel() // m * m
        first = start // m
        if full:
            count = full // m
            blocks_out = out[:full].view(count, m)
            block_steps = step[first : first + count, None]
            torch.mul(codes[:full].view(count, m), block_steps, out=blocks_out)
            blocks_out += low[first : first + count, None]
        if full < codes.numel():
            last = first + full // m
            torch.mul(codes[full:], step[last], out=out[full:])
            out[full:] += low[last]

    # -- error bound -------------------------------------------------------------------

    def error_bound(self, tensor: torch.Tensor) -> float:
        """Σ_j n_j·δ_j²/4 with the steps this codec would send
        (n_j values in block j).

        Equals `uniform_error_bound(block_ranges(x, m), b, m)` up to float rounding, the
        outward rounding of bf16 scales and the count of a short last block.
        """
        flat = self._flat_input(tensor)
        n, m = flat.numel(), self.block_size
        total = 0.0
        chunk = _chunk_values(m)
        for start in range(0, n, chunk):
            values = flat[start : start + chunk]
            _, step = self._scales(_as_blocks(values, m))
            counts = torch.full_like(step, m, dtype=torch.float64)
            counts[-1] = values.numel() - (len(step) - 1) * m
            total += float((counts * step.double().square()).sum() / 4)
        return total

    # -- layout ------------------------------------------------------------------------

    def _split(
        self, buffer: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of `buffer`: mins and steps (scale dtype) and the
        packed codes (uint8)."""
        scale_bytes = self._num_blocks(n) * self._scale_nbytes
        mins = buffer[:scale_bytes].view(self._scale_torch_dtype)
        steps = buffer[scale_bytes : 2 * scale_bytes].view(self._scale_torch_dtype)
        return mins, steps, buffer[2 * scale_bytes :]


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(
            "The 'bits' parameter of codec 'uniform' must be an integer in "
            f"1–{MAX_BITS}. Got {bits!r}."
        )


def _chunk_values(block_size: int) -> int:
    """Values per chunk: whole blocks, about `CHUNK_VALUES`, a multiple of 8."""
    return max(1, CHUNK_VALUES // block_size) * block_size


def _as_blocks(values: torch.Tensor, block_size: int) -> torch.Tensor:
    """`values` as (⌈k/m⌉, m); a short last block is padded with copies of its first
    value, which leaves the block's min and max unchanged (codes of the
    pad are dropped)."""
    short = -values.numel() % block_size
    if short:
        tail_start = values.numel() // block_size * block_size
        values = torch.cat([values, values[tail_start].expand(short)])
    return values.view(-1, block_size)


def _int16_draws(count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` independent uniform int16 values, four from each
    64-bit generator word."""
    words = torch.empty(-(-count // 4), dtype=torch.int64)
    words.random_(-(1 << 63), None, generator=generator)  # the full 64-bit range
    return words.view(torch.int16)[:count]


def _round_bfloat16(values: torch.Tensor, *, up: bool) -> torch.Tensor:
    """Round float32 `values` to bfloat16-representable float32, toward +inf or −inf.

    bfloat16 is the top 16 bits of float32, so truncating the low 16 bits rounds toward
    zero; where that went the wrong way, step the magnitude up by one bfloat16 ulp
    (adding 2^16 to the bit pattern, which also carries into the exponent correctly).
    """
    bits = values.view(torch.int32)
    truncated = bits & -(1 << 16)
    wrong_way = (truncated != bits) & ((values > 0) if up else (values < 0))
    return (truncated + wrong_way.to(torch.int32) * (1 << 16)).view(torch.float32)
