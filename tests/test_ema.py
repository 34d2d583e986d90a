"""The moving average of the global models: diffusers' EMA schedule,
off at 0, resumable."""

import numpy as np
import pytest
import torch

from qfd_app.diffusion.ddpm import build_unet
from qfd_app.diffusion.ema import RoundAverage


def rounds_of_training(model, rounds, seed=0):
    """Global models after each round: random steps of the weights (a stand-in for
    federated rounds)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        yield {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return build_unet("tiny", 16)


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_the_average_follows_the_ema_recurrence_with_warmup(unet, decay):
    average = RoundAverage(unet, decay)
    expected = None
    for r, state in enumerate(rounds_of_training(unet, 12), start=1):
        out = average.update(unet)
        # independent statement of the schedule
        d = 0.0 if r == 1 else min(decay, r / (9 + r))
        w = state["conv_in.weight"].double().numpy()
        expected = w if expected is None else d * expected + (1 - d) * w
        np.testing.assert_allclose(
            out.state_dict()["conv_in.weight"].double().numpy(),
            expected,
            rtol=1e-5,
            atol=1e-5,
        )
    assert out is not unet and not torch.equal(out.conv_in.weight, unet.conv_in.weight)


def test_decay_0_is_the_global_model_itself(unet):
    average = RoundAverage(unet, 0.0)
    for _ in rounds_of_training(unet, 2):
        assert average.update(unet) is unet
    assert average.state() is None


def test_a_restored_average_goes_on_exactly_as_the_original(unet):
    original = RoundAverage(unet, 0.9)
    states = list(rounds_of_training(unet, 6))
    for state in states[:3]:
        unet.load_state_dict(state)
        original.update(unet)
    weights, rounds = original.state()
    resumed = RoundAverage(build_unet("tiny", 16), 0.9)
    resumed.restore({k: v.clone() for k, v in weights.items()}, rounds)
    for state in states[3:]:
        unet.load_state_dict(state)
        a, b = original.update(unet), resumed.update(unet)
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
