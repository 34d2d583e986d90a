"""Codecs for model updates, the update payload format, and quantized local training.

Encode a device's update at its assigned codec and bit-width, decode and validate it on
the server, count the bytes, and train with fake-quantized weights::

    from qfd_app.quant import get_codec, encode_update, decode_update, payload_bytes

    codec = get_codec("uniform", bits=4)
    arrays, meta = encode_update(update, codec, generator)          # on the device
    update = decode_update(arrays, meta, expected_codec="uniform",   # on the server
                           expected_bits=4, expected_shapes=shapes)
    bytes_up = payload_bytes(arrays)

Depends on torch, numpy, bitsandbytes (imported on first use of a `bnb-*` codec) and
Flower's records only. The names below load their module on first use, so that reading
the codec table (`qfd_app.quant.registry`: names, bit-widths, block
sizes) needs no torch.
"""

import importlib
from typing import Any

# public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys(("Codec", "Encoded", "PayloadError", "get_codec"), "codec"),
    **dict.fromkeys(("codec_bits", "codec_names", "default_block_size"), "registry"),
    **dict.fromkeys(
        (
            "FULL_PRECISION_BITS",
            "apply_fake_quant",
            "fake_quantized",
            "is_fake_quantized",
            "remove_fake_quant",
        ),
        "fakequant",
    ),
    **dict.fromkeys(
        (
            "decode_update",
            "encode_update",
            "expected_payload_bytes",
            "metadata_bytes",
            "payload_bytes",
        ),
        "payload",
    ),
    **dict.fromkeys(
        ("block_ranges", "range_sq_sums", "uniform_error_bound"), "uniform"
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
