"""Codecs for model updates, the update payload format, and quantized local training.

Encode a device's update at its assigned codec and bit-width, decode and validate it on the
server, count the bytes, and train with fake-quantized weights::

    from qfd_app.quant import get_codec, encode_update, decode_update, payload_bytes

    codec = get_codec("uniform", bits=4)
    arrays, meta = encode_update(update, codec, generator)          # on the device
    update = decode_update(arrays, meta, expected_codec="uniform",   # on the server
                           expected_bits=4, expected_shapes=shapes)
    bytes_up = payload_bytes(arrays)

Depends on torch, numpy, bitsandbytes (imported on first use of a `bnb-*` codec) and
Flower's records only.
"""

from .codec import Codec, Encoded, PayloadError, codec_names, get_codec
from .fakequant import (
    FULL_PRECISION_BITS,
    apply_fake_quant,
    fake_quantized,
    is_fake_quantized,
    remove_fake_quant,
)
from .payload import (
    decode_update,
    encode_update,
    expected_payload_bytes,
    metadata_bytes,
    payload_bytes,
)
from .uniform import block_ranges, default_block_size, uniform_error_bound

__all__ = [
    "FULL_PRECISION_BITS",
    "Codec",
    "Encoded",
    "PayloadError",
    "apply_fake_quant",
    "block_ranges",
    "codec_names",
    "decode_update",
    "default_block_size",
    "encode_update",
    "expected_payload_bytes",
    "fake_quantized",
    "get_codec",
    "is_fake_quantized",
    "metadata_bytes",
    "payload_bytes",
    "remove_fake_quant",
    "uniform_error_bound",
]
