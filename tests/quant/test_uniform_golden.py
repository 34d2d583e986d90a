"""`uniform` wire stability: encodings of fixed inputs and generator seeds must stay
byte-identical to the recorded ones (runs that measure FID depend on this exact
format), and so must their decodings and the coded ranges.

The digests live in uniform_golden.json. The inputs come from numpy's legacy
`RandomState`, whose streams never change; the rounding draws come from a seeded
`torch.Generator`. If a torch upgrade changes its random stream, every digest changes
at once: re-record them with ``python tests/quant/test_uniform_golden.py`` after
checking that the codec itself did not change.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qfd_app.quant import get_codec, range_sq_sums

SIZES = [1, 7, 47, 48, 49, 100, 3071, 3072, 3073, 6161, 261125]
SIZES_ALL_BITS = [1, 47, 49, 3073, 6161]  # every bit-width and option; the rest: b = 4
BITS = [1, 2, 3, 4, 8, 12, 16]
OPTIONS = [
    {},
    {"scale_dtype": "bfloat16"},
    {"block_size": 8},
    {"block_size": 64, "scale_dtype": "bfloat16"},
]
KINDS = ["normal", "scaled", "blocky", "extreme"]


def make_input(kind: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    """A deterministic tensor of n values of the given kind and dtype."""
    rng = np.random.RandomState(n * 7 + KINDS.index(kind))
    x = rng.standard_normal(n)
    if kind == "scaled":  # smooth change of scale and offset along the tensor
        x = x * np.linspace(0.01, 30, n) + np.linspace(-5, 5, n)
    elif kind == "blocky":  # runs of very different magnitudes, constants, zeros
        run = rng.randint(1, 200, size=n)
        x = x * 10.0 ** rng.uniform(-20, 10, size=n)[np.cumsum(run) % n]
        x[rng.rand(n) < 0.1] = 0.0
        x[n // 3 : n // 3 + 100] = 1.5
    elif kind == "extreme":  # subnormals, huge values, heavy tails
        x = x**5 * 10.0 ** rng.randint(-44, 30, size=n)
        x = np.clip(x, -1e36, 1e36)
    return torch.from_numpy(x.astype(np.float32)).to(dtype)


def cases():
    for n in SIZES:
        for kind in KINDS:
            for dtype in (torch.float32, torch.bfloat16):
                if dtype == torch.bfloat16 and kind == "extreme":
                    continue
                all_bits = n in SIZES_ALL_BITS
                for bits in BITS if all_bits else [4]:
                    for index, options in enumerate(OPTIONS if all_bits else [{}]):
                        yield n, kind, dtype, bits, index, options


def case_id(n, kind, dtype, bits, index, options):
    return f"{kind}-{n}-{str(dtype)[6:]}-b{bits}-o{index}"


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_case(n, kind, dtype, bits, index, options) -> str:
    """Digest of the buffer, the decoding and the coded ranges of one case."""
    codec = get_codec("uniform", bits, **options)
    x = make_input(kind, n, dtype)
    generator = torch.Generator().manual_seed(n + bits)
    encoded = codec.encode(x, generator)
    decoded = codec.decode(encoded)
    return digest(encoded.buffer, decoded.float(), codec.coded_ranges(x))


def record() -> dict[str, str]:
    return {case_id(*case): run_case(*case) for case in cases()}


GOLDEN_PATH = Path(__file__).with_name("uniform_golden.json")


def range_sq_sums_digest() -> dict[str, str]:
    update = {
        f"{kind}{n}": make_input(kind, n, torch.float32)
        for n in SIZES[-3:]
        for kind in KINDS
    }
    return {str(m): float(v).hex() for m, v in range_sq_sums(update).items()}


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN_PATH.read_text())


def test_every_case_has_a_recorded_digest(golden):
    assert sorted(golden["cases"]) == sorted(case_id(*case) for case in cases())


@pytest.mark.parametrize("case", list(cases()), ids=lambda case: case_id(*case))
def test_encoding_is_byte_identical_to_the_recorded_one(case, golden):
    assert run_case(*case) == golden["cases"][case_id(*case)]


def test_range_sq_sums_are_identical_to_the_recorded_ones(golden):
    assert range_sq_sums_digest() == golden["range_sq_sums"]


if __name__ == "__main__":  # re-record the digests
    torch.set_num_threads(1)
    data = {"cases": record(), "range_sq_sums": range_sq_sums_digest()}
    GOLDEN_PATH.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
