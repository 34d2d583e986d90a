"""The codec contract, the encoded form of one tensor, and the codec registry.

A codec turns one floating tensor into a flat byte buffer and back. Every codec

- knows its exact wire size from the shape alone (`size_bytes`), so the energy solver
  can price an upload without encoding anything;
- bounds its expected squared error (`error_bound`), which the
  solver's error budget uses;
- validates what it decodes and raises `PayloadError` for anything it did not produce
  (wrong length, non-finite scales, values that decode to NaN/Inf).

Codecs are looked up by name with `get_codec`; the modules that implement them are
imported on first use, so that `import qfd_app.quant` does not import bitsandbytes.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .registry import CODECS


class PayloadError(ValueError):
    """An encoded update (or one tensor of it) was rejected; the message says why.

    Raised by `decode_update` and by `Codec.decode` for malformed, inconsistent or
    hostile input. The server logs it against the device and carries on with the round.
    """


#: Floating dtypes a codec accepts, by the name the payload records (numpy spelling).
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {
    dtype: name for name, dtype in FLOAT_DTYPES.items()
}


@dataclass(frozen=True)
class Encoded:
    """One tensor as a codec encoded it.

    Attributes
    ----------
    codec : str
        Name of the codec that produced `buffer`.
    bits : int
        Bit-width of that codec.
    shape : tuple of int
        Shape of the original tensor.
    dtype : torch.dtype
        Floating dtype of the original tensor; `decode` returns this dtype.
    buffer : torch.Tensor
        1-D `uint8` tensor: everything that goes on the wire for this tensor. Its layout
        is the codec's (see each codec's docstring); its length is `size_bytes(shape)`.
    """

    codec: str
    bits: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    buffer: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes on the wire for this tensor (the length of `buffer`)."""
        return self.buffer.numel()

    @property
    def numel(self) -> int:
        """Number of values of the original tensor."""
        return math.prod(self.shape)


class Codec(ABC):
    """Base class of every codec: the contract the tests hold each one to.

    Subclasses set `name`, `stochastic` and `option_names`, store their resolved `bits`,
    and implement the four methods below.
    """

    #: Registry name, also written into the payload metadata.
    name: ClassVar[str]
    #: True when `encode` rounds at random (and then needs a generator); such a codec is
    #: unbiased: the mean of many encodings converges to the input.
    stochastic: ClassVar[bool]
    #: Keyword options the constructor takes besides `bits`, in snake_case.
    option_names: ClassVar[tuple[str, ...]] = ()

    bits: int

    def options(self) -> dict[str, int | str]:
        """The resolved options (defaults filled in), enough to rebuild this codec.

        ``get_codec(c.name, c.bits, **c.options())`` is equivalent to ``c``.
        """
        return {key: getattr(self, key) for key in self.option_names}

    @abstractmethod
    def encode(
        self, tensor: torch.Tensor, generator: torch.Generator | None = None
    ) -> Encoded:
        """Encode one floating tensor.

        Parameters
        ----------
        tensor : torch.Tensor
            Any shape, floating dtype, finite values, on any device
            (encoded on the CPU).
        generator : torch.Generator or None, default None
            A CPU generator, the source of randomness for stochastic rounding; required
            by stochastic codecs, ignored by deterministic ones.

        Returns
        -------
        Encoded
            With ``encoded.nbytes == self.size_bytes(tensor.shape)``.

        Raises
        ------
        ValueError
            If the tensor is not floating, holds NaN/Inf, or does not fit the codec's
            range (fp16 overflow), or a stochastic codec gets no generator.
        """

    def decode(self, encoded: Encoded) -> torch.Tensor:
        """Decode to a tensor of the original shape and dtype, on the CPU.

        The values are converted to the declared dtype first and checked after, so a
        payload whose finite float32 values overflow float16 is refused, not decoded
        to Inf.

        Raises
        ------
        PayloadError
            If the buffer has the wrong length, carries non-finite or invalid scales, or
            decodes to non-finite values in the declared dtype.
        """
        self._check_buffer(encoded)
        values = self._decode(encoded).reshape(encoded.shape).to(encoded.dtype)
        if not all_finite(values):
            raise PayloadError(
                "The tensor decodes to NaN or Inf values as "
                f"{DTYPE_NAMES.get(encoded.dtype, encoded.dtype)}."
            )
        return values

    @abstractmethod
    def _decode(self, encoded: Encoded) -> torch.Tensor:
        """The decoded values of a buffer `_check_buffer` accepted, in any floating
        dtype and any shape with `encoded.numel` values, never a view of the buffer;
        `decode` converts and checks them."""

    @abstractmethod
    def size_bytes(self, shape: Sequence[int]) -> int:
        """Exact number of bytes `encode` produces for a tensor of
        `shape` (no encoding)."""

    @abstractmethod
    def error_bound(self, tensor: torch.Tensor) -> float:
        """Upper bound on E‖decode(encode(x)) − x‖², summed over all
        values, for x = tensor."""

    def __repr__(self) -> str:
        opts = "".join(f", {key}={value!r}" for key, value in self.options().items())
        return f"get_codec({self.name!r}, bits={self.bits}{opts})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and (self.name, self.bits, self.options()) == (
            other.name,
            other.bits,
            other.options(),
        )

    def __hash__(self) -> int:
        return hash((self.name, self.bits, tuple(sorted(self.options().items()))))

    # -- helpers shared by the implementations -----------------------------------------

    def _check_dtype(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in DTYPE_NAMES:
            got = (
                tensor.dtype
                if isinstance(tensor, torch.Tensor)
                else type(tensor).__name__
            )
            raise ValueError(
                f"Codec {self.name!r} encodes floating tensors "
                f"({', '.join(FLOAT_DTYPES)}); got {got}."
            )

    def _flat_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` as a contiguous 1-D float32 CPU tensor, after checking its dtype."""
        self._check_dtype(tensor)
        return (
            tensor.detach()
            .reshape(-1)
            .to(device="cpu", dtype=torch.float32)
            .contiguous()
        )

    def _new_encoded(self, tensor: torch.Tensor, buffer: torch.Tensor) -> Encoded:
        return Encoded(self.name, self.bits, tuple(tensor.shape), tensor.dtype, buffer)

    def _check_buffer(self, encoded: Encoded) -> None:
        """Reject an `Encoded` that this codec cannot have produced."""
        if encoded.codec != self.name or encoded.bits != self.bits:
            raise PayloadError(
                f"Encoded by {encoded.codec!r} at {encoded.bits} bits, "
                f"but decoding with {self.name!r} at {self.bits} bits."
            )
        buffer = encoded.buffer
        if (
            not isinstance(buffer, torch.Tensor)
            or buffer.dtype != torch.uint8
            or buffer.dim() != 1
        ):
            raise PayloadError("The encoded buffer must be a 1-D uint8 tensor.")
        expected = self.size_bytes(encoded.shape)
        if buffer.numel() != expected:
            kind = "truncated" if buffer.numel() < expected else "oversized"
            raise PayloadError(
                f"Buffer is {kind}: {buffer.numel()} bytes, but {self.name} at "
                f"{self.bits} bits encodes shape {tuple(encoded.shape)} in exactly "
                f"{expected} bytes."
            )

    def _round_trip_error(self, tensor: torch.Tensor) -> float:
        """‖decode(encode(x)) − x‖² in float64: the error bound of a
        deterministic codec."""
        decoded = self.decode(self.encode(tensor))
        return float((decoded.double() - tensor.detach().cpu().double()).square().sum())


def all_finite(values: torch.Tensor) -> bool:
    """True when `values` holds no NaN or Inf.

    One reduction pass without a temporary: min and max propagate NaN and reach ±Inf,
    several times faster than ``isfinite(values).all()`` on large tensors.
    """
    if values.numel() == 0:
        return True
    low, high = torch.aminmax(values)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite_input(flat: torch.Tensor, codec_name: str) -> None:
    """Raise ValueError when an input to encode holds NaN or Inf (a diverged update)."""
    if not all_finite(flat):
        raise ValueError(
            f"Codec {codec_name!r} cannot encode NaN or Inf values; the "
            "update has diverged."
        )


# -- registry --------------------------------------------------------------------------


def codec_class(name: str) -> type[Codec]:
    """The class registered under `name` in `registry.CODECS`.

    Raises
    ------
    ValueError
        If no codec has that name; the message lists the valid names.
    """
    if name not in CODECS:
        raise ValueError(f"Unknown codec {name!r}; choose one of {', '.join(CODECS)}.")
    entry = CODECS[name]
    module = importlib.import_module(f"{__package__}.{entry.module}")
    return getattr(module, entry.cls)


def get_codec(name: str, bits: int | None = None, **options: Any) -> Codec:
    """Build a codec by name.

    Parameters
    ----------
    name : str
        One of `codec_names()`: ``uniform``, ``fp32``, ``fp16``, ``bf16``,
        ``bnb-blockwise8``, ``bnb-nf4``, ``bnb-fp4``.
    bits : int or None, default None
        Bit-width. Required for ``uniform`` (1–16). The other codecs have a fixed
        width (32, 16, 16, 8, 4, 4) and accept None or exactly that value.
    **options
        Codec options, e.g. ``block_size`` and ``scale_dtype`` for ``uniform``,
        ``block_size`` for the bitsandbytes codecs.

    Returns
    -------
    Codec

    Raises
    ------
    ValueError
        For an unknown name, a bit-width outside the codec's range, or an unknown or
        invalid option; the message names the parameter, the allowed
        values and the value.

    Examples
    --------
    >>> codec = get_codec("uniform", bits=4)
    >>> codec.size_bytes((3, 3))  # 9 codes of 4 bits, plus fp32 min and step
    13
    """
    cls = codec_class(name)
    unknown = sorted(set(options) - set(cls.option_names))
    if unknown:
        allowed = ", ".join(cls.option_names) or "none"
        raise ValueError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for codec {name!r}; "
            f"valid options: {allowed}."
        )
    return cls(bits=bits, **options)


def check_fixed_bits(name: str, bits: int | None, fixed: int) -> int:
    """Validate `bits` for a codec with one fixed width; returns that width."""
    if bits is not None and (isinstance(bits, bool) or bits != fixed):
        raise ValueError(
            f"The 'bits' parameter of codec {name!r} must be {fixed} (or "
            f"None). Got {bits!r}."
        )
    return fixed
