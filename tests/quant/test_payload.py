"""Update payloads: round trip through Flower's wire format, exact
bytes, every rejection."""

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common import serde
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from qfd_app.diffusion.ddpm import build_unet
from qfd_app.quant import (
    PayloadError,
    decode_update,
    encode_update,
    expected_payload_bytes,
    get_codec,
    metadata_bytes,
    payload_bytes,
)

CODECS = [
    ("uniform", 4, {}),
    ("uniform", 2, {"scale_dtype": "bfloat16"}),
    ("fp32", 32, {}),
    ("bf16", 16, {}),
    ("bnb-nf4", 4, {}),
]


@pytest.fixture(scope="module")
def unet_update():
    """A small update shaped like the tiny UNet's state-dict."""
    torch.manual_seed(0)
    state = build_unet("tiny", 16).state_dict()
    generator = torch.Generator().manual_seed(1)
    return {
        name: 1e-3 * torch.randn(t.shape, generator=generator)
        for name, t in state.items()
    }


@pytest.fixture(scope="module")
def shapes(unet_update):
    return {name: tuple(t.shape) for name, t in unet_update.items()}


def through_protobuf(arrays, meta):
    """Serialise both records to Flower's protobuf messages and back."""
    arrays = serde.array_record_from_proto(serde.array_record_to_proto(arrays))
    meta = serde.config_record_from_proto(serde.config_record_to_proto(meta))
    return arrays, meta


def through_object_store(arrays, meta):
    """Deflate both records into Flower's content-addressed objects (arrays travel in
    chunks) and inflate them again, as the SuperLink transport does."""

    def round_trip(record):
        contents = {
            oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()
        }
        return inflate_object_from_contents(record.object_id, contents)

    return round_trip(arrays), round_trip(meta)


def decode(arrays, meta, codec, shapes):
    return decode_update(
        arrays,
        meta,
        expected_codec=codec.name,
        expected_bits=codec.bits,
        expected_shapes=shapes,
    )


@pytest.mark.parametrize("transport", [through_protobuf, through_object_store])
@pytest.mark.parametrize("name, bits, options", CODECS)
def test_update_round_trips_through_flower_transport(
    name, bits, options, transport, unet_update, shapes, generator
):
    # Prepare
    codec = get_codec(name, bits, **options)
    # Execute
    arrays, meta = transport(*encode_update(unet_update, codec, generator))
    decoded = decode(arrays, meta, codec, shapes)
    # Assert: same names in model order, shapes, and the codec's own round trip
    assert list(decoded) == list(shapes)
    for key, tensor in unet_update.items():
        assert decoded[key].shape == tensor.shape and decoded[key].dtype == tensor.dtype
    error = sum(
        float((decoded[k] - t).double().square().sum()) for k, t in unet_update.items()
    )
    bound = sum(codec.error_bound(t) for t in unet_update.values())
    assert error <= 1.05 * bound + 1e-30


@pytest.mark.parametrize("name, bits, options", CODECS)
def test_payload_bytes_equal_the_size_formula(
    name, bits, options, unet_update, shapes, generator
):
    codec = get_codec(name, bits, **options)
    arrays, meta = encode_update(unet_update, codec, generator)
    assert payload_bytes(arrays) == expected_payload_bytes(codec, shapes)
    assert payload_bytes(arrays) == sum(codec.size_bytes(s) for s in shapes.values())
    assert expected_payload_bytes(codec, list(shapes.values())) == payload_bytes(arrays)
    assert 0 < metadata_bytes(arrays, meta) < 20_000


def test_four_bit_update_is_half_a_byte_per_parameter_plus_scales(
    unet_update, generator
):
    # 267,313 values in 152 tensors: codes ⌈n/2⌉ bytes, 16 bytes per super-block of
    # 3072 and 10 bits per sub-block of 48
    codec = get_codec("uniform", 4)
    arrays, _ = encode_update(unet_update, codec, generator)
    sizes = [t.numel() for t in unet_update.values()]
    supers = sum(-(-n // 3072) for n in sizes)
    sub_codes = sum(-(-(-(-n // 48)) * 10 // 8) for n in sizes)
    codes = sum(-(-n // 2) for n in sizes)
    assert payload_bytes(arrays) == codes + 16 * supers + sub_codes
    assert payload_bytes(arrays) / (sum(sizes) * 4 / 8) == pytest.approx(1.07, abs=0.01)


def test_metadata_describes_the_encoding(unet_update, generator):
    codec = get_codec("uniform", 3, scale_dtype="bfloat16")
    arrays, meta = encode_update(unet_update, codec, generator)
    assert dict(meta) == {
        "format": "qfd-update/2",
        "codec": "uniform",
        "bits": 3,
        "block-size": 48,
        "scale-dtype": "bfloat16",
    }
    name = next(iter(unet_update))
    assert arrays[name].stype == "qfd:uniform"
    assert arrays[name].dtype == "float32"
    assert tuple(arrays[name].shape) == tuple(unet_update[name].shape)


def test_encode_names_the_tensor_that_cannot_be_encoded(generator):
    update = {"ok": torch.ones(3), "bad": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ValueError, match="tensor 'bad'.*NaN"):
        encode_update(update, get_codec("uniform", 4), generator)


# -- rejections ------------------------------------------------------------------------


@pytest.fixture
def small():
    """A valid 4-bit payload of two tensors, as (arrays, meta, shapes)."""
    update = {"conv.weight": torch.randn(4, 2, 3, 3), "conv.bias": torch.randn(4)}
    arrays, meta = encode_update(update, get_codec("uniform", 4), torch.Generator())
    return arrays, meta, {k: tuple(v.shape) for k, v in update.items()}


def replaced(array, **fields):
    """A copy of `array` with some fields changed (set after construction, since
    Flower's constructor refuses some of the malformed values a hostile peer
    could still send)."""
    copy = Array(
        dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data
    )
    for key, value in fields.items():
        setattr(copy, key, value)
    return copy


def with_meta(meta, **changes):
    values = dict(meta)
    values.update({key.replace("_", "-"): value for key, value in changes.items()})
    return ConfigRecord({k: v for k, v in values.items() if v is not None})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(codec="gzip"), "Unknown codec 'gzip'"),
        (dict(codec="fp16"), "Codec 'fp16' differs from the assigned codec 'uniform'"),
        (dict(bits=8), "Bits 8 differ from the assigned bit-width 4"),
        (dict(bits="4"), "bits must be an integer"),
        (dict(bits=None), "missing key.*bits"),
        (dict(format="qfd-update/0"), "format 'qfd-update/0'"),
        (dict(block_size=100), "Invalid codec settings.*block_size"),
        (dict(block_size=None), "missing option.*block-size"),
        (dict(scale_dtype="float64"), "scale_dtype"),
        (dict(compression="zstd"), "unexpected key.*compression"),
    ],
)
def test_malformed_or_mismatched_metadata_is_rejected(small, change, message):
    arrays, meta, shapes = small
    with pytest.raises(PayloadError, match=message):
        decode_update(
            arrays,
            with_meta(meta, **change),
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )


def test_missing_and_extra_tensors_are_listed(small):
    arrays, meta, shapes = small
    tampered = ArrayRecord(
        {"conv.weight": arrays["conv.weight"], "other": arrays["conv.bias"]}
    )
    with pytest.raises(
        PayloadError, match="missing 1 tensor.*'conv.bias'.*unexpected.*'other'"
    ):
        decode_update(
            tampered,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(shape=(4, 2, 9)),
            r"shape \(4, 2, 9\) differs from the model's \(4, 2, 3, 3\)",
        ),
        (dict(shape=(4, 2, 3, 3.0)), "malformed shape"),
        (dict(dtype="int64"), "dtype 'int64'"),
        (dict(stype="numpy.ndarray"), "stype 'numpy.ndarray'"),
    ],
)
def test_inconsistent_array_fields_are_rejected(small, fields, message):
    arrays, meta, shapes = small
    arrays["conv.weight"] = replaced(arrays["conv.weight"], **fields)
    with pytest.raises(PayloadError, match="Tensor 'conv.weight': " + message):
        decode_update(
            arrays,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )


@pytest.mark.parametrize(
    "cut, word", [(-1, "truncated"), (-20, "truncated"), (5, "oversized")]
)
def test_truncated_or_oversized_buffers_are_rejected(small, cut, word):
    arrays, meta, shapes = small
    data = arrays["conv.weight"].data
    arrays["conv.weight"] = replaced(
        arrays["conv.weight"], data=data[:cut] if cut < 0 else data + bytes(cut)
    )
    with pytest.raises(PayloadError, match=f"buffer is {word}"):
        decode_update(
            arrays,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )


def test_nan_scales_are_rejected(small):
    arrays, meta, shapes = small
    data = bytearray(arrays["conv.bias"].data)
    data[4:8] = torch.tensor([float("nan")]).numpy().tobytes()  # the step of block 0
    arrays["conv.bias"] = replaced(arrays["conv.bias"], data=bytes(data))
    with pytest.raises(PayloadError, match="Tensor 'conv.bias': .*NaN or Inf"):
        decode_update(
            arrays,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=shapes,
        )


def test_a_huge_declared_shape_is_rejected_before_allocating(small):
    arrays, meta, shapes = small
    huge = {**shapes, "conv.bias": (10**12,)}
    arrays["conv.bias"] = replaced(arrays["conv.bias"], shape=(10**12,))
    with pytest.raises(
        PayloadError, match="truncated: 20 bytes.* exactly 531250000012"
    ):
        decode_update(
            arrays,
            meta,
            expected_codec="uniform",
            expected_bits=4,
            expected_shapes=huge,
        )


@pytest.mark.parametrize("arrays, meta", [(None, {}), ({"a": 1}, "meta")])
def test_records_of_the_wrong_type_are_rejected(arrays, meta):
    with pytest.raises(PayloadError):
        decode_update(
            arrays, meta, expected_codec="uniform", expected_bits=4, expected_shapes={}
        )
