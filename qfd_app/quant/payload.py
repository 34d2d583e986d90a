"""A model update ⇄ one Flower `ArrayRecord` plus a `ConfigRecord`
describing its encoding.

Format ``qfd-update/2``. The update (a state-dict of floating tensors, e.g.
Δ = w_local − w_global) is encoded tensor by tensor with one codec:

- `ArrayRecord`: one `Array` per tensor, keyed by the tensor's name, with
  ``dtype`` = the tensor's dtype ("float32", …), ``shape`` = its shape,
  ``stype`` = ``"qfd:<codec>"`` and ``data`` = the codec's buffer (`Encoded.buffer`),
  exactly `codec.size_bytes(shape)` bytes. Flower's own `Array.numpy()` refuses this
  stype, so nobody reads the bytes as a numpy array by mistake.
- `ConfigRecord`: ``format`` ("qfd-update/2"), ``codec`` (name), ``bits`` and the
  codec's options in kebab-case (``block-size``, ``scale-dtype`` for `uniform`;
  ``block-size`` for the bitsandbytes codecs) — everything needed to rebuild the
  codec, nothing defaulted.

Together they are self-describing: names, shapes and dtypes in the arrays, codec,
bits and block size in the config. `decode_update` trusts none of it: it checks
every field against the server's assignment and the global model's shapes, checks
every buffer length before reading it, and raises `PayloadError` with the reason; it
never returns NaN or Inf.

Bytes. `payload_bytes` counts the encoded data carried, which equals
`expected_payload_bytes(codec, shapes)` = Σ `codec.size_bytes(shape)`: the S_n(b) the
energy model charges (DESIGN §2). `metadata_bytes` counts the self-description (names,
dtype/stype strings, shapes, the config record), a fixed cost per model that a
deployment could cache; book it separately.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from .codec import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    Codec,
    Encoded,
    PayloadError,
    codec_class,
    get_codec,
)

FORMAT = "qfd-update/2"
STYPE_PREFIX = "qfd:"
_FIXED_KEYS = ("format", "codec", "bits")


def encode_update(
    update: Mapping[str, torch.Tensor],
    codec: Codec,
    generator: torch.Generator | None = None,
) -> tuple[ArrayRecord, ConfigRecord]:
    """Encode a state-dict of floating tensors with one codec.

    Parameters
    ----------
    update : mapping of str to torch.Tensor
        Typically the update Δ = w_local − w_global, keyed like
        the model's state-dict.
    codec : Codec
        From `get_codec`, e.g. ``get_codec("uniform", bits=4)``.
    generator : torch.Generator or None, default None
        Randomness for stochastic rounding; required by stochastic codecs (`uniform`).
        Tensors draw from it in the order of `update`.

    Returns
    -------
    (ArrayRecord, ConfigRecord)
        The encoded tensors and the description of their encoding (module text).

    Raises
    ------
    ValueError
        If a tensor is not floating or holds NaN/Inf (the message names it), or the
        codec needs a generator and got none.
    """
    arrays: dict[str, Array] = {}
    for name, tensor in update.items():
        try:
            encoded = codec.encode(tensor, generator)
        except ValueError as error:
            raise ValueError(f"Cannot encode tensor {name!r}: {error}") from error
        arrays[name] = Array(
            dtype=DTYPE_NAMES[tensor.dtype],
            shape=tuple(int(d) for d in tensor.shape),
            stype=STYPE_PREFIX + codec.name,
            data=encoded.buffer.numpy().tobytes(),
        )
    meta = {"format": FORMAT, "codec": codec.name, "bits": codec.bits}
    meta.update({_kebab(key): value for key, value in codec.options().items()})
    return ArrayRecord(arrays), ConfigRecord(meta)


def decode_update(
    arrays: ArrayRecord,
    meta: ConfigRecord,
    *,
    expected_codec: str,
    expected_bits: int,
    expected_shapes: Mapping[str, Sequence[int]],
) -> dict[str, torch.Tensor]:
    """Decode and validate one device's encoded update.

    Parameters
    ----------
    arrays : ArrayRecord
        As received (from `encode_update` on the device).
    meta : ConfigRecord
        As received.
    expected_codec : str
        The codec the server assigned to this device.
    expected_bits : int
        The bit-width the server assigned.
    expected_shapes : mapping of str to sequence of int
        The names and shapes the update must have (the global model's state-dict).

    Returns
    -------
    dict of str to torch.Tensor
        Finite CPU tensors in the order of `expected_shapes`, each in the dtype
        the device declared.

    Raises
    ------
    PayloadError
        With the reason, for: malformed metadata, unknown codec, codec or bits different
        from the assignment, invalid codec options, missing or extra tensors, a wrong
        shape, dtype or stype, a truncated or oversized buffer, NaN/Inf or invalid
        scales, values that decode to NaN/Inf.
    """
    codec = _codec_from_meta(meta, expected_codec, expected_bits)
    if not isinstance(arrays, Mapping):
        raise PayloadError(
            f"The update must be an ArrayRecord; got {type(arrays).__name__}."
        )
    _check_names(arrays.keys(), expected_shapes.keys())
    decoded = {}
    for name, shape in expected_shapes.items():
        decoded[name] = _decode_tensor(
            name, arrays[name], codec, tuple(int(d) for d in shape)
        )
    return decoded


def payload_bytes(arrays: ArrayRecord) -> int:
    """Bytes of encoded tensor data an update carries: Σ len(array.data).

    For an update that passed `decode_update` this equals
    ``expected_payload_bytes(codec, shapes)``; it is what the ledger books as bytes up.
    """
    return sum(len(array.data) for array in arrays.values())


def metadata_bytes(arrays: ArrayRecord, meta: ConfigRecord) -> int:
    """Bytes of the update's self-description, counted as Flower counts record contents.

    Per tensor: its name, dtype and stype strings and 8 bytes per dimension; plus
    `ConfigRecord.count_bytes()` of `meta`.
    """
    per_tensor = sum(
        len(name) + len(array.dtype) + len(array.stype) + 8 * len(array.shape)
        for name, array in arrays.items()
    )
    return per_tensor + meta.count_bytes()


def expected_payload_bytes(
    codec: Codec, shapes: Mapping[str, Sequence[int]] | Iterable[Sequence[int]]
) -> int:
    """Exact encoded bytes of an update with these tensor shapes:
    Σ codec.size_bytes(shape).

    Parameters
    ----------
    codec : Codec
    shapes : mapping of name to shape, or iterable of shapes
        E.g. ``{k: v.shape for k, v in model.state_dict().items()}``.
    """
    if isinstance(shapes, Mapping):
        shapes = shapes.values()
    return sum(codec.size_bytes(tuple(shape)) for shape in shapes)


# -- validation ------------------------------------------------------------------------


def _codec_from_meta(
    meta: ConfigRecord, expected_codec: str, expected_bits: int
) -> Codec:
    """Rebuild the codec `meta` describes, after checking it against the assignment."""
    if not isinstance(meta, Mapping):
        raise PayloadError(
            f"The metadata must be a ConfigRecord; got {type(meta).__name__}."
        )
    missing = [key for key in _FIXED_KEYS if key not in meta]
    if missing:
        raise PayloadError(f"Malformed metadata: missing key(s) {', '.join(missing)}.")
    if not isinstance(meta["format"], str) or meta["format"] != FORMAT:
        raise PayloadError(
            f"Malformed metadata: format {meta['format']!r} is not {FORMAT!r}."
        )
    name, bits = meta["codec"], meta["bits"]
    if not isinstance(name, str):
        raise PayloadError(f"Malformed metadata: codec must be a string; got {name!r}.")
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise PayloadError(
            f"Malformed metadata: bits must be an integer; got {bits!r}."
        )
    try:
        cls = codec_class(name)
    except ValueError as error:
        raise PayloadError(str(error)) from error
    if name != expected_codec:
        raise PayloadError(
            f"Codec {name!r} differs from the assigned codec {expected_codec!r}."
        )
    if bits != expected_bits:
        raise PayloadError(
            f"Bits {bits} differ from the assigned bit-width {expected_bits}."
        )
    option_keys = {_kebab(option): option for option in cls.option_names}
    unknown = sorted(map(repr, set(meta) - set(_FIXED_KEYS) - set(option_keys)))
    absent = sorted(set(option_keys) - set(meta))
    problems = []
    if unknown:
        problems.append(f"unexpected key(s) {', '.join(unknown)}")
    if absent:
        problems.append(f"missing option(s) {', '.join(absent)}")
    if problems:
        raise PayloadError(
            f"Malformed metadata for codec {name!r}: {'; '.join(problems)}."
        )
    options = {option: meta[key] for key, option in option_keys.items()}
    try:
        return get_codec(name, bits, **options)
    except (ValueError, TypeError) as error:
        raise PayloadError(f"Invalid codec settings: {error}") from error


def _check_names(received: Iterable[str], expected: Iterable[str]) -> None:
    received, expected = list(received), list(expected)
    received_set, expected_set = set(received), set(expected)
    missing = [name for name in expected if name not in received_set]
    extra = [name for name in received if name not in expected_set]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) ({_preview(missing)})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s) ({_preview(extra)})")
        raise PayloadError(
            f"The update's tensors differ from the model's: {'; '.join(parts)}."
        )


def _decode_tensor(
    name: str, array: object, codec: Codec, shape: tuple[int, ...]
) -> torch.Tensor:
    try:
        encoded = _encoded_from_array(array, codec, shape)
        return codec.decode(encoded)
    except PayloadError as error:
        raise PayloadError(f"Tensor {name!r}: {error}") from error
    except Exception as error:  # noqa: BLE001
        # a hostile payload must not crash the server
        raise PayloadError(
            f"Tensor {name!r}: the decoder failed unexpectedly "
            f"({type(error).__name__}: {error})."
        ) from error


def _encoded_from_array(array: object, codec: Codec, shape: tuple[int, ...]) -> Encoded:
    if not isinstance(array, Array):
        raise PayloadError(f"expected a flwr Array; got {type(array).__name__}.")
    stype = STYPE_PREFIX + codec.name
    if array.stype != stype:
        raise PayloadError(f"stype {array.stype!r} is not {stype!r}.")
    if array.dtype not in FLOAT_DTYPES:
        raise PayloadError(
            f"dtype {array.dtype!r} is not one of {', '.join(FLOAT_DTYPES)}."
        )
    declared = array.shape
    if not isinstance(declared, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in declared
    ):
        raise PayloadError(f"malformed shape {declared!r}.")
    if tuple(declared) != shape:
        raise PayloadError(f"shape {tuple(declared)} differs from the model's {shape}.")
    data = array.data
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"data must be bytes; got {type(data).__name__}.")
    expected = codec.size_bytes(shape)
    if len(data) != expected:  # checked before anything is allocated or read
        kind = "truncated" if len(data) < expected else "oversized"
        raise PayloadError(
            f"buffer is {kind}: {len(data)} bytes, but {codec.name} at {codec.bits} "
            f"bits encodes shape {shape} in exactly {expected} bytes."
        )
    return Encoded(
        codec.name, codec.bits, shape, FLOAT_DTYPES[array.dtype], _as_tensor(data)
    )


def _as_tensor(data: bytes | bytearray) -> torch.Tensor:
    """Zero-copy uint8 view of `data`; codecs only read it and return fresh tensors."""
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(data, dtype=torch.uint8)


def _kebab(option: str) -> str:
    return option.replace("_", "-")


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", … {len(names) - limit} more" if len(names) > limit else "")
