"""The evaluator scores every run on one scale, whatever the run's seed."""

import torch

from qfd_app.diffusion import ddpm
from qfd_app.diffusion.data import DataSpec
from qfd_app.diffusion.evaluation import Evaluator

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
