"""Inputs the loader and codec benchmarks make when none are given (no downloads, same bytes
every run): ViT-L-sized latent rows, and a 640 x 272 H.264 clip of a natural photograph.

- `latent_rows`: what a trained teacher's final-LayerNorm output looks like in the ways that
  matter to a codec: tokens share a low-rank structure (a clip's tokens are correlated), the
  LayerNorm's per-channel gain is spread over a decade (log-normal, sigma 0.5) with a few outlier
  channels (x8, as trained ViTs have), plus a per-channel bias. A random teacher's output is
  closer to i.i.d. and compresses even less. Synthetic: give `--cache` to measure real rows.
- `sample_video`: the photograph bundled with matplotlib (Grace Hopper, 512 x 600), upscaled and
  panned as a 640 x 272 window at 25 fps with mild noise, x264 CRF 23: the size, codec and
  bitrate class of the project's sample clips, whose decode cost (every frame up to the last
  one used) it reproduces.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch


def latent_rows(n: int, tokens: int = 1568, dim: int = 1024, seed: int = 0) -> torch.Tensor:
    """n synthetic rows -> float32 [n, tokens, dim] (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    gain = torch.exp(0.5 * torch.randn(dim, generator=g))
    gain[torch.randperm(dim, generator=g)[:4]] *= 8.0
    bias = 0.3 * torch.randn(dim, generator=g)
    basis = torch.randn(64, dim, generator=g)
    rows = []
    for _ in range(n):
        z = torch.randn(tokens, 64, generator=g) @ basis / 8 + 0.7 * torch.randn(tokens, dim, generator=g)
        rows.append(torch.nn.functional.layer_norm(z, (dim,)) * gain + bias)
    return torch.stack(rows)


def sample_video(path: Path, frames: int = 250, width: int = 640, height: int = 272, fps: int = 25) -> Path:
    """Write the sample clip (see the module docstring) to `path` unless it exists."""
    path = Path(path)
    if path.is_file():
        return path
    import av
    import matplotlib
    from PIL import Image

    photo = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    big = np.asarray(Image.open(photo).convert("RGB").resize((2 * width, 1500), Image.BICUBIC), dtype=np.float32)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width, s.pix_fmt = height, width, "yuv420p"
        s.options = {"crf": "23", "preset": "medium", "threads": "1"}
        for t in range(frames):
            y0 = int(200 + 150 * np.sin(t / 40))
            x0 = int(width // 2 + 250 * np.cos(t / 55))
            img = big[y0:y0 + height, x0:x0 + width] + rng.normal(0, 2, (height, width, 3))
            for p in s.encode(av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path
