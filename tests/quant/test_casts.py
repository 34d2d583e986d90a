"""`fp32`, `fp16`, `bf16` specifics: equal to torch's casts, overflow refused."""

import pytest
import torch

from qfd_app.quant import get_codec


@pytest.mark.parametrize(
    "name, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_decoded_values_equal_torch_cast(name, dtype, generator):
    x = torch.randn(1000, generator=generator) * torch.logspace(-8, 4, 1000)
    decoded = get_codec(name).decode(get_codec(name).encode(x))
    assert torch.equal(decoded, x.to(dtype).float())


def test_fp32_is_bit_exact(generator):
    x = torch.randn(3, 5, 7, generator=generator)
    codec = get_codec("fp32")
    encoded = codec.encode(x)
    assert encoded.buffer.numpy().tobytes() == x.numpy().tobytes()
    assert torch.equal(codec.decode(encoded), x)
    assert codec.error_bound(x) == 0.0


def test_fp16_refuses_values_it_cannot_hold():
    with pytest.raises(ValueError, match="overflows.*7e\\+04"):
        get_codec("fp16").encode(torch.tensor([1.0, 7e4]))


def test_bf16_holds_float32_range():
    x = torch.tensor([1e30, -1e-30])
    assert torch.allclose(
        get_codec("bf16").decode(get_codec("bf16").encode(x)), x, rtol=1e-2
    )


def test_decoded_tensor_does_not_alias_the_buffer():
    codec = get_codec("fp32")
    encoded = codec.encode(torch.ones(4))
    decoded = codec.decode(encoded)
    decoded += 1  # must not write into the (possibly read-only) received bytes
    assert torch.equal(codec.decode(encoded), torch.ones(4))


@pytest.mark.parametrize("name, bits", [("fp32", 16), ("fp16", 8), ("bf16", 32)])
def test_bits_other_than_the_format_width_are_rejected(name, bits):
    with pytest.raises(ValueError, match=f"'bits' parameter of codec '{name}'"):
        get_codec(name, bits)
