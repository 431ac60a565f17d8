"""Helpers shared by the cache tests (no tests here): a micro teacher, a small spec for the
`demo` fixture (32 px, 12 frames), reading a store's arrays back, comparing two caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import zarr

from salt_cache.checkpoint import save_encoder
from salt_cache.models import build_encoder

# 4 frames every 2nd, 32 px, patch 8, tubelet 2 -> grid 2 x 4 x 4 = 32 tokens; micro is 96 wide.
# rows_per_shard 4 so a store of 10 clips x 2 views spans 5 Zarr shards, the last one partial.
SPEC_YAML = """\
name: test32
clip: {{frames: 4, frame_step: 2, size: 32, crop: random-resized, scale: [0.5, 1.0], ratio: [0.75, 1.35]}}
views: {views}
seed: 0
patch_size: {patch}
tubelet_size: 2
storage: {{dtype: {dtype}, codec: {codec}, level: 3, rows_per_shard: 4}}
student_views: {{format: {frames}}}
"""
TOKENS, DIM = 32, 96


def write_spec(path: Path, views: int = 2, patch: int = 8, dtype: str = "float16", codec: str = "blosc-zstd",
               frames: str = "none") -> Path:
    """frames: student_views.format (none: Stage 2 decodes the source; jpeg or raw: stored views)."""
    path.write_text(SPEC_YAML.format(views=views, patch=patch, dtype=dtype, codec=codec, frames=frames))
    return path


def make_teacher(path: Path, seed: int = 0, patch: int = 8) -> Path:
    torch.manual_seed(seed)
    save_encoder(path, build_encoder("micro", patch_size=patch, tubelet_size=2), meta={"origin": "test", "seed": seed})
    return path


def store_names(cache: Path) -> list[str]:
    return sorted(json.loads((cache / "cache.json").read_text())["stores"])


def store_arrays(cache: Path, store: str) -> dict[str, np.ndarray]:
    """Every array of a store, as numpy (strings as object arrays)."""
    g = zarr.open_group(cache / "stores" / store, mode="r")
    return {name: np.asarray(g[name][...]) for name in
            ("latents", "key", "view_index", "view", "status", "reason", "stats", "checksum", "meta")}


def assert_same_cache(a: Path, b: Path) -> None:
    """Same stores, every array equal (latents byte for byte), equal store digests."""
    names = store_names(a)
    assert names == store_names(b)
    ma = json.loads((a / "cache.json").read_text())
    mb = json.loads((b / "cache.json").read_text())
    assert ma["cache_id"] == mb["cache_id"] and mb["status"] == "complete"
    for name in names:
        x, y = store_arrays(a, name), store_arrays(b, name)
        assert x["latents"].tobytes() == y["latents"].tobytes(), name
        for k in x:
            assert np.array_equal(x[k], y[k], equal_nan=k == "stats"), (name, k)
        # the digest covers every file of the store: the stores are identical on disk
        assert ma["stores"][name]["digest"] == mb["stores"][name]["digest"], name
