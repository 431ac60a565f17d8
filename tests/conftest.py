"""Shared fixtures: real MP4s and real shards written by the tests themselves."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from salt_cache.demo import DemoConfig, make_demo_data


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
    make_demo_data(DemoConfig(out, clips=48, size=32, frames=12, seed=0, shard_size=10))
    return out


@pytest.fixture
def one_thread():
    """The 2-core CI box is shared: an oversubscribed OpenMP pool makes tiny forwards crawl.
    (Builds and training runs set their own count: cores minus DataLoader workers.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchrun_cli(tmp_path: Path, args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`salt-cache ARGS` under torchrun with `nproc` CPU processes (gloo), one thread each."""
    script = tmp_path / "salt_cache_cli.py"
    script.write_text("from salt_cache.cli import app\napp(prog_name='salt-cache')\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(script)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
