"""Fuzzing the update decoder: malformed payloads are rejected with a
reason, never crash.

The property for every input: `decode_update` either raises `PayloadError` (and not its
catch-all "failed unexpectedly" form, which would mean a validation gap) or returns
exactly the expected tensors, with the expected shapes, all finite.
"""

import math
import struct

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfd_app.quant import PayloadError, decode_update, encode_update, get_codec

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "norm.weight": (300,)}
CODECS = {
    "uniform-4": get_codec("uniform", 4),
    "uniform-2": get_codec("uniform", 2, scale_dtype="bfloat16"),
    "fp16": get_codec("fp16"),
    "bnb-nf4": get_codec("bnb-nf4"),
}


def valid_payload(codec):
    generator = torch.Generator().manual_seed(0)
    update = {
        name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()
    }
    return encode_update(update, codec, generator)


PAYLOADS = {key: valid_payload(codec) for key, codec in CODECS.items()}


def assert_rejected_or_sound(arrays, meta, codec, shapes=SHAPES):
    """Run the decoder; returns the PayloadError message, or None when it decoded."""
    try:
        decoded = decode_update(
            arrays,
            meta,
            expected_codec=codec.name,
            expected_bits=codec.bits,
            expected_shapes=shapes,
        )
    except PayloadError as error:
        assert "unexpectedly" not in str(error), str(error)
        return str(error)
    assert list(decoded) == list(shapes)
    for name, tensor in decoded.items():
        assert tuple(tensor.shape) == tuple(shapes[name])
        assert torch.isfinite(tensor).all()
    return None


def copy_arrays(arrays):
    return ArrayRecord(
        {
            name: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data)
            for name, a in arrays.items()
        }
    )


def with_data(arrays, name, data):
    arrays = copy_arrays(arrays)
    arrays[name].data = data
    return arrays


codec_keys = st.sampled_from(sorted(CODECS))
tensor_names = st.sampled_from(sorted(SHAPES))


@FUZZ
@given(key=codec_keys, name=tensor_names, data=st.data())
def test_random_bytes_of_the_right_length_never_yield_nan(key, name, data):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    size = codec.size_bytes(SHAPES[name])
    noise = data.draw(st.binary(min_size=size, max_size=size))
    assert_rejected_or_sound(with_data(arrays, name, noise), meta, codec)


@FUZZ
@given(key=codec_keys, name=tensor_names, noise=st.binary(max_size=4000))
def test_random_bytes_of_any_length_are_rejected_or_sound(key, name, noise):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    reason = assert_rejected_or_sound(with_data(arrays, name, noise), meta, codec)
    if len(noise) != codec.size_bytes(SHAPES[name]):
        assert reason is not None and ("truncated" in reason or "oversized" in reason)


@FUZZ
@given(key=codec_keys, name=tensor_names, cut=st.integers(min_value=1, max_value=400))
def test_truncated_payloads_are_rejected(key, name, cut):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    data = arrays[name].data
    truncated = with_data(arrays, name, data[: max(0, len(data) - cut)])
    reason = assert_rejected_or_sound(truncated, meta, codec)
    assert reason is not None and "truncated" in reason


non_finite_float32 = st.one_of(
    st.just(float("inf")),
    st.just(-float("inf")),
    st.integers(min_value=0x7F800001, max_value=0x7FFFFFFF).map(
        lambda bits: struct.unpack("<f", struct.pack("<I", bits))[0]  # NaN payloads
    ),
)


@FUZZ
@given(
    key=st.sampled_from(["uniform-4", "bnb-nf4"]),
    name=tensor_names,
    value=non_finite_float32,
    data=st.data(),
)
def test_non_finite_scales_are_rejected(key, name, value, data):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    blocks = math.ceil(math.prod(SHAPES[name]) / codec.block_size)
    # four per super-block of 64 sub-blocks, or one absmax per block
    scales = 4 * math.ceil(blocks / 64) if codec.name == "uniform" else blocks
    slot = data.draw(st.integers(min_value=0, max_value=scales - 1))
    raw = bytearray(arrays[name].data)
    raw[4 * slot : 4 * slot + 4] = struct.pack("<f", value)
    reason = assert_rejected_or_sound(with_data(arrays, name, bytes(raw)), meta, codec)
    assert reason is not None and "NaN or Inf" in reason


config_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(min_value=-5, max_value=300), max_size=3),
    st.sampled_from(
        ["uniform", "fp16", "bnb-nf4", "qfd-update/2", "float32", "bfloat16"]
    ),
    st.sampled_from([1, 2, 3, 4, 8, 16, 32, 64, 256]),
)
meta_keys = st.one_of(
    st.sampled_from(["format", "codec", "bits", "block-size", "scale-dtype"]),
    st.text(max_size=12),
)


@FUZZ
@given(
    key=codec_keys,
    changes=st.dictionaries(meta_keys, config_values, max_size=4),
    drop=st.data(),
)
def test_wrong_metadata_is_rejected_or_sound(key, changes, drop):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    values = dict(meta)
    values.update(changes)
    for removed in drop.draw(st.lists(st.sampled_from(sorted(values)), max_size=2)):
        values.pop(removed, None)
    reason = assert_rejected_or_sound(arrays, ConfigRecord(values), codec)
    if reason is None:  # only the assigned codec and bit-width may pass
        assert (values["codec"], values["bits"]) == (codec.name, codec.bits)


@FUZZ
@given(
    key=codec_keys,
    name=tensor_names,
    dtype=st.one_of(
        st.sampled_from(["float32", "float16", "bfloat16", "float64"]),
        st.text(max_size=8),
    ),
    stype=st.one_of(
        st.sampled_from(["qfd:uniform", "qfd:fp16", "qfd:bnb-nf4"]), st.text(max_size=8)
    ),
    shape=st.lists(st.integers(min_value=-3, max_value=10**15), max_size=5),
)
def test_wrong_array_fields_are_rejected_or_sound(key, name, dtype, stype, shape):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    arrays = copy_arrays(arrays)
    arrays[name].dtype, arrays[name].stype, arrays[name].shape = (
        dtype,
        stype,
        tuple(shape),
    )
    assert_rejected_or_sound(arrays, meta, codec)


@FUZZ
@given(
    key=codec_keys,
    dims=st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=4),
)
def test_huge_declared_sizes_are_rejected_without_allocating(key, dims):
    codec = CODECS[key]
    arrays, meta = PAYLOADS[key]
    arrays = copy_arrays(arrays)
    arrays["conv.bias"].shape = tuple(dims)
    shapes = {**SHAPES, "conv.bias": tuple(dims)}  # even when the server expects it
    reason = assert_rejected_or_sound(arrays, meta, codec, shapes)
    if math.prod(dims) > 4:
        assert reason is not None and "truncated" in reason


@FUZZ
@given(
    names=st.lists(
        st.one_of(tensor_names, st.text(max_size=10)), max_size=5, unique=True
    ),
)
def test_missing_or_extra_tensors_are_rejected(names):
    codec = CODECS["uniform-4"]
    arrays, meta = PAYLOADS["uniform-4"]
    source = next(iter(arrays.values()))
    subset = ArrayRecord({n: arrays[n] if n in arrays else source for n in names})
    reason = assert_rejected_or_sound(subset, meta, codec)
    if set(names) != set(SHAPES):
        assert reason is not None and "differ from the model's" in reason


@pytest.mark.parametrize("key", sorted(CODECS))
def test_the_unmodified_payloads_decode(key):
    arrays, meta = PAYLOADS[key]
    assert assert_rejected_or_sound(arrays, meta, CODECS[key]) is None
