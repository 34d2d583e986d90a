"""Quantized local training: quantized forward, straight-through
gradients, plain restore."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qfd_app.diffusion.ddpm import build_unet, train_scheduler
from qfd_app.quant import (
    apply_fake_quant,
    fake_quantized,
    is_fake_quantized,
    remove_fake_quant,
)
from qfd_app.quant.fakequant import CLIP_FACTORS, CLIP_SEARCH_EVERY, GROUP_SIZE

CONV_AND_LINEAR = (nn.Conv2d, nn.Linear)


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return build_unet("tiny", 16)


def quantizable(model):
    """The layers that train quantized: every conv and linear but the
    first and the last."""
    return [m for m in model.modules() if isinstance(m, CONV_AND_LINEAR)][1:-1]


def groups_of(weight):
    """Each output channel's fan-in in consecutive groups of GROUP_SIZE, zero-padded:
    (groups, GROUP_SIZE)."""
    rows = weight.reshape(weight.shape[0], -1)
    pad = torch.zeros(rows.shape[0], -rows.shape[1] % GROUP_SIZE)
    return torch.cat([rows, pad], 1).reshape(-1, GROUP_SIZE)


def affine_grid(groups, bits, alpha):
    """Each group's min/max grid shrunk by `alpha`, zero exactly on it
    (an independent reference)."""
    levels = 2**bits - 1
    low, high = alpha * groups.amin(1).clamp(max=0), alpha * groups.amax(1).clamp(min=0)
    scale = ((high - low) / levels).clamp_min(torch.finfo(torch.float32).eps)
    zero_point = (-low / scale).round().clamp(0, levels).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(
        groups, scale, zero_point, 0, 0, levels
    )


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_forward_reads_weights_with_at_most_2_to_the_b_values_per_group(unet, bits):
    with fake_quantized(unet, bits):
        for module in quantizable(unet):
            # the parametrized (quantized) view
            groups = groups_of(module.weight.detach())
            assert max(len(torch.unique(group)) for group in groups) <= 2**bits
            assert module.parametrizations.weight.original.dtype == torch.float32


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_each_group_gets_the_clipped_grid_of_least_squared_error(unet, bits):
    """Against brute force over the clipping factors: never worse than min/max,
    and the best one."""
    gained = 0
    with fake_quantized(unet, bits):
        for module in quantizable(unet):
            master = groups_of(module.parametrizations.weight.original.detach())
            error = (groups_of(module.weight.detach()) - master).square().sum(1)
            candidates = torch.stack(
                [
                    (affine_grid(master, bits, a) - master).square().sum(1)
                    for a in CLIP_FACTORS.tolist()
                ]
            )
            torch.testing.assert_close(
                error, candidates.min(0).values, rtol=1e-5, atol=1e-12
            )
            # α = 1 is min/max
            assert torch.all(error <= candidates[0] * (1 + 1e-5) + 1e-12)
            gained += int((error < candidates[0] * (1 - 1e-3)).sum())
    assert gained > 0 or bits == 8  # at 2–4 bits clipping beats min/max somewhere


def least_error(groups, bits):
    """Per group, the least squared error of any clipped grid (brute force
    over CLIP_FACTORS)."""
    return (
        torch.stack(
            [
                (affine_grid(groups, bits, a) - groups).square().sum(1)
                for a in CLIP_FACTORS.tolist()
            ]
        )
        .min(0)
        .values
    )


def test_clipping_factors_are_searched_again_every_few_passes_and_kept_in_between(unet):
    bits = 3
    with fake_quantized(unet, bits):
        module = quantizable(unet)[2]
        quantizer, master = (
            module.parametrizations.weight[0],
            module.parametrizations.weight.original,
        )
        module.weight  # pass 1 searches
        kept = quantizer.alpha.clone()
        # reshape every group's spread, as training might over many steps
        with torch.no_grad():
            master.mul_(
                torch.linspace(0.1, 3.0, master.numel()).reshape(master.shape) ** 3
            )
        groups = groups_of(master.detach())
        kept_passes = 0
        # until the next search: the kept α, current weights
        while quantizer.forwards % CLIP_SEARCH_EVERY:
            torch.testing.assert_close(
                groups_of(module.weight.detach()),
                affine_grid(groups, bits, kept),
                rtol=0,
                atol=0,
            )
            kept_passes += 1
        # (registering the parametrization runs one pass)
        assert kept_passes >= CLIP_SEARCH_EVERY - 2
        assert torch.equal(quantizer.alpha, kept)
        searched = groups_of(module.weight.detach())  # this pass searches again
        error = (searched - groups).square().sum(1)
        torch.testing.assert_close(
            error, least_error(groups, bits), rtol=1e-5, atol=1e-12
        )
        assert not torch.equal(quantizer.alpha, kept)


def test_groups_quantize_more_finely_than_whole_channels(unet):
    """The point of groups: less error than the best clipped grid per output channel."""
    for bits in (2, 4):
        grouped = per_channel = 0.0
        with fake_quantized(unet, bits):
            for module in quantizable(unet):
                master = module.parametrizations.weight.original.detach()
                grouped += float((module.weight.detach() - master).square().sum())
                rows = master.reshape(master.shape[0], -1)
                per_channel += min(
                    float((affine_grid(rows, bits, a) - rows).square().sum())
                    for a in CLIP_FACTORS
                )
        assert grouped < 0.9 * per_channel


def test_every_conv_and_linear_weight_but_the_image_facing_ends_is_quantized(unet):
    count = apply_fake_quant(unet, 4)
    assert count == len(quantizable(unet)) > 0
    assert is_fake_quantized(unet)
    assert not parametrize.is_parametrized(
        unet.conv_in
    ) and not parametrize.is_parametrized(unet.conv_out)
    assert all(parametrize.is_parametrized(m, "weight") for m in quantizable(unet))
    remove_fake_quant(unet)
    assert not is_fake_quantized(unet)


def test_model_output_uses_the_quantized_weights(unet):
    sample, timestep = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        full = unet(sample, timestep).sample
        with fake_quantized(unet, 2):
            quantized = unet(sample, timestep).sample
        again = unet(sample, timestep).sample
    assert not torch.allclose(full, quantized)
    assert torch.equal(full, again)


def test_gradients_flow_straight_through_to_the_master_weights(unet):
    with fake_quantized(unet, 4):
        loss = (
            unet(torch.randn(2, 1, 16, 16), torch.tensor([3, 900]))
            .sample.square()
            .mean()
        )
        loss.backward()
        for module in quantizable(unet):
            grad = module.parametrizations.weight.original.grad
            assert (
                grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
            )


def test_restores_a_plain_state_dict_with_the_trained_master_weights(unet):
    # Prepare
    keys = list(unet.state_dict())
    parameters = list(unet.parameters())
    # built before: same Parameters
    optimizer = torch.optim.SGD(unet.parameters(), lr=0.1)
    # Execute
    with fake_quantized(unet, 2):
        unet(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])).sample.mean().backward()
        optimizer.step()
    # Assert
    assert list(unet.state_dict()) == keys
    assert all(a is b for a, b in zip(unet.parameters(), parameters, strict=True))
    weight = quantizable(unet)[0].weight
    assert len(torch.unique(weight[0])) > 4  # the float32 master, not its 2-bit image


def test_a_few_quantized_training_steps_reduce_the_loss(unet):
    # Prepare: one fixed batch, fixed noise and timesteps, so the loss is comparable
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(16, 1, 16, 16, generator=generator) * 2 - 1
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (16,), generator=generator)
    noisy = train_scheduler().add_noise(clean, noise, timesteps)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)

    def loss():
        return torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)

    # Execute
    with fake_quantized(unet, 4):
        initial = loss().item()
        for _ in range(8):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step()
        final = loss().item()
    # Assert
    assert final < 0.8 * initial


@pytest.mark.parametrize("bits", [16, 32])
def test_sixteen_bits_and_more_train_in_full_precision(unet, bits):
    assert apply_fake_quant(unet, bits) == 0
    assert not is_fake_quantized(unet)


def test_applying_twice_is_refused(unet):
    with (
        fake_quantized(unet, 4),
        pytest.raises(ValueError, match="already fake-quantized"),
    ):
        apply_fake_quant(unet, 4)


def test_the_model_is_restored_when_training_fails(unet):
    keys = list(unet.state_dict())
    with pytest.raises(RuntimeError, match="boom"), fake_quantized(unet, 4):
        raise RuntimeError("boom")
    assert list(unet.state_dict()) == keys and not is_fake_quantized(unet)


@pytest.mark.parametrize("bits", [0, -1, 2.5, True])
def test_invalid_bits_are_rejected(unet, bits):
    with pytest.raises(ValueError, match="'bits' parameter of fake quantization"):
        apply_fake_quant(unet, bits)
