"""Pictures of a run: sample grids and plots of rounds.csv."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines and Ray workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from qfd_app.runs.ledger import read_csv  # noqa: E402


def save_grid(images: torch.Tensor, path: Path, ncol: int = 8, scale: int = 4) -> Path:
    """Tile images (N×C×H×W in [-1, 1]) into one PNG, each pixel
    `scale`× enlarged."""
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = torch.zeros((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1), dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[
            :,
            1 + r * (h + 1) : 1 + r * (h + 1) + h,
            1 + col * (w + 1) : 1 + col * (w + 1) + w,
        ] = images[i]
    array = grid.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(
        path,
        array[..., 0] if c == 1 else array,
        cmap="gray" if c == 1 else None,
        vmin=0,
        vmax=255,
    )
    return path


def plot_rounds(run_dir: Path) -> list[Path]:
    """Draw FID, train loss, device energy and uploaded bytes per round, and the bits
    each device was given, into `run_dir/plots/`."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)

    panels = [
        ("fid", "FID (feature CNN, held-out split)"),
        ("train_loss", "train loss (noise MSE)"),
        ("energy_j", "device energy per round (J)"),
        ("bytes_up", "uplink bytes per round"),
    ]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4 * len(panels), 3.2), constrained_layout=True
    )
    for ax, (name, label) in zip(axes, panels):
        x, y = _rounds(run_dir, name)
        ax.plot(x, y, marker="o", ms=3)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    path = out / "rounds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path, plot_bits(run_dir)]


def _rounds(run_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and values of one rounds.csv column, skipping empty cells
    (rounds not evaluated)."""
    rows = read_csv(Path(run_dir) / "rounds.csv")
    pairs = [
        (int(r["round"]), float(r[name])) for r in rows if r.get(name) not in ("", None)
    ]
    return np.array([p[0] for p in pairs], dtype=int), np.array(
        [p[1] for p in pairs], dtype=float
    )


def plot_bits(run_dir: Path, ax=None, title: str | None = None) -> Path | None:
    """Per-device bit assignments over rounds (one dot per trained device and round)."""
    rows = [
        d
        for d in read_csv(Path(run_dir) / "devices.csv")
        if int(d.get("bits") or 0) > 0
    ]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.2), constrained_layout=True)
    x = [int(d["round"]) for d in rows]
    y = [int(d["partition_id"]) for d in rows]
    c = [int(d["bits"]) for d in rows]
    points = ax.scatter(
        x, y, c=c, cmap="viridis", s=18, norm=matplotlib.colors.LogNorm(1, 32)
    )
    ax.set_xlabel("round")
    ax.set_ylabel("device (partition)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or "assigned bits per device", fontsize=10)
    ax.figure.colorbar(
        points, ax=ax, label="bits", ticks=[1, 2, 4, 8, 16, 32], format="%d"
    )
    if not own:
        return None
    path = Path(run_dir) / "plots" / "bits.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(runs: dict[str, Path], out: Path) -> list[Path]:
    """Energy, bytes, FID and bit assignments of several runs of one
    scenario, into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6), constrained_layout=True)
    for label, run in runs.items():
        x, energy = _rounds(run, "energy_j")
        line = axes[0].plot(x, energy, label=label)[0]
        axes[1].plot(x, np.cumsum(energy), label=label)
        x, up = _rounds(run, "bytes_up")
        axes[2].plot(x, up / 1e6, label=label)
        x, down = _rounds(run, "bytes_down")
        axes[3].plot(x, np.cumsum(up + down) / 1e6, color=line.get_color())
        axes[3].plot(x, np.cumsum(up) / 1e6, color=line.get_color(), ls=":")
    for ax, title in zip(
        axes,
        (
            "device energy per round (J)",
            "cumulative device energy (J)",
            "uplink MB per round",
            "cumulative MB: up + down (solid), up (dotted)",
        ),
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    paths.append(out / "energy_bytes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for label, run in runs.items():
        x_fid, fid = _rounds(run, "fid")
        x, energy = _rounds(run, "energy_j")
        spent = dict(zip(x.tolist(), np.cumsum(energy).tolist()))
        axes[0].plot(x_fid, fid, marker="o", ms=3, label=label)
        axes[1].plot([spent[r] for r in x_fid], fid, marker="o", ms=3, label=label)
    axes[0].set(title="FID vs round", xlabel="round", yscale="log")
    axes[1].set(
        title="FID vs cumulative device energy",
        xlabel="energy (J)",
        xscale="log",
        yscale="log",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10)
    axes[0].legend(fontsize=8)
    paths.append(out / "fid.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(
        1,
        len(runs),
        figsize=(4.6 * len(runs), 3.4),
        constrained_layout=True,
        squeeze=False,
    )
    for ax, (label, run) in zip(axes[0], runs.items()):
        plot_bits(run, ax=ax, title=label)
    paths.append(out / "bits.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def sample_grid_from_pipeline(
    model_dir: Path,
    out: Path,
    *,
    num: int,
    steps: int,
    seed: int,
    eps_scale: float = 1.0,
) -> Path:
    """Load an exported `DDPMPipeline`, draw `num` images with DDIM
    and save their grid."""
    from diffusers import DDPMPipeline

    from qfd_app.diffusion.ddpm import pick_device, sample

    pipeline = DDPMPipeline.from_pretrained(model_dir)
    images = sample(
        pipeline.unet,
        num,
        steps=steps,
        seed=seed,
        device=pick_device("auto"),
        eps_scale=eps_scale,
    )
    return save_grid(images, out)
