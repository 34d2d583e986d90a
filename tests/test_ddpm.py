"""The DDPM: presets, a training step that learns, DDIM sampling, pipeline export."""

import pytest
import scipy.stats
import torch
from diffusers import DDPMPipeline
from torch.optim.optimizer import register_optimizer_step_pre_hook

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.data import DataSpec

CPU = torch.device("cpu")


def test_tiny_preset_has_the_documented_size():
    params = sum(p.numel() for p in ddpm.build_unet("tiny", 16).parameters())
    assert params == 263_025


def test_paper_sized_preset_is_the_35_7m_ddpm():
    params = sum(
        p.numel() for p in ddpm.build_unet("ddpm-cifar10", 32, channels=3).parameters()
    )
    assert abs(params - 35.7e6) < 0.1e6


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="Unknown model preset 'huge'.*tiny"):
        ddpm.build_unet("huge", 16)


def test_local_training_reduces_the_denoising_loss():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    images = DataSpec().load_partition(0, 20).pixels[:128]
    model = ddpm.build_unet("tiny", 16)
    before = ddpm.denoising_loss(model, images, seed=1, device=CPU)
    mean_train_loss = ddpm.train_local(
        model, images, epochs=8, batch_size=32, learning_rate=2e-3, seed=0, device=CPU
    )
    after = ddpm.denoising_loss(model, images, seed=1, device=CPU)
    assert after < 0.6 * before
    assert 0 < mean_train_loss < before


def test_local_training_is_reproducible_from_its_seed():
    images = DataSpec().load_partition(1, 50).pixels[:32]
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ddpm.build_unet("tiny", 16)
        ddpm.train_local(
            model,
            images,
            epochs=1,
            batch_size=16,
            learning_rate=1e-3,
            seed=5,
            device=CPU,
        )
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_bf16_compute_trains_the_fp32_weights_through_bf16_convolutions():
    images = DataSpec().load_partition(4, 50).pixels[:64]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = ddpm.build_unet("tiny", 16)
        start = [p.detach().clone() for p in model.parameters()]
        seen = set()
        hooks = [
            m.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
            for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        loss = ddpm.train_local(
            model,
            images,
            epochs=2,
            batch_size=16,
            learning_rate=1e-3,
            seed=6,
            device=CPU,
            warmup_steps=4,
            compute_dtype=dtype,
        )
        for hook in hooks:
            hook.remove()
        assert seen == {dtype}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        update = torch.cat(
            [(p.detach() - s).flatten() for p, s in zip(model.parameters(), start)]
        )
        results[dtype] = loss, update
    (loss32, update32), (loss16, update16) = (
        results[torch.float32],
        results[torch.bfloat16],
    )
    # the same training up to bf16's rounding: close, not equal
    assert loss16 == pytest.approx(loss32, rel=0.02) and loss16 != loss32
    assert torch.nn.functional.cosine_similarity(update16, update32, dim=0) > 0.9


def _first_step_sizes(warmup_steps: int, learning_rate: float = 1e-3) -> torch.Tensor:
    """|Δw| of every weight after one AdamW step of `train_local`
    (one batch, one epoch)."""
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    before = [p.detach().clone() for p in model.parameters()]
    images = DataSpec().load_partition(2, 50).pixels[:8]
    ddpm.train_local(
        model,
        images,
        epochs=1,
        batch_size=8,
        learning_rate=learning_rate,
        seed=3,
        device=CPU,
        warmup_steps=warmup_steps,
    )
    return torch.cat(
        [(p.detach() - b).abs().flatten() for p, b in zip(model.parameters(), before)]
    )


def test_warmup_scales_the_first_step_by_one_over_its_length():
    # a fresh Adam's first step moves each weight by about the full
    # rate (m/sqrt(v) = ±1)
    full, warmed = _first_step_sizes(0), _first_step_sizes(10)
    assert full.max() == pytest.approx(1e-3, rel=0.02)  # (plus AdamW's weight decay)
    assert warmed.max() == pytest.approx(1e-4, rel=0.02)
    assert torch.equal(_first_step_sizes(1), full)  # one warmup step is no warmup


def _optimizer_steps(images: torch.Tensor, **train_kwargs) -> list[float]:
    """The L2 norm of the gradient each optimizer step of `train_local` applies."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        norms.append(
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        )

    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    handle = register_optimizer_step_pre_hook(record)
    try:
        ddpm.train_local(
            model, images, learning_rate=2e-3, seed=4, device=CPU, **train_kwargs
        )
    finally:
        handle.remove()
    return norms


def test_gradients_are_clipped_to_max_grad_norm():
    images = DataSpec().load_partition(3, 50).pixels[:64]
    free = _optimizer_steps(images, epochs=2, batch_size=16)
    bound = 0.5 * sorted(free)[len(free) // 2]  # below most unclipped norms
    clipped = _optimizer_steps(images, epochs=2, batch_size=16, max_grad_norm=bound)
    assert max(free) > bound
    # scaled down to the bound, not below
    assert max(clipped) == pytest.approx(bound, rel=1e-4)


def test_a_ragged_last_batch_is_left_out_unless_it_is_the_only_one():
    images = DataSpec().load_partition(3, 50).pixels
    # 40 = 2·16 + 8
    assert len(_optimizer_steps(images[:40], epochs=3, batch_size=16)) == 3 * 2
    # one short batch per epoch
    assert len(_optimizer_steps(images[:10], epochs=3, batch_size=16)) == 3


@pytest.mark.parametrize("count", [1, 7, 32, 450])
def test_training_timesteps_take_one_from_each_stratum_and_are_uniform_overall(count):
    generator = torch.Generator().manual_seed(count)
    draws = torch.stack(
        [ddpm._timesteps(count, generator) for _ in range(4000 // count + 200)]
    )
    # the k-th timestep lies in the k-th of `count` strata
    k = torch.arange(count, dtype=torch.float64)
    assert (draws >= (k * ddpm.NUM_TRAIN_TIMESTEPS / count).floor()).all()
    assert (draws < (k + 1) * ddpm.NUM_TRAIN_TIMESTEPS / count).all()
    # pooled over batches, every timestep is as likely as any other
    # (chi-square over 10 bins)
    counts = torch.bincount(
        draws.flatten() * 10 // ddpm.NUM_TRAIN_TIMESTEPS, minlength=10
    ).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_stratified_timesteps_steady_the_batch_mean_against_independent_draws():
    generator = torch.Generator().manual_seed(0)
    stratified = torch.stack(
        [ddpm._timesteps(32, generator).float().mean() for _ in range(2000)]
    )
    independent = torch.stack(
        [
            torch.randint(0, ddpm.NUM_TRAIN_TIMESTEPS, (32,), generator=generator)
            .float()
            .mean()
            for _ in range(2000)
        ]
    )
    # the same noise level on average...
    assert abs(stratified.mean() - independent.mean()) < 10
    # ...but 32 times steadier (1/12 / 32² against 1/12 / 32)
    assert stratified.var() < independent.var() / 10


def test_sampling_returns_images_in_range_and_is_seeded():
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    a = ddpm.sample(model, 5, steps=3, seed=2, device=CPU)
    b = ddpm.sample(model, 5, steps=3, seed=2, device=CPU)
    assert a.shape == (5, 1, 16, 16) and a.abs().max() <= 1
    assert torch.equal(a, b)


class _DividedAt:
    """Reference: `model` with its noise prediction at timestep t divided by
    1 + (λ − 1)·t/T."""

    def __init__(self, model, scale: float):
        self.model, self.scale, self.config = model, scale, model.config

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x, t):
        output = self.model(x, t)
        output.sample = output.sample / (
            1 + (self.scale - 1) * int(t) / ddpm.NUM_TRAIN_TIMESTEPS
        )
        return output


def test_epsilon_scaling_divides_the_noise_prediction_most_at_the_noisiest_steps():
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    expected = ddpm.sample(_DividedAt(model, 1.25), 4, steps=5, seed=3, device=CPU)
    assert torch.allclose(
        ddpm.sample(model, 4, steps=5, seed=3, device=CPU, eps_scale=1.25),
        expected,
        atol=1e-5,
    )
    assert not torch.allclose(
        ddpm.sample(model, 4, steps=5, seed=3, device=CPU), expected, atol=0.1
    )
    # a constant factor (the model's output layer scaled by 1/λ) is another sampler
    constant = ddpm.build_unet("tiny", 16)
    constant.load_state_dict(model.state_dict())
    with torch.no_grad():
        constant.conv_out.weight /= 1.25
        constant.conv_out.bias /= 1.25
    assert not torch.allclose(
        ddpm.sample(constant, 4, steps=5, seed=3, device=CPU), expected, atol=0.1
    )


def test_exported_pipeline_loads_with_diffusers_and_samples(tmp_path):
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    ddpm.export_pipeline(model, tmp_path / "final")
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "final")
    images = pipeline(batch_size=2, num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 1)
    for name, value in model.state_dict().items():
        assert torch.equal(pipeline.unet.state_dict()[name], value)


def test_cosine_learning_rate_decays_monotonically_from_peak_to_floor():
    rates = [ddpm.round_learning_rate(2e-3, r, 30, "cosine") for r in range(1, 31)]
    assert rates[0] == pytest.approx(2e-3) and rates[-1] == pytest.approx(
        2e-3 * ddpm.LR_FLOOR
    )
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert ddpm.round_learning_rate(2e-3, 7, 30, "constant") == 2e-3
