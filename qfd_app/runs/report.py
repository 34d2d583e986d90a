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


def plot_comparison(rows: list[dict], summary: list[dict], out: Path) -> list[Path]:
    """Plots of a comparison's runs (`table.run_row` rows) and its summary over seeds:
    energy and bytes over rounds, FID against cumulative energy (a thin line per seed,
    the mean over seeds bold), bars of the means with their 95 % intervals, and the
    bits of each strategy's first run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    runs = {label: [Path(r["run_dir"]) for r in rows if r["strategy"] == label]
            for label in labels}  # fmt: skip
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), constrained_layout=True)
    for label, dirs in runs.items():
        curves = []
        for run in dirs:
            x, energy = _rounds(run, "energy_j")
            _, up = _rounds(run, "bytes_up")
            _, down = _rounds(run, "bytes_down")
            curves.append((x, np.cumsum(energy), np.cumsum(up), np.cumsum(up + down)))
        for ax, k in zip(axes, (1, 2, 3), strict=True):
            for curve in curves:
                ax.plot(curve[0], curve[k], color=colors[label], lw=0.6, alpha=0.5)
            x, mean = _mean_curve([(c[0], c[k]) for c in curves])
            ax.plot(x, mean, color=colors[label], lw=2, label=label)
    for ax, title in zip(
        axes,
        (
            "cumulative device energy (J)",
            "cumulative uplink bytes",
            "cumulative bytes, up + down",
        ),
        strict=True,
    ):
        ax.set(title=title, xlabel="round", yscale="log")
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    paths.append(out / "energy_bytes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for label, dirs in runs.items():
        by_round, by_energy = [], []
        for run in dirs:
            x_fid, fid = _rounds(run, "fid")
            x, energy = _rounds(run, "energy_j")
            spent = dict(zip(x.tolist(), np.cumsum(energy).tolist(), strict=True))
            joules = np.array([spent[r] for r in x_fid])
            axes[0].plot(x_fid, fid, color=colors[label], lw=0.6, alpha=0.5)
            axes[1].plot(joules, fid, color=colors[label], lw=0.6, alpha=0.5)
            by_round.append((x_fid, fid))
            by_energy.append((x_fid, joules))
        x, fid = _mean_curve(by_round)
        _, joules = _mean_curve(by_energy)
        axes[0].plot(x, fid, color=colors[label], lw=2, marker="o", ms=3, label=label)
        axes[1].plot(joules, fid, color=colors[label], lw=2, marker="o", ms=3)
    axes[0].set(title="FID vs round (thin: a seed; bold: the mean)", xlabel="round")
    axes[1].set(
        title="FID vs cumulative device energy", xlabel="energy (J)", xscale="log"
    )
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(10)
    axes[0].legend(fontsize=8)
    paths.append(out / "fid.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    shown = (
        ("energy_j", "device energy (J)", 1.0),
        ("bytes_total", "MB on the air, up + down", 1e-6),
        ("fid", "final FID", 1.0),
        ("kid", "final KID", 1.0),
        ("precision", "precision", 1.0),
        ("recall", "recall", 1.0),
    )
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6),
                             constrained_layout=True)  # fmt: skip
    for ax, (metric, title, scale) in zip(axes, shown, strict=True):
        cells = [next(r for r in summary if r["strategy"] == label
                      and r["metric"] == metric) for label in labels]  # fmt: skip
        means = np.array([c["mean"] for c in cells]) * scale
        errors = np.array([(c["high"] - c["low"]) / 2 for c in cells]) * scale
        ax.bar(range(len(labels)), means, color=[colors[x] for x in labels],
               yerr=np.nan_to_num(errors), capsize=4)  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{title}\n(mean, 95 % interval over seeds)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    paths.append(out / "bars.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels), 3.4),
                             constrained_layout=True, squeeze=False)  # fmt: skip
    for ax, label in zip(axes[0], labels, strict=True):
        plot_bits(runs[label][0], ax=ax, title=f"{label} (first seed)")
    paths.append(out / "bits.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple:
    """The mean over curves at the x values they all have."""
    common = sorted(set.intersection(*(set(x.tolist()) for x, _ in curves)))
    means = [np.mean([y[list(x).index(c)] for x, y in curves]) for c in common]
    return np.array(common), np.array(means)


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
