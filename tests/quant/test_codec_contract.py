"""The contract every codec meets: round trip, exact size, error bound, unbiasedness."""

import math
import random

import pytest
import torch

from qfd_app.quant import PayloadError, get_codec
from qfd_app.quant.codec import Encoded

FIXED_SHAPES = [
    (),
    (1,),
    (0,),
    (2, 0),
    (3, 3),
    (16, 8, 3, 3),
    (7,),
    (255,),
    (257,),
    (1023, 1),
]


def random_shapes(count, seed):
    rng = random.Random(seed)
    return [
        tuple(rng.randint(1, 40) for _ in range(rng.randint(1, 4)))
        for _ in range(count)
    ]


def reference_size(codec, shape):
    """Wire size from the formats' specification, written
    independently of the codecs."""
    n = math.prod(shape)
    if codec.name == "uniform":
        # four scales per super-block of 64 sub-blocks, 10 bits per sub-block
        scale_bytes = {"float32": 4, "bfloat16": 2}[codec.scale_dtype]
        sub_blocks = math.ceil(n / codec.block_size)
        return (
            4 * math.ceil(sub_blocks / 64) * scale_bytes
            + math.ceil(sub_blocks * 10 / 8)
            + math.ceil(n * codec.bits / 8)
        )
    if codec.name in ("fp32", "fp16", "bf16"):
        return n * codec.bits // 8
    absmax_bytes = 4 * math.ceil(n / codec.block_size)
    if codec.name == "bnb-blockwise8":
        return absmax_bytes + n
    return absmax_bytes + math.ceil(n / 2)  # nf4, fp4: two codes per byte


class TestCodecContract:
    """Each test runs for every codec in `CODEC_SPECS` (conftest.py)."""

    @pytest.mark.parametrize("shape", FIXED_SHAPES + random_shapes(12, seed=0), ids=str)
    def test_size_bytes_is_exact_for_any_shape(self, codec, generator, shape):
        # Prepare
        tensor = torch.randn(shape, generator=generator)
        # Execute
        encoded = codec.encode(tensor, generator)
        # Assert
        assert codec.size_bytes(shape) == reference_size(codec, shape)
        assert encoded.nbytes == codec.size_bytes(shape)
        assert encoded.buffer.dtype == torch.uint8 and encoded.buffer.dim() == 1

    @pytest.mark.parametrize("shape", FIXED_SHAPES, ids=str)
    def test_round_trip_keeps_shape_and_dtype(self, codec, generator, shape):
        tensor = torch.randn(shape, generator=generator)
        decoded = codec.decode(codec.encode(tensor, generator))
        assert decoded.shape == tensor.shape
        assert decoded.dtype == tensor.dtype
        assert torch.isfinite(decoded).all()

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_round_trip_returns_the_input_dtype(self, codec, generator, dtype):
        tensor = torch.randn(5, 7, generator=generator).to(dtype)
        decoded = codec.decode(codec.encode(tensor, generator))
        assert decoded.dtype == dtype
        assert decoded.shape == tensor.shape

    @pytest.mark.parametrize("n", [1000, 1024])
    def test_values_on_the_grid_round_trip_exactly(self, codec, generator, on_grid, n):
        tensor = on_grid(codec, n, generator)
        decoded = codec.decode(codec.encode(tensor, generator))
        assert torch.equal(decoded, tensor)

    def test_measured_error_stays_within_the_bound(self, codec, generator):
        # Prepare: a tensor with blocks of very different scales
        tensor = torch.randn(20_000, generator=generator)
        tensor *= torch.logspace(-3, 1, 20_000).flip(0)
        # Execute
        decoded = codec.decode(codec.encode(tensor, generator))
        error = (decoded.double() - tensor.double()).square().sum()
        bound = codec.error_bound(tensor)
        # Assert: a single draw; for uniform E[error] ≈ 2/3 of the bound and its
        # relative spread is ~1%, so 5% slack is far beyond sampling noise
        assert float(error) <= bound * 1.05 + 1e-30
        if not codec.stochastic:  # deterministic: the bound is the error itself
            assert float(error) == pytest.approx(bound, rel=1e-9, abs=1e-30)

    def test_stochastic_codec_is_unbiased(self, codec, generator, assert_unbiased):
        if not codec.stochastic:
            pytest.skip("deterministic codec: rounds to nearest, biased by design")
        assert_unbiased(codec, generator)

    def test_encoding_is_reproducible(self, codec):
        tensor = torch.randn(1000, generator=torch.Generator().manual_seed(0))
        first = codec.encode(tensor, torch.Generator().manual_seed(7)).buffer
        second = codec.encode(tensor, torch.Generator().manual_seed(7)).buffer
        assert torch.equal(first, second)

    def test_encoding_is_a_snapshot_of_the_input(self, codec, generator):
        tensor = torch.randn(300, generator=generator)
        encoded = codec.encode(tensor, generator)
        before = encoded.buffer.clone()
        tensor.mul_(2)  # e.g. training goes on after the update was encoded
        assert torch.equal(encoded.buffer, before)

    def test_options_rebuild_an_equal_codec(self, codec):
        rebuilt = get_codec(codec.name, codec.bits, **codec.options())
        assert rebuilt == codec and hash(rebuilt) == hash(codec)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_encode_rejects_non_finite_input(self, codec, generator, bad):
        tensor = torch.randn(600, generator=generator)
        tensor[321] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            codec.encode(tensor, generator)

    def test_encode_rejects_integer_tensors(self, codec, generator):
        with pytest.raises(ValueError, match="floating"):
            codec.encode(torch.arange(10), generator)

    @pytest.mark.parametrize("delta", [-1, 1])
    def test_decode_rejects_truncated_or_oversized_buffers(
        self, codec, generator, delta
    ):
        encoded = codec.encode(torch.randn(100, generator=generator), generator)
        buffer = torch.cat([encoded.buffer, torch.zeros(1, dtype=torch.uint8)])[
            : encoded.nbytes + delta
        ]
        bad = Encoded(encoded.codec, encoded.bits, encoded.shape, encoded.dtype, buffer)
        with pytest.raises(
            PayloadError, match="truncated" if delta < 0 else "oversized"
        ):
            codec.decode(bad)
