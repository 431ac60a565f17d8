"""Pictures for people: a grid of video frames, one row per (clip, kind of image)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_clip_grid(path: Path, rows: dict[str, torch.Tensor], title: str = "", max_frames: int = 8) -> Path:
    """Write a PNG grid.

    rows: {label: clips [N, C, T, H, W] in [0, 1]}, all of the same N and T. For each clip n the
    grid holds one row per label (in order); columns are up to `max_frames` evenly spaced frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    n, _, t = rows[labels[0]].shape[:3]
    frames = sorted({round(i * (t - 1) / max(1, min(t, max_frames) - 1)) for i in range(min(t, max_frames))})
    n_rows, n_cols = n * len(labels), len(frames)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols + 1.2, 1.3 * n_rows + 0.6), squeeze=False)
    for i in range(n):
        for j, label in enumerate(labels):
            r = i * len(labels) + j
            clip = rows[label][i].detach().float().clamp(0, 1).cpu()
            for c, f in enumerate(frames):
                ax = axes[r][c]
                ax.imshow(clip[:, f].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{label}" if j else f"clip {i}\n{label}", fontsize=8)
                if r == 0:
                    ax.set_title(f"t={f}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
