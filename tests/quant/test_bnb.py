"""bitsandbytes codecs: bit-exact against bitsandbytes, QuantState
round trip, CPU speed."""

import bitsandbytes.backends.default.ops as bnb_default_ops
import bitsandbytes.functional as bnbf
import pytest
import torch

from qfd_app.quant import PayloadError, get_codec
from qfd_app.quant.codec import Encoded

SHAPES = [(1,), (17,), (1000,), (33, 7), (8, 4, 3, 3), (16, 16, 3, 3), (5, 64)]
FOUR_BIT = ["bnb-nf4", "bnb-fp4"]


def bnb_reference(name, x, block_size):
    """bitsandbytes' own round trip of x in its original shape."""
    if name == "bnb-blockwise8":
        codes, state = bnbf.quantize_blockwise(x, blocksize=block_size)
        return bnbf.dequantize_blockwise(codes, state)
    codes, state = bnbf.quantize_4bit(x, blocksize=block_size, quant_type=name[-3:])
    return bnbf.dequantize_4bit(codes, state)


@pytest.mark.parametrize("name", ["bnb-blockwise8", *FOUR_BIT])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decode_matches_bitsandbytes_bit_for_bit(name, shape, generator):
    codec = get_codec(name)
    x = torch.randn(shape, generator=generator)
    ours = codec.decode(codec.encode(x))
    assert torch.equal(ours, bnb_reference(name, x, codec.block_size).reshape(shape))


@pytest.mark.parametrize("name", FOUR_BIT)
@pytest.mark.parametrize("n", [1, 17, 1000])
def test_restored_quant_state_equals_bitsandbytes_packed_state(name, n, generator):
    # Prepare: bitsandbytes' own state for the flattened, even-length input
    codec = get_codec(name)
    x = torch.randn(n, generator=generator)
    even = torch.cat([x, x.new_zeros(n % 2)])
    _, expected = bnbf.quantize_4bit(
        even, blocksize=codec.block_size, quant_type=name[-3:]
    )
    # Execute
    restored = codec.quant_state(codec.encode(x))
    # Assert: identical serialised form, tensor by tensor
    ours, theirs = restored.as_dict(packed=True), expected.as_dict(packed=True)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_restored_blockwise8_state_equals_bitsandbytes_state(generator):
    codec = get_codec("bnb-blockwise8")
    x = torch.randn(1000, generator=generator)
    _, expected = bnbf.quantize_blockwise(x, blocksize=codec.block_size)
    ours, theirs = codec.quant_state(codec.encode(x)).as_dict(), expected.as_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(ours[key], value), key
        else:
            assert ours[key] == value, key


@pytest.mark.parametrize("name", FOUR_BIT)
def test_odd_shapes_decode_without_the_compiled_fallback(name, monkeypatch, generator):
    # bitsandbytes sends odd last dimensions to a torch.compile'd function; make it fail
    def compiled_fallback(*args, **kwargs):
        raise AssertionError("took the torch.compile fallback")

    monkeypatch.setattr(bnb_default_ops, "_dequantize_4bit_compute", compiled_fallback)
    codec = get_codec(name)
    x = torch.randn(16, 8, 3, 3, generator=generator)
    # Sanity: bitsandbytes itself takes the fallback for this shape ...
    with pytest.raises(AssertionError, match="fallback"):
        bnb_reference(name, x, codec.block_size)
    # ... while the codec never does
    assert codec.decode(codec.encode(x)).shape == x.shape


@pytest.mark.parametrize("name", ["bnb-blockwise8", *FOUR_BIT])
def test_every_value_rounds_to_a_nearby_code(name, generator, code_table):
    # Each value lands within h·absmax of itself, h the farthest any point of [−1, 1]
    # lies from its nearest table entry: the codes are nearest-entry roundings. (The
    # 8-bit CPU kernel takes the second-nearest entry for ~0.15% of values close to a
    # midpoint, hence 1% slack.)
    codec = get_codec(name)
    x = torch.randn(4096, generator=generator)
    table = torch.sort(code_table(name).double()).values
    h = max(
        float(torch.diff(table).max()) / 2, float(table[0]) + 1, 1 - float(table[-1])
    )
    absmax = x.view(-1, codec.block_size).abs().amax(1, keepdim=True)
    error = (codec.decode(codec.encode(x)) - x).view(-1, codec.block_size).abs()
    assert torch.all(error <= h * absmax * 1.01)


@pytest.mark.parametrize("name", ["bnb-blockwise8", "bnb-nf4"])
@pytest.mark.parametrize(
    "value, message", [(float("nan"), "NaN or Inf"), (-1.0, "negative")]
)
def test_decode_rejects_invalid_absmax(name, value, message, generator):
    codec = get_codec(name)
    encoded = codec.encode(torch.randn(300, generator=generator))
    buffer = encoded.buffer.clone()
    buffer[:4].view(torch.float32)[0] = value
    with pytest.raises(PayloadError, match=message):
        codec.decode(
            Encoded(encoded.codec, encoded.bits, encoded.shape, encoded.dtype, buffer)
        )


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("bnb-nf4", {"bits": 8}, "'bits' parameter of codec 'bnb-nf4' must be 4"),
        ("bnb-blockwise8", {"bits": 4}, "must be 8"),
        (
            "bnb-nf4",
            {"block_size": 2048},
            "'block_size' parameter .* 32, 64, 128, 256, 512, 1024",
        ),
        ("bnb-blockwise8", {"block_size": 100}, "'block_size' parameter"),
    ],
)
def test_invalid_settings_are_rejected(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_codec(name, **options)


@pytest.mark.parametrize("name", FOUR_BIT)
def test_chunked_encoding_equals_one_bitsandbytes_call(name, monkeypatch, generator):
    import qfd_app.quant.bnb as bnb_module

    monkeypatch.setattr(bnb_module, "_CHUNK_VALUES", 1024)
    codec = get_codec(name)
    x = torch.randn(5001, generator=generator)
    even = torch.cat([x, x.new_zeros(1)])
    codes, state = bnbf.quantize_4bit(
        even, blocksize=codec.block_size, quant_type=name[-3:]
    )
    expected = torch.cat([state.absmax.view(torch.uint8), codes.view(-1)])
    assert torch.equal(codec.encode(x).buffer, expected)
