"""`uniform` specifics: wire layout, block sizes, rounding law, bounds, validation."""

import math

import numpy as np
import pytest
import torch

import qfd_app.quant.uniform as uniform_module
from qfd_app.quant import (
    PayloadError,
    block_ranges,
    default_block_size,
    get_codec,
    uniform_error_bound,
)
from qfd_app.quant.codec import Encoded


def read_wire(encoded, codec):
    """Independent numpy reader of the documented layout: mins, steps, packed codes."""
    n, m, bits = encoded.numel, codec.block_size, codec.bits
    blocks = math.ceil(n / m)
    raw = encoded.buffer.numpy()
    scale = {"float32": "<f4", "bfloat16": "<u2"}[codec.scale_dtype]
    width = np.dtype(scale).itemsize
    mins = np.frombuffer(raw[: blocks * width].tobytes(), scale)
    steps = np.frombuffer(raw[blocks * width : 2 * blocks * width].tobytes(), scale)
    if codec.scale_dtype == "bfloat16":  # bfloat16 = the top half of a float32
        mins, steps = [
            (a.astype(np.uint32) << 16).view(np.float32) for a in (mins, steps)
        ]
    stream = np.unpackbits(raw[2 * blocks * width :], bitorder="little")[: n * bits]
    codes = stream.reshape(n, bits).astype(np.int64) @ (1 << np.arange(bits))
    return mins, steps, codes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 11, 16])
@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16"])
def test_wire_layout_matches_the_documented_format(bits, scale_dtype, generator):
    # Prepare
    codec = get_codec("uniform", bits, scale_dtype=scale_dtype)
    x = torch.randn(1000, generator=generator) * 3 + 1
    # Execute
    encoded = codec.encode(x, generator)
    mins, steps, codes = read_wire(encoded, codec)
    decoded = codec.decode(encoded).numpy()
    # Assert: the decoded values are ℓ_j + q·δ_j read by the independent reader ...
    block = np.arange(1000) // codec.block_size
    np.testing.assert_array_equal(
        decoded, codes.astype(np.float32) * steps[block] + mins[block]
    )
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    # ... and each code is one of the two grid points around its value
    scaled = (x.numpy().astype(np.float64) - mins[block]) / steps[block]
    assert np.all(
        (codes >= np.floor(scaled) - 1e-3) & (codes <= np.ceil(scaled) + 1e-3)
    )


@pytest.mark.parametrize(
    "bits, block_size", [(1, 64), (2, 64), (3, 64), (4, 256), (16, 256)]
)
def test_block_size_is_64_up_to_3_bits_and_256_above(bits, block_size):
    assert default_block_size(bits) == block_size
    assert get_codec("uniform", bits).block_size == block_size


@pytest.mark.parametrize(
    "bits, scale_dtype, overhead",
    [
        (4, "float32", 0.25),
        (8, "float32", 0.25),
        (4, "bfloat16", 0.125),
        (2, "float32", 1.0),
    ],
)
def test_scale_overhead_in_bits_per_value(bits, scale_dtype, overhead):
    codec = get_codec("uniform", bits, scale_dtype=scale_dtype)
    n = 1 << 20
    assert codec.size_bytes((n,)) * 8 / n - bits == pytest.approx(overhead)


@pytest.mark.parametrize("fraction", [0.3, 1 / 3, 0.7, 0.999])
def test_rounds_up_with_probability_equal_to_the_fraction(fraction, generator):
    # Prepare: 1 bit, grid {0, 1} in every block (positions 0 and 1),
    # the rest at `fraction`
    codec = get_codec("uniform", 1)
    x = torch.full((4096, 64), fraction)
    x[:, 0], x[:, 1] = 0.0, 1.0
    # Execute
    decoded = codec.decode(codec.encode(x.view(-1), generator)).view(4096, 64)[:, 2:]
    # Assert: binomial proportion within 5 standard errors
    n = decoded.numel()
    assert decoded.mean().item() == pytest.approx(
        fraction, abs=5 * math.sqrt(fraction * (1 - fraction) / n)
    )


def test_unbiasedness_check_detects_round_to_nearest(
    monkeypatch, generator, assert_unbiased
):
    # Draws fixed at 0 turn stochastic rounding into rounding to nearest, which is
    # biased: the statistical check of the contract must catch it (power of the test)
    monkeypatch.setattr(
        uniform_module, "_int16_draws", lambda count, gen: torch.zeros(count)
    )
    with pytest.raises(AssertionError):
        assert_unbiased(get_codec("uniform", 4), generator)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_error_bound_is_attained_between_grid_points(bits):
    # Prepare: each block holds its grid ends, then values exactly halfway between
    # levels, where stochastic rounding errs by ±δ/2 whatever it draws
    codec = get_codec("uniform", bits)
    m, levels, step = codec.block_size, (1 << bits) - 1, 2.0**-6
    halfway = (torch.arange(m - 2) % levels + 0.5) * step
    block = torch.cat([torch.tensor([0.0, levels * step]), halfway]) - 1.0
    x = block.repeat(8)
    # Execute
    error = (
        (codec.decode(codec.encode(x, torch.Generator())) - x).double().square().sum()
    )
    # Assert: the m − 2 interior values each contribute δ²/4; the bound counts all m
    assert codec.error_bound(x) == pytest.approx(8 * m * step**2 / 4)
    assert float(error) == pytest.approx(8 * (m - 2) * step**2 / 4)


@pytest.mark.parametrize("bits", [2, 4, 9])
def test_codec_bound_equals_the_design_formula_from_block_ranges(bits, generator):
    codec = get_codec("uniform", bits)
    x = torch.randn(8 * 256, generator=generator) * torch.linspace(0.01, 2, 8 * 256)
    ranges = block_ranges(x, codec.block_size)
    expected = sum(
        codec.block_size * r**2 / (4 * (2**bits - 1) ** 2) for r in ranges.tolist()
    )
    assert uniform_error_bound(ranges, bits, codec.block_size) == pytest.approx(
        expected
    )
    assert codec.error_bound(x) == pytest.approx(expected, rel=1e-5)


def test_block_ranges_of_a_short_last_block():
    x = torch.tensor([0.0, 4.0, -1.0, 2.0, 5.0])  # blocks of 2: [0, 4], [-1, 2], [5]
    assert block_ranges(x, 2).tolist() == [4.0, 3.0, 0.0]


def test_bfloat16_scales_are_rounded_outward(generator):
    # Prepare: large offsets make the rounding of ℓ to bfloat16 matter
    codec = get_codec("uniform", 4, scale_dtype="bfloat16")
    x = 1000 + torch.randn(4096, generator=generator)
    # Execute
    encoded = codec.encode(x, generator)
    mins, steps, _ = read_wire(encoded, codec)
    blocks = x.view(-1, 256).double().numpy()
    # Assert: the sent grid [ℓ, ℓ + Lδ] covers every block, and the bound holds
    assert np.all(mins <= blocks.min(1))
    assert np.all(
        mins.astype(np.float64) + 15 * steps.astype(np.float64) >= blocks.max(1)
    )
    error = (codec.decode(encoded) - x).double().square().sum()
    assert float(error) <= codec.error_bound(x)


@pytest.mark.parametrize("value", [0.0, -3.5, 1e-30])
def test_constant_blocks_round_trip_exactly(value, generator):
    codec = get_codec("uniform", 3)
    x = torch.full((100,), value)
    assert torch.equal(codec.decode(codec.encode(x, generator)), x)
    assert codec.error_bound(x) < 1e-70


def test_stochastic_rounding_needs_a_generator():
    with pytest.raises(ValueError, match="torch.Generator"):
        get_codec("uniform", 4).encode(torch.randn(10))


def test_a_range_beyond_float32_is_rejected(generator):
    with pytest.raises(ValueError, match="overflows float32"):
        get_codec("uniform", 4).encode(torch.tensor([-3e38, 3e38]), generator)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"bits": 0},
            "'bits' parameter of codec 'uniform' must be an integer in 1–16",
        ),
        ({"bits": 17}, "'bits' parameter"),
        ({"bits": True}, "'bits' parameter"),
        ({"bits": 4.0}, "'bits' parameter"),
        ({"bits": None}, "needs 'bits'"),
        ({"bits": 4, "block_size": 100}, "'block_size' parameter .* multiple of 8"),
        ({"bits": 4, "block_size": 2**21}, "'block_size' parameter"),
        (
            {"bits": 4, "scale_dtype": "float16"},
            "'scale_dtype' parameter .* float32, bfloat16",
        ),
        ({"bits": 4, "scales": "x"}, "Unknown option"),
    ],
)
def test_invalid_settings_are_rejected_with_the_allowed_values(options, message):
    with pytest.raises(ValueError, match=message):
        get_codec("uniform", **options)


def tampered(encoded, codec, *, min_value=None, step_value=None):
    buffer = encoded.buffer.clone()
    blocks = math.ceil(encoded.numel / codec.block_size)
    scales = buffer[: 8 * blocks].view(torch.float32)
    if min_value is not None:
        scales[0] = min_value
    if step_value is not None:
        scales[blocks] = step_value
    return Encoded(encoded.codec, encoded.bits, encoded.shape, encoded.dtype, buffer)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"min_value": float("nan")}, "scales .* NaN or Inf"),
        ({"step_value": float("inf")}, "scales .* NaN or Inf"),
        ({"step_value": -0.5}, "negative"),
        ({"min_value": 3e38, "step_value": 3e38}, "decodes to NaN or Inf"),
    ],
)
def test_decode_rejects_invalid_scales(change, message, generator):
    codec = get_codec("uniform", 4)
    encoded = codec.encode(torch.randn(300, generator=generator) + 5, generator)
    with pytest.raises(PayloadError, match=message):
        codec.decode(tampered(encoded, codec, **change))


def test_large_tensors_span_several_chunks(monkeypatch, generator):
    # Chunks of 2 blocks force the chunk loop, byte offsets and a short last chunk
    monkeypatch.setattr(uniform_module, "CHUNK_VALUES", 128)
    codec = get_codec("uniform", 3)  # blocks of 64, 3-bit codes: 48-byte chunks
    x = torch.randn(1000, generator=generator)
    encoded = codec.encode(x, generator)
    mins, steps, codes = read_wire(encoded, codec)
    block = np.arange(1000) // 64
    np.testing.assert_array_equal(
        codec.decode(encoded).numpy(),
        codes.astype(np.float32) * steps[block] + mins[block],
    )
    assert float((codec.decode(encoded) - x).square().sum()) <= codec.error_bound(x)
