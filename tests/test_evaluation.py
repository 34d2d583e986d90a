"""The evaluator scores every run on one scale, whatever the run's seed."""

import math

import numpy as np
import pytest
import torch

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.data import DataSpec
from qfd_app.diffusion.evaluation import DRAWN, Evaluator

CPU = torch.device("cpu")


def test_scores_do_not_depend_on_the_run_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("QFD_CACHE_DIR", str(tmp_path))
    torch.set_num_threads(2)
    runs = [
        Evaluator(
            DataSpec(dataset="digits", seed=seed), num_samples=32, steps=2, device=CPU
        )
        for seed in (0, 5)
    ]
    assert torch.equal(runs[0].test.pixels, runs[1].test.pixels)
    assert runs[0].reference_fid == runs[1].reference_fid
    assert len(list(tmp_path.iterdir())) == 1  # one feature network, trained once
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    (scores_a, images_a), (scores_b, images_b) = runs[0](model), runs[1](model)
    assert torch.equal(images_a, images_b) and scores_a == scores_b
    # while the seed does draw the devices' data
    assert not torch.equal(
        *(
            DataSpec(dataset="digits", seed=s).load_partition(0, 4).pixels
            for s in (0, 5)
        )
    )


def test_the_final_evaluation_draws_fresh_noise_and_reports_mean_and_error(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("QFD_CACHE_DIR", str(tmp_path))
    torch.set_num_threads(2)
    evaluator = Evaluator(
        DataSpec(dataset="digits"), num_samples=32, steps=2, device=CPU
    )
    torch.manual_seed(0)
    model = ddpm.build_unet("tiny", 16)
    first, images = evaluator(model)
    assert 0 <= first["precision"] <= 1 and 0 <= first["recall"] <= 1
    summary, per_draw = evaluator.final(model, 3)
    # draw 0 is the per-round evaluation; the others sample other noise
    assert [per_draw[k][0] for k in DRAWN] == [first[k] for k in DRAWN]
    assert len(set(per_draw["fid"])) == 3
    _, second = evaluator(model, draw=1)
    assert not torch.equal(images, second)
    for key in DRAWN:
        xs = np.array(per_draw[key])
        assert summary[f"{key}_mean"] == pytest.approx(xs.mean())
        assert summary[f"{key}_se"] == pytest.approx(xs.std(ddof=1) / np.sqrt(3))
    # draw 0 handed in is not drawn again
    assert evaluator.final(model, 3, first=first) == (summary, per_draw)
    assert math.isnan(evaluator.final(model, 1, first=first)[0]["fid_se"])
