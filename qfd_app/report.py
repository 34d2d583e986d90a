"""Pictures of a run: sample grids and plots of rounds.csv."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines and Ray workers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from qfd_app.ledger import read_csv  # noqa: E402


def save_grid(images: torch.Tensor, path: Path, ncol: int = 8, scale: int = 4) -> Path:
    """Tile images (N×C×H×W in [-1, 1]) into one PNG, each pixel `scale`× enlarged."""
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = torch.zeros((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1), dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = images[i]
    array = grid.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, array[..., 0] if c == 1 else array, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
    return path


def plot_rounds(run_dir: Path) -> list[Path]:
    """Draw FID, diversity, train loss and uploaded bytes per round into `run_dir/plots/`."""
    run_dir = Path(run_dir)
    rows = read_csv(run_dir / "rounds.csv")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)

    def column(name):
        pairs = [(int(r["round"]), float(r[name])) for r in rows if r.get(name) not in ("", None)]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    panels = [
        ("fid", "FID (feature CNN, held-out split)"),
        ("train_loss", "train loss (noise MSE)"),
        ("bytes_up", "uplink bytes per round"),
        ("inception_score", "IS-like score"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), constrained_layout=True)
    for ax, (name, label) in zip(axes, panels):
        x, y = column(name)
        ax.plot(x, y, marker="o", ms=3)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    path = out / "rounds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def sample_grid_from_pipeline(model_dir: Path, out: Path, *, num: int, steps: int, seed: int) -> Path:
    """Load an exported `DDPMPipeline`, draw `num` images with DDIM and save their grid."""
    from diffusers import DDPMPipeline

    from qfd_app.ddpm import pick_device, sample

    pipeline = DDPMPipeline.from_pretrained(model_dir)
    images = sample(pipeline.unet, num, steps=steps, seed=seed, device=pick_device("auto"))
    return save_grid(images, out)
