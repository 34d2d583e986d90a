"""`uniform` specifics: wire layout, outward scales, rounding law, bounds,
validation."""

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
    range_sq_sums,
    uniform_error_bound,
)
from qfd_app.quant.codec import Encoded


def read_wire(encoded, codec):
    """Independent numpy reader of the documented layout: per-value ℓ̂ and δ, the
    sub-block ranges R̂ and the codes."""
    n, m, bits = encoded.numel, codec.block_size, codec.bits
    subs = math.ceil(n / m)
    supers = math.ceil(subs / 64)
    raw = encoded.buffer.numpy()
    scale = {"float32": "<f4", "bfloat16": "<u2"}[codec.scale_dtype]
    head_bytes = 4 * supers * np.dtype(scale).itemsize
    head = np.frombuffer(raw[:head_bytes].tobytes(), scale)
    if codec.scale_dtype == "bfloat16":  # bfloat16 = the top half of a float32
        head = (head.astype(np.uint32) << 16).view(np.float32)
    base, unit, range_base, range_unit = head.reshape(4, supers)
    sub_bytes = math.ceil(subs * 10 / 8)
    sub_stream = np.unpackbits(
        raw[head_bytes : head_bytes + sub_bytes], bitorder="little"
    )[: subs * 10]
    sub = sub_stream.reshape(subs, 10).astype(np.int64) @ (1 << np.arange(10))
    a, r = (sub % 32).astype(np.float32), (sub // 32).astype(np.float32)
    k = np.arange(subs) // 64
    low = a * unit[k] + base[k]
    ranges = r * range_unit[k] + range_base[k]
    stream = np.unpackbits(raw[head_bytes + sub_bytes :], bitorder="little")
    codes = stream[: n * bits].reshape(n, bits).astype(np.int64) @ (
        1 << np.arange(bits)
    )
    block = np.arange(n) // m
    step = np.maximum(ranges / np.float32(2**bits - 1), np.float32(2.0**-126))
    return low[block], step[block], ranges, codes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 11, 16])
@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16"])
def test_wire_layout_matches_the_documented_format(bits, scale_dtype, generator):
    # Prepare: several super-blocks of very different scales, and a short tail
    codec = get_codec("uniform", bits, scale_dtype=scale_dtype)
    x = torch.randn(7000, generator=generator) * torch.linspace(0.1, 3, 7000) + 1
    # Execute
    encoded = codec.encode(x, generator)
    low, step, _, codes = read_wire(encoded, codec)
    decoded = codec.decode(encoded).numpy()
    # Assert: the decoded values are ℓ̂_j + q·δ_j read by the independent reader ...
    np.testing.assert_array_equal(decoded, codes.astype(np.float32) * step + low)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    # ... and each code is one of the two grid points around its value
    scaled = (x.numpy().astype(np.float64) - low) / step
    assert np.all(
        (codes >= np.floor(scaled) - 1e-3) & (codes <= np.ceil(scaled) + 1e-3)
    )


@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16"])
def test_sub_block_scales_are_rounded_outward(scale_dtype):
    # Prepare: heavy tails, large offsets and a constant run stress the coding
    codec = get_codec("uniform", 2, scale_dtype=scale_dtype)
    generator = torch.Generator().manual_seed(5)
    x = torch.distributions.StudentT(2.0).sample((48 * 400,)) + 1000
    x[4800:5280] = 7.0
    # Execute
    _, _, ranges, _ = read_wire(codec.encode(x, generator), codec)
    low = read_wire(codec.encode(x, generator), codec)[0][::48]
    blocks = x.view(-1, 48).double().numpy()
    # Assert: ℓ̂_j ≤ min_j and ℓ̂_j + R̂_j ≥ max_j, in exact arithmetic
    assert np.all(low.astype(np.float64) <= blocks.min(1))
    assert np.all(low.astype(np.float64) + ranges.astype(np.float64) >= blocks.max(1))
    assert torch.equal(codec.coded_ranges(x), torch.from_numpy(ranges))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 16])
def test_one_sub_block_size_at_every_bit_width(bits):
    assert default_block_size(bits) == 48
    assert get_codec("uniform", bits).block_size == 48


@pytest.mark.parametrize(
    "bits, scale_dtype, overhead",
    [
        (1, "float32", 0.25),
        (2, "float32", 0.25),
        (4, "float32", 0.25),
        (8, "float32", 0.25),
        (16, "float32", 0.25),
        (2, "bfloat16", 0.25 - 1 / 48),
        (4, "bfloat16", 0.25 - 1 / 48),
    ],
)
def test_scale_overhead_in_bits_per_value(bits, scale_dtype, overhead):
    # 128 bits per super-block of 3072 (64 with bf16) plus 10 bits per sub-block of 48
    codec = get_codec("uniform", bits, scale_dtype=scale_dtype)
    n = 3072 * 341
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
    x = torch.randn(8 * 3072, generator=generator) * torch.linspace(0.01, 2, 8 * 3072)
    ranges = block_ranges(x, codec.block_size)
    expected = sum(
        codec.block_size * r**2 / (4 * (2**bits - 1) ** 2) for r in ranges.tolist()
    )
    assert uniform_error_bound(ranges, bits, codec.block_size) == pytest.approx(
        expected
    )
    assert codec.error_bound(x) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_reported_range_sums_price_the_codec_bound_and_bound_the_mse(bits):
    # Prepare: an update of several tensors, with short sub- and super-blocks
    generator = torch.Generator().manual_seed(bits)
    update = {
        "w": torch.randn(5000, generator=generator) * 0.01,
        "b": torch.randn(70, generator=generator).sign() * torch.rand(70) ** 3,
        "n": torch.randn(3, 3, generator=generator) + 4,
    }
    codec = get_codec("uniform", bits)
    draws = 200

    def squared_error():
        return sum(
            float(
                (codec.decode(codec.encode(t, generator)) - t).double().square().sum()
            )
            for t in update.values()
        )

    # Execute: V(b) from the device's report, the codec's bound, and the squared
    # error of many independent encodings
    bound = range_sq_sums(update)[48] / (4 * (2**bits - 1) ** 2)
    errors = torch.tensor([squared_error() for _ in range(draws)], dtype=torch.float64)
    # Assert: the report prices exactly the codec's own bound, and that bounds the
    # mean measured error (up to 5 standard errors of sampling noise)
    assert bound == pytest.approx(
        sum(codec.error_bound(t) for t in update.values()), rel=1e-12
    )
    mean, spread = float(errors.mean()), float(errors.std()) / math.sqrt(draws)
    assert mean <= bound + 5 * spread
    assert mean >= bound / 10  # and is not a vacuous bound


def test_block_ranges_of_a_short_last_block():
    # blocks of 8: [0 … 4], [−1 … 2], [5]; the coded ranges cover the true ones, within
    # a range unit (the needs span at most 6, in 31 steps)
    x = torch.tensor([0.0, 4.0] * 4 + [-1.0, 2.0] * 4 + [5.0])
    ranges = block_ranges(x, 8)
    true = torch.tensor([4.0, 3.0, 0.0])
    assert len(ranges) == 3
    assert torch.all(ranges >= true)
    assert torch.all(ranges <= true + 2 * 6 / 31)


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
        ({"bits": 4, "block_size": 2**15}, "'block_size' parameter"),
        ({"bits": 4, "block_size": 48.0}, "'block_size' parameter"),
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


def tampered(encoded, codec, changes):
    """`encoded` with the first super-block's scales changed: {scale: value}, scale
    0: Lo, 1: u, 2: Ro, 3: v."""
    buffer = encoded.buffer.clone()
    supers = math.ceil(math.ceil(encoded.numel / codec.block_size) / 64)
    for scale, value in changes.items():
        buffer[: 16 * supers].view(torch.float32)[scale * supers] = value
    return Encoded(encoded.codec, encoded.bits, encoded.shape, encoded.dtype, buffer)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({0: float("nan")}, "super-block scales contain NaN or Inf"),
        ({3: float("inf")}, "super-block scales contain NaN or Inf"),
        ({1: -0.5}, "negative"),
        ({2: -0.5}, "negative"),
        ({1: 3e38}, "sub-block scales decode to NaN or Inf"),
        ({0: 3.4e38, 2: 3e38}, "decodes to NaN or Inf"),
    ],
)
def test_decode_rejects_invalid_scales(changes, message, generator):
    codec = get_codec("uniform", 4)
    encoded = codec.encode(torch.randn(3000, generator=generator) + 5, generator)
    with pytest.raises(PayloadError, match=message):
        codec.decode(tampered(encoded, codec, changes))


def test_large_tensors_span_several_chunks(monkeypatch, generator):
    # Chunks of one super-block force the chunk loop, byte offsets and a short last
    # chunk
    monkeypatch.setattr(uniform_module, "CHUNK_VALUES", 128)
    codec = get_codec("uniform", 3)
    x = torch.randn(10_000, generator=generator) * torch.linspace(0.1, 2, 10_000)
    encoded = codec.encode(x, generator)
    low, step, _, codes = read_wire(encoded, codec)
    np.testing.assert_array_equal(
        codec.decode(encoded).numpy(), codes.astype(np.float32) * step + low
    )
    assert float((codec.decode(encoded) - x).square().sum()) <= codec.error_bound(x)
