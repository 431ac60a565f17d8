"""Clips to encode: decode the planned views of each clip of an indexed shard inside
DataLoader workers.

Shards are indexed from their tar headers by `salt_cache.shards.index_shard` (webdataset's key
rule), so cache keys equal the `__key__` that Stage 2's webdataset stream sees. Workers read each
sample's bytes by offset, so a shard is never read twice and the DataLoader can keep the shard's
sample order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from salt_cache.errors import DecodeError, SaltCacheError
from salt_cache.shards.read import TarSample, read_member, read_meta
from salt_cache.spec import StudentViewsSpec
from salt_cache.video import (
    VIDEO_EXTENSIONS, ClipSpec, clip_info, decode_view_uint8, normalize_clip, normalize_frames, plan_view, view_crc,
)


@dataclass(frozen=True)
class ClipItem:
    """One clip to encode: which store it belongs to and where its sample lies."""

    store: int        # position of the store in this build's list of stores
    sample: int       # sample index inside its shard (row = sample * views + view)
    shard: str        # tar path
    tar: TarSample


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def load_clip(item: ClipItem, clip: ClipSpec, views: int, seed: int, student_views: StudentViewsSpec | None = None) -> dict:
    """Read, probe, plan and decode every view of one clip.

    Returns {"meta": JSON string, "views": [View dict | None] * views,
             "x": [float32 [C, T, S, S] | None] * views, "reasons": [str | None] * views,
             "frames": [[bytes] * T | None] * views, "digests": [int | None] * views,
             "crc": [int | None] * views}.
    With student-ready views, x is the normalized round trip of the stored frames (what the
    student will read back), "frames" the encoded frames and "digests" their pixels' CRC-32C
    (the view's digest); otherwise x normalizes `decode_view_uint8` of the source, "crc" is
    `view_crc` of those uint8 pixels and "frames" stay None.
    A failure is recorded per view with its reason; nothing raises for a bad clip."""
    out = {"meta": "{}", "views": [None] * views, "x": [None] * views, "reasons": [None] * views,
           "frames": [None] * views, "digests": [None] * views, "crc": [None] * views}
    stored = student_views if student_views is not None and student_views.stored else None

    def fail_all(reason: str) -> dict:
        out["reasons"] = [reason] * views
        return out

    tar = item.tar
    meta: dict = {}
    try:
        try:
            meta = read_meta(Path(item.shard), tar)
        except SaltCacheError as e:  # a record that is not JSON fails the clip, not the build
            return fail_all(str(e))
        if tar.meta_ext is not None:
            out["meta"] = json.dumps(meta, sort_keys=True, separators=(",", ":"))
        ext = tar.video_ext
        if ext is None:
            return fail_all(f"sample has no video member (expected one of {', '.join(VIDEO_EXTENSIONS)})")
        data = read_member(Path(item.shard), tar.members[ext])
        info = clip_info(meta, data, key=tar.key)
    except DecodeError as e:
        return fail_all(e.reason)
    except Exception as e:  # a broken file must cost one clip, never the build
        return fail_all(_one_line(e))
    expected = (3, clip.frames, clip.size, clip.size)
    for v in range(views):
        try:
            view = plan_view(tar.key, v, seed, info, clip)
            out["views"][v] = view.to_dict()
            pixels = decode_view_uint8(data, view)
            if stored is None:
                x = normalize_clip(pixels, view.mean, view.std)
            else:
                from salt_cache.cache.frames import round_trip

                items, frames, digest = round_trip(pixels.permute(1, 2, 3, 0).contiguous(), stored.format, stored.quality)
                x = normalize_frames(frames, view.mean, view.std)
            if tuple(x.shape) != expected:
                raise DecodeError(tar.key, f"decoded clip has shape {tuple(x.shape)}, expected {expected}")
            if not torch.isfinite(x).all():
                raise DecodeError(tar.key, "decoded clip has non-finite values")
            out["x"][v] = x
            if stored is None:
                out["crc"][v] = view_crc(pixels)
            else:
                out["frames"][v], out["digests"][v] = items, digest
        except DecodeError as e:
            out["reasons"][v] = e.reason
        except Exception as e:
            out["reasons"][v] = _one_line(e)
    return out


class ClipDataset(Dataset):
    """Map-style dataset over the clips of a build, in store then sample order; item i is
    `load_clip(items[i], ...)`. Holds only paths and offsets, so it forks and pickles cheaply."""

    def __init__(self, items: list[ClipItem], clip: ClipSpec, views: int, seed: int,
                 student_views: StudentViewsSpec | None = None):
        self.items, self.clip, self.views, self.seed = items, clip, views, seed
        self.student_views = student_views

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return load_clip(self.items[i], self.clip, self.views, self.seed, self.student_views)
