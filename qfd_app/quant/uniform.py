"""Stochastic uniform quantization at any bit-width 1–16, with bit-packed codes and
two-level block scales.

The model (DESIGN §2–3). A tensor of n values is cut into sub-blocks of m = 48
consecutive values, grouped into super-blocks of S = 64·m = 3072. Sub-block j keeps a
coded minimum ℓ̂_j and a coded range R̂_j, and its step is

    δ_j = R̂_j / L,      L = 2^b − 1 levels above the minimum,

and each value x becomes the integer code q ∈ {0 … L} by **stochastic rounding** of
s = (x − ℓ̂_j)/δ_j: q = ⌊s⌋ + 1 with probability s − ⌊s⌋, else ⌊s⌋.
Hence E[q] = s and the decoded value ℓ̂_j + q·δ_j is an unbiased estimate of x, with
variance δ_j²·f(1 − f) ≤ δ_j²/4 (f the fractional part). Summed over a sub-block of n_j
values that is n_j·R̂_j²/(4L²): the bound V_n(b) of DESIGN §2 (`uniform_error_bound`).
R̂_j does not depend on b, so a device's Σ_j n_j·R̂_j² (`range_sq_sums`) prices every b.

Scales (two levels, like llama.cpp's k-quants). Super-block k sends four scale-dtype
numbers: the least sub-block minimum Lo_k, a min unit u_k, the least needed range Ro_k
and a range unit v_k. Sub-block j of it sends two 5-bit integers, a_j and r_j:

    ℓ̂_j = Lo_k + a_j·u_k,     R̂_j = Ro_k + r_j·v_k,

with u_k = (max_j min_j − Lo_k)/31 and v_k = (max_j need_j − Ro_k)/31, need_j =
max_j − ℓ̂_j. Both codes are rounded **outward**: a_j down and r_j up, so
ℓ̂_j ≤ min_j and ℓ̂_j + R̂_j ≥ max_j (the encoder recomputes both with the decoder's
float operations and corrects a code that float rounding pushed inward). The grid
thus covers the sub-block and the stochastic rounding stays unbiased.

Wire layout of one tensor (`Encoded.buffer`), for K = ⌈n/S⌉ super-blocks,
J = ⌈n/m⌉ sub-blocks and scale dtype s (float32: 4 bytes, bfloat16: 2 bytes):

    bytes [0, 4·K·s)                   Lo_k, u_k, Ro_k, v_k: four arrays of K
                                       (little-endian scale dtype)
    next ⌈10·J/8⌉ bytes                a_j + 32·r_j, 10 bits per sub-block,
                                       bit-packed LSB first (see bitpack.py):
                                       the same bits as the 5-bit stream
                                       a_0, r_0, a_1, r_1, …
    next ⌈n·b/8⌉ bytes                 codes, bit-packed LSB first

so `size_bytes` = 4·K·s + ⌈10·J/8⌉ + ⌈n·b/8⌉ exactly, i.e. b + 128/S + 10/m =
b + 0.25 bits per value with fp32 scales (b + 0.229 with bf16), at every b. Why this
layout rather than one min and step per block, and the candidates measured:
docs/benchmarks.md.

Numerics, and the why of each choice:

- ℓ̂ and R̂ are computed from the super-block scales as sent (bf16: Lo and Ro rounded
  down, u and v up), with the decoder's float operations; a code that float rounding
  left inward moves one step out (a to 0 at worst, which is Lo itself), and a
  super-block whose top code r = 31 still falls short gets v widened by 2^-20.
- δ_j is floored at the smallest normal float32 (1.2e-38): a constant sub-block then
  needs no special case (R̂_j = 0, all codes 0, decoded exactly to ℓ̂_j = its value),
  and 1/δ_j stays finite.
- The rounding draw compares 16-bit random integers with the fractional part, so
  P(round up) = round(65536·f)/65536: biased by at most 2^-17 of a step, and exactly 0
  for f = 0, which makes values already on the grid round-trip exactly. Four draws come
  from one 64-bit word of the generator, several times cheaper than `torch.rand`.
- s is clamped to L before rounding: float rounding can push it a hair past L, and then
  f = 0 means no round-up, so codes never exceed L.
- s is computed in float32: for b ≥ 12 its rounding error reaches ~1e-3 of a step
  (2^-23·L), negligible next to the rounding noise of ±δ/2.
- The scales are fitted once per tensor, on its ⌈n/m⌉ sub-block extremes (per-chunk
  fitting spent more on small-op overhead than on arithmetic). Finding the extremes,
  rounding and decoding proceed in chunks of `CHUNK_VALUES` whole super-blocks, so
  temporaries stay in cache and every chunk's codes start on a byte boundary; the
  rounding draws are taken chunk by chunk, which is part of the format's definition
  for a given generator (tests/quant/test_uniform_golden.py pins the bytes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .bitpack import pack_codes, packed_nbytes, unpack_codes
from .codec import Codec, Encoded, PayloadError, all_finite, check_finite_input
from .registry import UNIFORM_BLOCK_SIZES, default_block_size

MAX_BITS = 16
MAX_BLOCK_SIZE = 1 << 14
SUB_BLOCKS = 64  # sub-blocks per super-block
SCALE_CODE_BITS = 5  # bits of each sub-block's min code and range code
_SCALE_CODES = (1 << SCALE_CODE_BITS) - 1  # 31: the largest scale code
SUPER_SCALES = 4  # Lo, u, Ro, v per super-block
CHUNK_VALUES = 1 << 18  # ~1 MiB of float32 per chunk
SCALE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_TINY_STEP = torch.finfo(torch.float32).tiny  # smallest normal float32 (and bfloat16)
_DRAW_LEVELS = 1 << 16  # resolution of the rounding draw
_DRAW_OFFSET = torch.tensor(-(_DRAW_LEVELS / 2 + 0.5))  # see UniformCodec._round


def block_ranges(
    tensor: torch.Tensor, block_size: int = UNIFORM_BLOCK_SIZES[0]
) -> torch.Tensor:
    """Coded range R̂_j of every sub-block of `tensor` flattened, as float32 (⌈n/m⌉,).

    These are the ranges the codec sends with fp32 scales (R̂_j ≥ max_j − min_j, see
    the module text), so `uniform_error_bound` of them is the codec's own bound.
    """
    ranges, _ = _coded_ranges(_flat(tensor), block_size, torch.float32)
    return ranges


def range_sq_sums(update: Mapping[str, torch.Tensor]) -> dict[int, float]:
    """Σ_j n_j R̂_j² over the sub-blocks of every tensor of `update` (n_j values in
    sub-block j), keyed by the sub-block size m the codec uses.

    With it the server prices the error bound V(b) = Σ_j n_j R̂_j² / (4 (2^b − 1)²) of
    any b without seeing the update (a device reports it with its state and its reply);
    it equals the sum of `UniformCodec.error_bound` over the tensors at every b.
    """
    sums = {}
    for m in UNIFORM_BLOCK_SIZES:
        total = 0.0
        for tensor in update.values():
            ranges, counts = _coded_ranges(_flat(tensor), m, torch.float32)
            total += float((counts * ranges.double().square()).sum())
        sums[m] = total
    return sums


def uniform_error_bound(
    block_ranges: torch.Tensor | Sequence[float], bits: int, block_size: int
) -> float:
    """V(b) = Σ_j m·R̂_j² / (4(2^b − 1)²): the expected
    squared-error bound (DESIGN §2).

    Parameters
    ----------
    block_ranges : tensor or sequence of float
        R̂_j for each sub-block (e.g. from `block_ranges`, or a device's estimate).
    bits : int
        Bit-width b, 1–16.
    block_size : int
        m; every sub-block is counted as full, so a short last one is over-counted
        (safe).

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
    """Uniform quantizer with stochastic rounding and two-level (super-block,
    sub-block) min/range scales; see the module text.

    Parameters
    ----------
    bits : int
        Bit-width b, 1–16 (required).
    block_size : int or None, default None
        Values per sub-block m, a multiple of 8 up to 2^14 (super-blocks hold 64 of
        them); None gives `default_block_size(b)` (48).
    scale_dtype : {"float32", "bfloat16"}, default "float32"
        Dtype of the super-block scales on the wire: 128/(64·m) or 64/(64·m) bits per
        value, plus 10/m for the sub-block codes.
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

    @property
    def super_block_size(self) -> int:
        """S = 64·m values per super-block."""
        return SUB_BLOCKS * self.block_size

    # -- sizes -------------------------------------------------------------------------

    def size_bytes(self, shape: Sequence[int]) -> int:
        """4·⌈n/S⌉ scales, ⌈10·⌈n/m⌉/8⌉ bytes of sub-block codes and ⌈n·b/8⌉ bytes
        of value codes, n = prod(shape)."""
        n = math.prod(shape)
        return (
            self._super_nbytes(n)
            + packed_nbytes(_ceil_div(n, self.block_size), 2 * SCALE_CODE_BITS)
            + packed_nbytes(n, self.bits)
        )

    def _super_nbytes(self, n: int) -> int:
        return SUPER_SCALES * _ceil_div(n, self.super_block_size) * self._scale_nbytes

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
        if n == 0:
            return self._new_encoded(tensor, buffer)
        supers, scale_codes, codes = self._split(buffer, n)
        scales = _SubBlockScales.fit(flat, m, self._scale_torch_dtype)
        supers.copy_(scales.supers)
        scale_codes.copy_(pack_codes(scales.codes.view(-1), SCALE_CODE_BITS))
        steps = (scales.ranges / self._levels).clamp_min_(_TINY_STEP)
        chunk = _chunk_values(self.super_block_size)
        for start in range(0, n, chunk):
            values = flat[start : start + chunk]
            blocks = _as_blocks(values, m)  # (sub-blocks in chunk, m)
            rows = slice(start // m, start // m + blocks.shape[0])
            chunk_codes = self._round(
                blocks, scales.lows[rows], steps[rows], generator
            ).view(-1)[: values.numel()]
            offset = start * self.bits // 8  # start is a multiple of 8: byte aligned
            packed = pack_codes(chunk_codes, self.bits)
            codes[offset : offset + packed.numel()] = packed
        return self._new_encoded(tensor, buffer)

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
        # probability round(65536·f)/65536, and never when f = 0 (so never past L).
        # One fused pass: 65536·f is exact, so t is the same with or without an FMA.
        threshold = torch.add(
            _DRAW_OFFSET, scaled.sub_(floor), alpha=_DRAW_LEVELS, out=scaled
        )
        round_up = (
            _int16_draws(blocks.numel(), generator).view(blocks.shape) < threshold
        )
        if self.bits <= 8:  # via int16: float -> uint8 has no fast conversion kernel
            codes = floor.to(torch.int16).to(torch.uint8)
        else:
            codes = floor.to(torch.int32)
        return codes.add_(round_up.view(torch.uint8))  # bool as 0/1 bytes: no cast

    # -- decode ------------------------------------------------------------------------

    def _decode(self, encoded: Encoded) -> torch.Tensor:
        """ℓ̂_j + q·δ_j for every value, float32; see `Codec.decode`."""
        n, m = encoded.numel, self.block_size
        supers, scale_codes, codes = self._split(encoded.buffer, n)
        supers = supers.float()
        if not all_finite(supers):
            raise PayloadError("The super-block scales contain NaN or Inf.")
        if bool((supers[1:] < 0).any()):
            raise PayloadError(
                "A super-block unit or least range is negative; the encoder only "
                "writes values ≥ 0."
            )
        count = _ceil_div(n, m)
        sub = unpack_codes(scale_codes, SCALE_CODE_BITS, 2 * count).view(count, 2)
        low, ranges = _SubBlockScales.expand(supers, sub)
        step = ranges / self._levels
        if not (all_finite(low) and all_finite(step)):
            raise PayloadError("The sub-block scales decode to NaN or Inf.")
        step.clamp_min_(_TINY_STEP)
        out = torch.empty(n, dtype=torch.float32)
        chunk = _chunk_values(self.super_block_size)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            offset = start * self.bits // 8
            chunk_codes = unpack_codes(
                codes[offset : offset + packed_nbytes(stop - start, self.bits)],
                self.bits,
                stop - start,
            )
            self._dequantize(chunk_codes, low, step, start, out[start:stop])
        return out

    def _dequantize(
        self,
        codes: torch.Tensor,
        low: torch.Tensor,
        step: torch.Tensor,
        start: int,
        out: torch.Tensor,
    ) -> None:
        """Write ℓ̂_j + q·δ_j for the values
        [start, start + len(codes)) into `out`."""
        m = self.block_size
        out.copy_(codes)  # q as float32, exact (q < 2^16); same-dtype ops are fast
        # whole sub-blocks of this chunk; a short tail may follow
        full = codes.numel() // m * m
        first = start // m
        if full:
            count = full // m
            blocks_out = out[:full].view(count, m)
            blocks_out.mul_(step[first : first + count, None])
            blocks_out.add_(low[first : first + count, None])
        if full < codes.numel():
            last = first + full // m
            out[full:].mul_(step[last]).add_(low[last])

    # -- error bound -------------------------------------------------------------------

    def error_bound(self, tensor: torch.Tensor) -> float:
        """Σ_j n_j·R̂_j²/(4L²) with the ranges this codec would send (n_j values in
        sub-block j): exactly `range_sq_sums` / (4L²) for the default codec."""
        ranges, counts = _coded_ranges(
            self._flat_input(tensor), self.block_size, self._scale_torch_dtype
        )
        total = float((counts * ranges.double().square()).sum())
        return total / (4 * self._levels**2)

    def coded_ranges(self, tensor: torch.Tensor) -> torch.Tensor:
        """R̂_j of every sub-block as this codec sends them, float32 (⌈n/m⌉,)."""
        ranges, _ = _coded_ranges(
            self._flat_input(tensor), self.block_size, self._scale_torch_dtype
        )
        return ranges

    # -- layout ------------------------------------------------------------------------

    def _split(
        self, buffer: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of `buffer`: the super-block scales (4, K) in the scale dtype, the
        packed sub-block codes and the packed value codes (uint8)."""
        super_bytes = self._super_nbytes(n)
        sub_bytes = packed_nbytes(_ceil_div(n, self.block_size), 2 * SCALE_CODE_BITS)
        supers = buffer[:super_bytes].view(self._scale_torch_dtype)
        return (
            supers.view(SUPER_SCALES, -1),
            buffer[super_bytes : super_bytes + sub_bytes],
            buffer[super_bytes + sub_bytes :],
        )


class _SubBlockScales:
    """The two-level scales of some whole super-blocks: `supers` (4, K) float32 rows
    Lo, u, Ro, v (each representable in the scale dtype); per sub-block the codes
    (a, r) as a row of `codes` (J, 2) uint8, and the decoded ℓ̂ and R̂ (float32).

    The packed 10-bit codes a + 32·r, LSB first, are the same bits as the 5-bit
    stream a_0, r_0, a_1, r_1, …, which bitpack handles in its fast byte paths."""

    def __init__(
        self,
        supers: torch.Tensor,
        codes: torch.Tensor,
        lows: torch.Tensor,
        ranges: torch.Tensor,
    ) -> None:
        self.supers, self.codes, self.lows, self.ranges = supers, codes, lows, ranges

    @classmethod
    def fit(
        cls, flat: torch.Tensor, block_size: int, scale_dtype: torch.dtype
    ) -> _SubBlockScales:
        """Outward-rounded scales of the sub-blocks of `block_size` values of `flat`
        (1-D float32), in one pass over the whole tensor: the scale arithmetic works
        on ⌈n/m⌉ sub-block values, and many small per-chunk ops would cost more."""
        count = _ceil_div(flat.numel(), block_size)
        low, high = _sub_block_extremes(flat, block_size)  # (K, 64)
        check_finite_input(low, "uniform")  # NaN propagates to the extremes
        check_finite_input(high, "uniform")
        base = low.amin(1)
        unit = (low.amax(1) - base) / _SCALE_CODES
        _check_range(unit, flat)
        base, unit = _outward(base, unit, scale_dtype)
        a = ((low - base[:, None]) / unit.clamp_min(_TINY_STEP)[:, None]).floor_()
        a.clamp_(0, _SCALE_CODES)
        lows = _level(base, unit, a)
        if _any(lows > low):  # float rounding put some ℓ̂ above the minimum
            a -= (lows > low).float()  # one code down (a ≥ 1 there: code 0 is Lo)
            lows = _level(base, unit, a)
            a[lows > low] = 0  # still above: the least minimum, which never is
            lows = _level(base, unit, a)
        need = high - lows
        range_base = need.amin(1)
        range_unit = (need.amax(1) - range_base) / _SCALE_CODES
        _check_range(need, flat)
        _check_range(range_unit, flat)
        range_base, range_unit = _outward(range_base, range_unit, scale_dtype)
        r = (need - range_base[:, None]) / range_unit.clamp_min(_TINY_STEP)[:, None]
        r = r.ceil_().clamp_(0, _SCALE_CODES)
        ranges = _level(range_base, range_unit, r)
        if _any(lows + ranges < high):  # float rounding left some R̂ short
            short = (lows + ranges < high) & (r < _SCALE_CODES)  # one code up
            r += short.float()
            ranges = _level(range_base, range_unit, r)
            top_short = _any_row(lows + ranges < high)  # at r = 31: a wider unit
            if bool(top_short.any()):
                wider = range_unit[top_short] * (1 + 2.0**-20)
                range_unit[top_short] = _outward(wider, wider, scale_dtype)[1]
                ranges = _level(range_base, range_unit, r)
        # (a, r) byte pairs: a + 256·r as a little-endian int16 (as bitpack assumes)
        codes = torch.add(a, r, alpha=256).to(torch.int16).view(torch.uint8)
        codes = codes.view(-1, 2)[:count]
        supers = torch.stack([base, unit, range_base, range_unit])
        return cls(supers, codes, lows.view(-1)[:count], ranges.view(-1)[:count])

    @staticmethod
    def expand(
        supers: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ℓ̂ and R̂ of the sub-blocks from the super-block scales (4, K) and the
        sub-block codes (a, r) (J, 2), with the encoder's float operations."""
        count = codes.shape[0]
        codes = codes.T.to(torch.float32, memory_format=torch.contiguous_format)  # a; r
        a, r = _pad_rows(codes[0]), _pad_rows(codes[1])
        lows = _level(supers[0], supers[1], a).view(-1)[:count]
        ranges = _level(supers[2], supers[3], r).view(-1)[:count]
        return lows, ranges


def _check_range(values: torch.Tensor, flat: torch.Tensor) -> None:
    if not all_finite(values):
        raise ValueError(
            "Codec 'uniform' cannot encode a block whose range overflows float32 "
            f"(largest |value| {flat.abs().max().item():.3g})."
        )


def _any(mask: torch.Tensor) -> bool:
    """`mask.any()` for a bool tensor, as the max of its bytes: several times faster
    in torch."""
    return mask.numel() > 0 and bool(mask.view(torch.uint8).amax())


def _any_row(mask: torch.Tensor) -> torch.Tensor:
    """`mask.any(1)` for a 2-D bool tensor, the same way as `_any`."""
    return mask.view(torch.uint8).amax(1).bool()


def _level(base: torch.Tensor, unit: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """base + code·unit per super-block row, in float32: the one formula encoder and
    decoder share (separate multiply and add, so both round alike)."""
    return code * unit[:, None] + base[:, None]


def _outward(
    base: torch.Tensor, unit: torch.Tensor, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Base rounded down and unit up to the scale dtype (float32: as they are)."""
    if scale_dtype == torch.bfloat16:
        return _round_bfloat16(base, up=False), _round_bfloat16(unit, up=True)
    return base, unit


def _coded_ranges(
    flat: torch.Tensor, block_size: int, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """R̂_j of every sub-block of `flat` and its count n_j (float64)."""
    if flat.numel():
        result = _SubBlockScales.fit(flat, block_size, scale_dtype).ranges
    else:
        result = torch.empty(0)
    counts = torch.full_like(result, block_size, dtype=torch.float64)
    if len(counts):
        counts[-1] = flat.numel() - (len(counts) - 1) * block_size
    return result, counts


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32)


def _pad_rows(values: torch.Tensor) -> torch.Tensor:
    """Per-sub-block `values` as (K, 64) rows of super-blocks; a short last row is
    filled with copies of its last value (which changes no row minimum or maximum)."""
    short = -values.numel() % SUB_BLOCKS
    if short:
        values = torch.cat([values, values[-1:].expand(short)])
    return values.view(-1, SUB_BLOCKS)


def _sub_block_extremes(
    flat: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of every sub-block of `flat`, float32, each as (K, 64)
    rows of super-blocks like `_pad_rows` gives; NaN propagates.

    torch reduces rows whose length is a multiple of 32 several times faster than
    rows of 48 (its vectorized inner reduction), faster even after a copy: so each
    chunk's sub-blocks are copied into rows of m rounded up to a multiple of 32, the
    extra columns filled with the row's first value (which changes no extreme).
    """
    count = _ceil_div(flat.numel(), block_size)
    rows_total = _ceil_div(count, SUB_BLOCKS) * SUB_BLOCKS
    low, high = torch.empty(rows_total), torch.empty(rows_total)
    width = _ceil_div(block_size, 32) * 32
    chunk = _chunk_values(block_size)
    padded = torch.empty(0)
    for start in range(0, flat.numel(), chunk):
        blocks = _as_blocks(flat[start : start + chunk], block_size)
        rows = slice(start // block_size, start // block_size + blocks.shape[0])
        if width != block_size:
            if padded.shape[0] != blocks.shape[0]:
                padded = torch.empty(blocks.shape[0], width)
            padded[:, :block_size] = blocks
            padded[:, block_size:] = blocks[:, :1]
            blocks = padded
        torch.amin(blocks, 1, out=low[rows])
        torch.amax(blocks, 1, out=high[rows])
    low[count:], high[count:] = low[count - 1], high[count - 1]
    return low.view(-1, SUB_BLOCKS), high.view(-1, SUB_BLOCKS)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(
            "The 'bits' parameter of codec 'uniform' must be an integer in "
            f"1–{MAX_BITS}. Got {bits!r}."
        )


def _chunk_values(block_size: int) -> int:
    """Values per chunk: whole (super-)blocks, about `CHUNK_VALUES`, a multiple of
    8."""
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
