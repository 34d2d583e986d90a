"""Quantized local training: weight-only, group-wise b-bit fake
quantization (DESIGN §3).

Every convolution and linear layer's weight but the first and the last is
re-parametrized (`torch.nn.utils.parametrize`): the module keeps its float32 weight
as the master copy in ``parametrizations.weight.original``, and each forward pass
reads the weight through `torch.fake_quantize_per_channel_affine` applied to groups
of `GROUP_SIZE` consecutive weights of one output channel (a channel's fan-in split
into groups, zero-padded at its end), i.e. rounded to 2^b levels per group, each group
with its own scale and zero point — the layout of llama.cpp's Q4_0 and of GPTQ/AWQ
group quantization. Backward passes the gradient straight through the rounding (the
straight-through estimator; it is zero where a value falls outside its group's grid), so
the optimizer updates the master copy with gradients of the quantized model.

Per group g, with ℓ_g = min(0, min w_g) and u_g = max(0, max w_g) so that zero is
exactly representable (as PyTorch's min/max observers do), and a clipping factor α_g:

    scale_g = max(α_g (u_g − ℓ_g) / (2^b − 1), ε)
    zero_point_g = clamp(round(−α_g ℓ_g / scale_g), 0, 2^b − 1)
    ŵ = (clamp(round(w/scale_g) + zero_point_g, 0, 2^b − 1) − zero_point_g)
        · scale_g

α_g is the one of `CLIP_FACTORS` (1 = min/max) whose grid gives the least squared error
Σ (ŵ − w)² on that group — the MSE calibration of quantization toolkits: at
2–4 bits a min/max grid spends its few levels on outliers. Measured on the default
run's round-30 model, one federated round of two devices training at 4 bits took FID
from 6.8 to 20.8 with per-channel min/max grids, 6.6 with per-channel clipped grids,
5.5 with clipped groups of 32, and 5.4 with fp32 training (docs/training-recipe.md).
The search runs on the first forward pass and then every `CLIP_SEARCH_EVERY` passes
(searched at every pass it made a 4-bit training step 29 % slower than fp32, against 4 %
with fixed min/max grids, docs/benchmarks.md; and a group's best α changes slowly); in
between, each group keeps its α while ℓ_g, u_g, scale and zero point follow the current
master weights at every forward. None of it carries a gradient. Biases, norms and
embeddings stay in float32 (weight-only). The first and the last layer (of a UNet: the
convolutions that read the image and write the predicted noise) stay in float32 too, as
is usual in quantization-aware training (DoReFa-Net, Zhou et al. 2016; PACT, Choi et al.
2018): at 4 bits, quantizing them as well took the default federated run from FID 19.9
to 55 (docs/training-recipe.md). b ≥ 16 trains in full precision: nothing is
parametrized.

Use it around local training; afterwards the model is plain again, with the same
state-dict keys and the trained float32 master weights::

    with fake_quantized(model, bits=4):
        train_local(model, images, ...)
    update = {k: v - global_state[k] for k, v in model.state_dict().items()}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

FULL_PRECISION_BITS = 16
GROUP_SIZE = 32  # weights per scale and zero point
# the α tried per group, largest first (ties keep min/max)
CLIP_FACTORS = torch.linspace(1.0, 0.3, 15)
CLIP_SEARCH_EVERY = 16  # forward passes between two searches for each group's α
_QUANTIZED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # not transposed convs
_MIN_SCALE = torch.finfo(torch.float32).eps  # as torch.ao's observers: no zero scale


class GroupWeightFakeQuant(nn.Module):
    """Parametrization: weight ↦ its b-bit fake quantization in groups of
    `GROUP_SIZE` per output channel.

    Parameters
    ----------
    bits : int
        Bit-width b, 1–15; the weight takes at most 2^b values per output channel.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        _check_bits(bits, upper=FULL_PRECISION_BITS - 1)
        self.bits = bits
        self.quant_max = (1 << bits) - 1
        # forward passes so far; the clipping factors are searched every
        # CLIP_SEARCH_EVERY
        self.forwards = 0
        # per group: the clipping factor of the last search
        self.alpha: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rows = weight.reshape(weight.shape[0], -1)  # (out channels, fan-in)
        fan_in = rows.shape[1]
        groups = nn.functional.pad(rows, (0, -fan_in % GROUP_SIZE)).reshape(
            -1, GROUP_SIZE
        )
        with torch.no_grad():  # the grid follows the weights but carries no gradient
            if self.forwards % CLIP_SEARCH_EVERY == 0:
                self.alpha = self.clip_factors(groups)
            self.forwards += 1
            scale, zero_point = self.grid(groups, self.alpha)
        quantized = torch.fake_quantize_per_channel_affine(
            groups, scale, zero_point.to(torch.int32), 0, 0, self.quant_max
        )
        return quantized.reshape(rows.shape[0], -1)[:, :fan_in].reshape(weight.shape)

    def grid(
        self, groups: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of each row of `groups` (G, size) for its
        clipping factor(s) `alpha`: shape (G,), or (A, 1) for A candidates per
        group, giving (A, G)."""
        low = alpha * groups.amin(-1).clamp(max=0)
        high = alpha * groups.amax(-1).clamp(min=0)
        scale = ((high - low) / self.quant_max).clamp_min(_MIN_SCALE)
        return scale, (-low / scale).round().clamp(0, self.quant_max)

    def clip_factors(self, groups: torch.Tensor) -> torch.Tensor:
        """Per row of `groups`: the first of `CLIP_FACTORS` whose grid has the
        least squared error."""
        groups = groups.detach().float()  # (G, size)
        alphas = CLIP_FACTORS.to(groups.device)
        scale, zero_point = self.grid(groups, alphas[:, None])  # (A, G)
        # (A, G, size)
        codes = (groups / scale[..., None]).round() + zero_point[..., None]
        error = (
            (codes.clamp(0, self.quant_max) - zero_point[..., None]) * scale[..., None]
            - groups
        ).square()
        return alphas[error.sum(-1).argmin(0)]

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def apply_fake_quant(model: nn.Module, bits: int) -> int:
    """Fake-quantize the weights of the conv/linear layers of `model` to `bits` bits,
    all but the first and the last (in registration order; a model with fewer than
    three keeps none out).

    Parameters
    ----------
    model : nn.Module
        Modified in place. The master weights stay the same `nn.Parameter` objects, so
        an optimizer built before or after this call updates them.
    bits : int
        b ≥ 1; b ≥ 16 means full precision and leaves the model untouched.

    Returns
    -------
    int
        The number of weights now fake-quantized (0 when b ≥ 16).

    Raises
    ------
    ValueError
        If `bits` is not an integer ≥ 1, or the model is already fake-quantized.
    """
    _check_bits(bits, upper=None)
    if is_fake_quantized(model):
        raise ValueError(
            "The model is already fake-quantized; call remove_fake_quant first."
        )
    if bits >= FULL_PRECISION_BITS:
        return 0
    layers = [
        module for module in model.modules() if isinstance(module, _QUANTIZED_TYPES)
    ]
    if len(layers) >= 3:
        layers = layers[1:-1]  # the image-facing layers stay in full precision
    for module in layers:
        quantizer = GroupWeightFakeQuant(bits)
        quantizer.parameter_order = tuple(module._parameters)  # restored on removal
        parametrize.register_parametrization(module, "weight", quantizer)
    return len(layers)


def remove_fake_quant(model: nn.Module) -> None:
    """Undo `apply_fake_quant`: plain float32 weights (the trained master copies) again.

    The state-dict keys, in their order, are those of the model before
    `apply_fake_quant`. A model without fake quantization is left as it is.
    """
    for module in model.modules():
        quantizer = _quantizer_of(module)
        if quantizer is None:
            continue
        # leave_parametrized=False restores `original`, the master copy, not its
        # quantized image; it re-registers `weight` last, so put the parameters back in
        # their order (state-dict order matters to whoever lists arrays by position)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        parameters = module._parameters
        reordered = [(name, parameters.pop(name)) for name in quantizer.parameter_order]
        parameters.update(reordered)


def is_fake_quantized(model: nn.Module) -> bool:
    """True when some weight of `model` is read through `GroupWeightFakeQuant`."""
    return any(_quantizer_of(module) is not None for module in model.modules())


def _quantizer_of(module: nn.Module) -> GroupWeightFakeQuant | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next(
        (
            p
            for p in module.parametrizations.weight
            if isinstance(p, GroupWeightFakeQuant)
        ),
        None,
    )


@contextmanager
def fake_quantized(model: nn.Module, bits: int) -> Iterator[nn.Module]:
    """Context manager: `apply_fake_quant` on entry,
    `remove_fake_quant` on exit (always).

    Examples
    --------
    >>> with fake_quantized(model, bits=4):  # doctest: +SKIP
    ...     loss = train_local(model, images, epochs=1, ...)
    """
    apply_fake_quant(model, bits)
    try:
        yield model
    finally:
        remove_fake_quant(model)


def _check_bits(bits: int, upper: int | None) -> None:
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int)
        or bits < 1
        or (upper is not None and bits > upper)
    ):
        allowed = (
            f"an integer in 1–{upper}"
            if upper
            else "an integer ≥ 1 (≥ 16: full precision)"
        )
        raise ValueError(
            "The 'bits' parameter of fake quantization must be "
            f"{allowed}. Got {bits!r}."
        )
