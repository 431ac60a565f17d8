"""Shared fixtures: real MP4s and real shards written by the tests themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from salt_cache.demo import make_demo_data


def write_video(path: Path, frames: int = 12, height: int = 48, width: int = 64, codec: str = "libx264",
                fps: int = 10, seed: int = 0, fmt: str | None = None) -> Path:
    """Write a real video file with PyAV: a moving gradient plus noise."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt or path.suffix.lstrip(".")) as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = height, width
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for t in range(frames):
            img = np.stack([(xx * 4 + t * 9) % 256, (yy * 4) % 256, np.full_like(xx, 40 * t % 256)], -1)
            img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """A small demo dataset (train/ and val/ shards), shared by the whole session."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, clips=48, size=32, frames=12, seed=0, shard_size=10)
    return out
