"""Bit packing against numpy's `packbits(bitorder="little")` as the reference."""

import numpy as np
import pytest
import torch

from qfd_app.quant.bitpack import pack_codes, packed_nbytes, unpack_codes

LENGTHS = [0, 1, 2, 7, 8, 9, 63, 64, 65, 1001, 4096]


def reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Code i's bits, least significant first, at stream bits [i·b, (i+1)·b)."""
    stream = (codes[:, None].astype(np.int64) >> np.arange(bits)) & 1
    return np.packbits(stream.astype(np.uint8).ravel(), bitorder="little")


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", LENGTHS)
def test_pack_matches_numpy_packbits(bits, n):
    # Prepare
    codes = np.random.default_rng(bits * 1000 + n).integers(0, 2**bits, n)
    # Execute
    packed = pack_codes(torch.from_numpy(codes), bits)
    # Assert
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits) == -(-n * bits // 8)
    np.testing.assert_array_equal(packed.numpy(), reference_pack(codes, bits))


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", LENGTHS)
def test_unpack_inverts_pack(bits, n):
    codes = np.random.default_rng(bits + 7 * n).integers(0, 2**bits, n)
    unpacked = unpack_codes(torch.from_numpy(reference_pack(codes, bits)), bits, n)
    np.testing.assert_array_equal(unpacked.numpy().astype(np.int64), codes)


@pytest.mark.parametrize("bits", [1, 3, 4, 8, 13, 16])
def test_extreme_codes_survive(bits):
    codes = torch.tensor([0, 2**bits - 1] * 13)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, 26).long(), codes)


def test_unpack_rejects_a_wrong_length():
    with pytest.raises(ValueError, match="need 5 bytes"):
        unpack_codes(torch.zeros(4, dtype=torch.uint8), 4, 10)


@pytest.mark.parametrize("bits", [0, 17])
def test_bits_out_of_range_are_rejected(bits):
    with pytest.raises(ValueError, match="1 to 16 bits"):
        pack_codes(torch.zeros(8, dtype=torch.int64), bits)
