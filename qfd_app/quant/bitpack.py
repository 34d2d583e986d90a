"""Pack b-bit integer codes (1 ≤ b ≤ 16) into a dense little-endian
bit stream, and back.

The stream layout is the one `numpy.packbits(..., bitorder="little")` gives for
the bits of the codes written least significant first: code i occupies stream bits
[i·b, (i+1)·b), and stream bit j is bit j mod 8 of byte j // 8. n codes take exactly
ceil(n·b/8) bytes; the unused high bits of the last byte are zero.

Eight codes always fill exactly b bytes, so the codes are packed in groups of eight, and
every operation below works on whole columns of codes, never on single values:

- b ∈ {1, 2, 4}: the 8/b codes of one output byte, held as uint8, are viewed as one
  16/32/64-bit integer v (code i in bits 8i…); shifting v right by i·(8 − b) moves
  code i to bits i·b, and the OR of those shifts has the packed byte in its low 8 bits
  (codes below i fall off the right, codes above land above bit 8).
- b ∈ {3, 5, 6, 7}: the same trick on 8 codes viewed as one int64, masking
  each shifted code; the low b bytes of the word are the group's b bytes
  (little-endian machine).
- b = 8: the codes are the bytes; b = 16: a code is a little-endian uint16.
- b ∈ 9…15: the eight codes of a group are OR-ed into two int64 words
  (8·b ≤ 128 bits), whose first b bytes in memory are the group's bytes.
"""

from __future__ import annotations

import sys

import torch

if sys.byteorder != "little":  # the int64 word trick reads bytes in memory order
    raise ImportError("qfd_app.quant.bitpack assumes a little-endian machine.")

MAX_BITS = 16


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that `n` codes of `bits` bits occupy: ceil(n·bits/8)."""
    return -(-n * bits // 8)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(
            f"Bit-packing supports 1 to {MAX_BITS} bits per code. Got {bits}."
        )


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack 1-D integer `codes` (each in [0, 2^bits)) into ceil(n·bits/8) uint8 bytes.

    Parameters
    ----------
    codes : torch.Tensor
        1-D integer tensor (uint8 is fastest for bits ≤ 8). Values must lie in
        [0, 2^bits); higher bits would corrupt neighbouring codes and are not checked.
    bits : int
        Bits per code, 1–16.

    Returns
    -------
    torch.Tensor
        1-D uint8 tensor of length ``packed_nbytes(len(codes), bits)``.
    """
    _check_bits(bits)
    n = codes.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.uint8)
    pad = -n % 8
    if pad:  # zero codes fill the last group; their bits are cut off or stay zero
        codes = torch.cat([codes, codes.new_zeros(pad)])
    if bits == 8:
        packed = codes.to(torch.uint8)
    elif bits <= 8:
        packed = _pack_bytes(codes.to(torch.uint8), bits)
    elif bits == 16:
        # int32 -> int16 keeps the low 16 bits; little-endian bytes are the stream order
        packed = codes.to(torch.int32).to(torch.int16).view(torch.uint8)
    else:
        packed = _pack_words(codes, bits)
    return packed[: packed_nbytes(n, bits)]


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `n` codes of a packed stream.

    Returns uint8 codes for bits ≤ 8 and int64 codes otherwise. `packed` must hold
    exactly ``packed_nbytes(n, bits)`` bytes (callers validate lengths first).
    """
    _check_bits(bits)
    groups = -(-n // 8)
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(
            f"{n} codes of {bits} bits need {packed_nbytes(n, bits)} bytes; "
            f"got {packed.numel()}."
        )
    if n == 0:
        return torch.empty(0, dtype=torch.uint8 if bits <= 8 else torch.int64)
    pad = groups * bits - packed.numel()
    if pad:
        packed = torch.cat([packed, packed.new_zeros(pad)])
    if bits == 8:
        codes = packed
    elif bits <= 8:
        codes = _unpack_bytes(packed, bits)
    elif bits == 16:
        if packed.storage_offset() % 2:  # a stream may start at an odd byte
            packed = packed.clone()
        codes = packed.view(torch.int16).to(torch.int64) & 0xFFFF
    else:
        codes = _unpack_words(packed, bits, groups)
    return codes[:n]


# -- b ≤ 8: shifts on uint8 codes viewed as wider integers ---------------------------

_WIDE = {1: torch.int64, 2: torch.int32, 4: torch.int16}  # 8/b bytes: one output byte


def _pack_bytes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    mask = (1 << bits) - 1
    if bits in _WIDE:
        wide = codes.view(_WIDE[bits])  # 8/b codes per element, code i in bits 8i…
        out = wide.clone()
        for position in range(1, 8 // bits):
            out |= wide >> (position * (8 - bits))
        return (out & 0xFF).to(torch.uint8)  # the low byte holds the packed codes
    wide = codes.view(torch.int64)  # one group of 8 codes per element
    word = wide & mask
    for position in range(1, 8):
        word |= (wide >> (position * (8 - bits))) & (mask << (position * bits))
    return word.view(torch.uint8).view(-1, 8)[:, :bits].reshape(-1)


def _unpack_bytes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    mask = (1 << bits) - 1
    if bits in _WIDE:
        per_byte = 8 // bits
        wide = packed.to(_WIDE[bits])
        out = wide & mask
        for position in range(1, per_byte):
            out |= ((wide >> (position * bits)) & mask) << (8 * position)
        return out.view(torch.uint8)
    groups = packed.numel() // bits
    raw = torch.zeros(groups, 8, dtype=torch.uint8)
    raw[:, :bits] = packed.view(groups, bits)
    word = raw.view(torch.int64).view(-1)
    out = word & mask
    for position in range(1, 8):
        out |= ((word >> (position * bits)) & mask) << (8 * position)
    return out.view(torch.uint8)


# -- 9 ≤ b ≤ 15: eight codes into two int64 words ----------------------------------


def _pack_words(codes: torch.Tensor, bits: int) -> torch.Tensor:
    groups = codes.numel() // 8
    # (8, groups): one contiguous row per position in the group, so each shift-OR below
    # streams through memory instead of striding over it
    columns = torch.empty(8, groups, dtype=torch.int64).copy_(codes.view(groups, 8).t())
    low = columns[0].clone()  # stream bits 0–63 of each group
    high = torch.zeros(groups, dtype=torch.int64) if bits > 8 else None  # bits 64–127
    for position in range(1, 8):
        offset = position * bits
        column = columns[position]
        if offset < 64:
            # bits shifted past bit 63 drop out of the low word (two's complement wraps)
            low |= column << offset
            if offset + bits > 64:  # the code straddles the two words
                high |= column >> (64 - offset)
        else:
            high |= column << (offset - 64)
    words = low.unsqueeze(1) if high is None else torch.stack([low, high], dim=1)
    # (groups, 8 or 16) bytes in memory order; the first `bits` hold the
    # group's 8·bits bits
    return words.view(torch.uint8)[:, :bits].reshape(-1)


def _unpack_words(packed: torch.Tensor, bits: int, groups: int) -> torch.Tensor:
    width = 8 if bits <= 8 else 16
    raw = torch.zeros(groups, width, dtype=torch.uint8)
    raw[:, :bits] = packed.view(groups, bits)
    words = raw.view(torch.int64)  # (groups, 1 or 2)
    low = words[:, 0].contiguous()
    high = words[:, 1].contiguous() if bits > 8 else None
    mask = (1 << bits) - 1
    out = torch.empty(groups, 8, dtype=torch.int64)
    for position in range(8):
        offset = position * bits
        if offset + bits <= 64:
            # >> is arithmetic on int64; the mask drops the copied sign bits
            torch.bitwise_and(low >> offset, mask, out=out[:, position])
        elif offset >= 64:
            torch.bitwise_and(high >> (offset - 64), mask, out=out[:, position])
        else:
            low_bits = 64 - offset
            part = (low >> offset) & ((1 << low_bits) - 1)
            part |= (high & ((1 << (bits - low_bits)) - 1)) << low_bits
            out[:, position] = part
    return out.view(-1)
