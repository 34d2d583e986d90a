"""Fixtures shared by the codec tests: one thread, the codec list, seeded generators."""

import math

import pytest
import torch

from qfd_app.quant import get_codec

# Every codec the contract covers: uniform at every bit-width, bf16 scales and a custom
# block size, the casts and the bitsandbytes codecs.
CODEC_SPECS = [("uniform", bits, {}) for bits in range(1, 17)] + [
    ("uniform", 2, {"scale_dtype": "bfloat16"}),
    ("uniform", 5, {"scale_dtype": "bfloat16"}),
    ("uniform", 3, {"block_size": 8}),
    ("fp32", None, {}),
    ("fp16", None, {}),
    ("bf16", None, {}),
    ("bnb-blockwise8", None, {}),
    ("bnb-nf4", None, {}),
    ("bnb-fp4", None, {}),
    ("bnb-nf4", None, {"block_size": 32}),
]


def spec_id(spec):
    name, bits, options = spec
    return "-".join(
        [name] + ([str(bits)] if bits else []) + [f"{v}" for v in options.values()]
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run the codec tests on one thread, then restore the setting.

    Other work shares the 2-core CI machine; element-wise ops on two threads stall
    waiting for a busy core far more than they gain.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=CODEC_SPECS, ids=[spec_id(s) for s in CODEC_SPECS])
def codec(request):
    name, bits, options = request.param
    return get_codec(name, bits, **options)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def on_grid():
    """`on_grid(codec, n, generator)`: n float32 values the codec represents exactly."""
    return on_grid_tensor


def on_grid_tensor(codec, n, generator):
    """Values already on the codec's grid, so that decode(encode(x)) == x exactly.

    uniform: per block ℓ + q·δ with ℓ a multiple of 1/16 in [−8, 8], δ a
    power of two and q ∈ [0, L] including 0 and L (so the encoder finds this very
    ℓ and δ); all of it exact in float32 and in bfloat16 scales. Casts: multiples
    of 2^-8 below 1 (8 significant bits). bitsandbytes: block absmax a power of
    two times code-table entries, with the entry 1.0 in each block (so absmax
    is that power of two).
    """
    if codec.name == "uniform":
        levels = (1 << codec.bits) - 1
        m = codec.block_size
        blocks = -(-n // m)
        q = torch.randint(0, levels + 1, (blocks, m), generator=generator).double()
        q[:, 0], q[:, 1 % m] = 0, levels
        low = torch.randint(-128, 129, (blocks, 1), generator=generator).double() / 16
        step = 2.0 ** -torch.randint(2, 11, (blocks, 1), generator=generator).double()
        values = (low + q * step).view(-1)
        if n % m > 1:  # the short last block needs its own 0 and L too
            tail = (blocks - 1) * m
            values[tail] = low[-1, 0]
            values[tail + 1] = low[-1, 0] + levels * step[-1, 0]
        return values[:n].float()
    if codec.name in ("fp32", "fp16", "bf16"):
        return torch.randint(-255, 256, (n,), generator=generator).float() / 256
    table = codec_table(codec.name)
    if codec.name == "bnb-blockwise8":
        # bitsandbytes' CPU 8-bit kernel never emits the 9 entries nearest zero (zero
        # included: 0 decodes to ±2.1e-5·absmax), so they are not on its grid
        table = table[table.abs() > 1e-4]
    m = codec.block_size
    blocks = -(-n // m)
    picks = table[torch.randint(0, len(table), (blocks, m), generator=generator)]
    picks[:, 0] = 1.0
    scale = 2.0 ** torch.randint(-6, 4, (blocks, 1), generator=generator).float()
    values = (picks * scale).view(-1)[:n].clone()
    if n % m:
        values[(blocks - 1) * m] = scale[-1, 0]
    return values


@pytest.fixture
def code_table():
    """`code_table(name)`: the bitsandbytes code table of a `bnb-*` codec."""
    return codec_table


def codec_table(name):
    """The bitsandbytes code table of a `bnb-*` codec (256 or 16
    values in [−1, 1])."""
    import bitsandbytes.functional as bnbf

    if name == "bnb-blockwise8":
        return bnbf.create_dynamic_map()
    return bnbf.get_4bit_type(name.removeprefix("bnb-"), device="cpu")


@pytest.fixture
def assert_unbiased():
    """`assert_unbiased(codec, generator)`: the statistical unbiasedness check."""
    return check_unbiased


def check_unbiased(codec, generator, copies=1500):
    """The mean of many stochastic encodings converges to the input.

    K copies of x are encoded in one call (x spans whole blocks, so every copy gets the
    same scales and independent rounding). Each decoded value has standard deviation at
    most δ/2 (δ the block's step), so the mean of K has at most δ/(2√K):
    every per-value deviation must stay below 5.5 of those (Bonferroni over 1024
    values: P(false alarm) < 1e-4), and the average signed deviation in steps
    below 5/(2√(K·n)).
    """
    n = 4 * codec.block_size if codec.block_size <= 256 else 1024
    x = torch.randn(n, generator=torch.Generator().manual_seed(99))
    decoded = codec.decode(codec.encode(x.repeat(copies), generator)).view(copies, n)
    mean = decoded.double().mean(0)
    blocks = x.view(-1, codec.block_size)
    step = (blocks.amax(1) - blocks.amin(1)) / ((1 << codec.bits) - 1)
    # bf16 scales: wider
    step = (step * 1.05).repeat_interleave(codec.block_size).double()
    deviation = (mean - x.double()) / step  # in steps
    assert deviation.abs().max() <= 5.5 / (2 * math.sqrt(copies))
    assert abs(deviation.mean()) <= 5 / (2 * math.sqrt(copies * n))
