"""Decoders never return NaN or Inf in the dtype a payload declares.

The finiteness check runs after the conversion to the declared dtype (`Codec.decode`),
so finite float32 scales that overflow float16 are refused, not decoded to Inf. The
property runs over every registered codec and every declared floating dtype.
"""

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfd_app.quant import PayloadError, get_codec
from qfd_app.quant.codec import Encoded
from qfd_app.quant.registry import CODECS

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# every codec in the registry, at one of its widths (uniform also with bf16 scales)
SPECS = [
    (name, entry.bits[-1 if name != "uniform" else 1], {})
    for name, entry in CODECS.items()
]
SPECS.append(("uniform", 4, {"scale_dtype": "bfloat16"}))
SHAPES = [(1,), (7,), (3, 3), (300,), (4000,)]
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def encoded_as(codec, shape, dtype, seed=0):
    """A valid encoding of a standard normal tensor declared as `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    return codec.encode(torch.randn(shape, generator=generator).to(dtype), generator)


def with_buffer(encoded, buffer):
    return Encoded(encoded.codec, encoded.bits, encoded.shape, encoded.dtype, buffer)


def assert_finite_or_refused(codec, encoded):
    try:
        decoded = codec.decode(encoded)
    except PayloadError as error:
        assert str(error), "a refusal says why"
        return
    assert decoded.dtype == encoded.dtype
    assert tuple(decoded.shape) == tuple(encoded.shape)
    assert torch.isfinite(decoded).all()


# float32 numbers that stress the declared dtypes: beyond float16, near float32's end,
# tiny, negative, NaN and Inf
hostile_floats = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([1e6, -1e6, 7e4, 3.3e38, -3.3e38, 1e-40, -0.5]),
)


@PROPERTY
@given(
    spec=st.sampled_from(SPECS),
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from(SHAPES),
    data=st.data(),
)
def test_random_buffers_decode_finite_in_the_declared_dtype_or_are_refused(
    spec, dtype, shape, data
):
    name, bits, options = spec
    codec = get_codec(name, bits, **options)
    encoded = encoded_as(codec, shape, dtype)
    noise = data.draw(st.binary(min_size=encoded.nbytes, max_size=encoded.nbytes))
    buffer = (
        torch.frombuffer(bytearray(noise), dtype=torch.uint8)
        if noise
        else (torch.empty(0, dtype=torch.uint8))
    )
    assert_finite_or_refused(codec, with_buffer(encoded, buffer))


@PROPERTY
@given(
    spec=st.sampled_from(SPECS),
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from(SHAPES),
    values=st.lists(hostile_floats, min_size=1, max_size=4),
    data=st.data(),
)
def test_hostile_scales_decode_finite_in_the_declared_dtype_or_are_refused(
    spec, dtype, shape, values, data
):
    # float32 numbers written over 4-byte words of a valid buffer: the scales of
    # uniform and bnb, the values of fp32 (fp16/bf16 get two 16-bit values each)
    name, bits, options = spec
    codec = get_codec(name, bits, **options)
    encoded = encoded_as(codec, shape, dtype)
    raw = bytearray(encoded.buffer.numpy().tobytes())
    for value in values:
        if len(raw) < 4:
            break
        slot = data.draw(st.integers(0, len(raw) // 4 - 1))
        raw[4 * slot : 4 * slot + 4] = struct.pack("<f", value)
    buffer = torch.frombuffer(raw, dtype=torch.uint8)
    assert_finite_or_refused(codec, with_buffer(encoded, buffer))


# -- the findings, one by one ---------------------------------------------------------


def float32_words(encoded):
    buffer = encoded.buffer.clone()
    return buffer, buffer[: buffer.numel() // 4 * 4].view(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_uniform_block_minimum_beyond_the_declared_dtype_is_refused(dtype):
    # a super-block minimum Lo of 1e6 is finite in float32 and Inf in float16; bf16
    # rounds to Inf past 3.396e38 (float32 goes to 3.403e38)
    codec = get_codec("uniform", 4)
    encoded = encoded_as(codec, (300,), dtype)
    buffer, words = float32_words(encoded)
    words[0] = 1e6 if dtype == torch.float16 else 3.4e38
    with pytest.raises(PayloadError, match="NaN or Inf values as"):
        codec.decode(with_buffer(encoded, buffer))


def test_a_float32_value_beyond_float16_is_refused_by_the_fp32_codec():
    codec = get_codec("fp32")
    encoded = encoded_as(codec, (10,), torch.float16)
    buffer, words = float32_words(encoded)
    words[3] = 1e6
    with pytest.raises(PayloadError, match="NaN or Inf values as float16"):
        codec.decode(with_buffer(encoded, buffer))


@pytest.mark.parametrize("name", ["bnb-blockwise8", "bnb-nf4"])
def test_a_bnb_absmax_beyond_float16_is_refused(name):
    codec = get_codec(name)
    encoded = encoded_as(codec, (300,), torch.float16)
    buffer, words = float32_words(encoded)
    words[0] = 1e6
    with pytest.raises(PayloadError, match="NaN or Inf values as float16"):
        codec.decode(with_buffer(encoded, buffer))


@pytest.mark.parametrize("name", ["bnb-blockwise8", "bnb-nf4", "bnb-fp4"])
def test_a_float_block_size_is_refused_naming_it(name):
    with pytest.raises(ValueError, match=r"'block_size' parameter .* Got 256\.0"):
        get_codec(name, block_size=256.0)
