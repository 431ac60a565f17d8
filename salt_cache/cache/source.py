"""Clips to encode: index webdataset shards from their tar headers, and decode the planned
views of each clip inside DataLoader workers.

Samples are grouped exactly as webdataset groups them (`base_plus_ext`: the key is the member
path up to the first dot of its file name), so cache keys equal the `__key__` that Stage 2's
webdataset stream sees. Workers read each sample's bytes by offset, so a shard is never read
twice and the DataLoader can keep the shard's sample order.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from salt_cache.errors import DecodeError, SaltCacheError
from salt_cache.video import VIDEO_EXTENSIONS, ClipSpec, clip_info, decode_view, plan_view


@dataclass(frozen=True)
class Member:
    offset: int
    size: int


@dataclass(frozen=True)
class TarSample:
    """One sample of a shard: its key and where its members lie in the tar file."""

    key: str
    members: dict = field(default_factory=dict)  # extension (lower case) -> Member

    @property
    def video_ext(self) -> str | None:
        for ext in VIDEO_EXTENSIONS:
            if ext[1:] in self.members:
                return ext[1:]
        return None


def _split_key(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def index_shard(path: Path) -> list[TarSample]:
    """Samples of one tar shard in tar order, from the headers only (no member data is read).

    Raises SaltCacheError for an unreadable tar or a key that appears twice."""
    path = Path(path)
    samples: list[TarSample] = []
    seen: set[str] = set()
    try:
        with tarfile.open(path, "r:") as tf:
            current: TarSample | None = None
            for m in tf:
                if not m.isfile():
                    continue
                if re.match(r"__[^/]*__($|/)", m.name):  # webdataset's skip_meta
                    continue
                key, ext = _split_key(m.name)
                if key is None:
                    continue
                ext = ext.lower()
                if current is None or key != current.key:
                    if key in seen:
                        raise SaltCacheError(f"{path}: key {key!r} appears twice in this shard")
                    seen.add(key)
                    current = TarSample(key=key, members={})
                    samples.append(current)
                current.members[ext] = Member(m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SaltCacheError(f"{path}: unreadable shard ({e})") from None
    return samples


def read_member(path: Path, member: Member) -> bytes:
    with open(path, "rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise OSError(f"{path}: short read at offset {member.offset}")
    return data


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


def load_clip(item: ClipItem, clip: ClipSpec, views: int, seed: int) -> dict:
    """Read, probe, plan and decode every view of one clip.

    Returns {"meta": JSON string, "views": [View dict | None] * views,
             "x": [float32 [C, T, S, S] | None] * views, "reasons": [str | None] * views}.
    A failure is recorded per view with its reason; nothing raises for a bad clip."""
    out = {"meta": "{}", "views": [None] * views, "x": [None] * views, "reasons": [None] * views}

    def fail_all(reason: str) -> dict:
        out["reasons"] = [reason] * views
        return out

    tar = item.tar
    meta: dict = {}
    try:
        if "json" in tar.members:
            raw = read_member(Path(item.shard), tar.members["json"])
            try:
                meta = json.loads(raw)
            except ValueError as e:
                return fail_all(f"{tar.key}.json is not JSON ({e})")
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
            x = decode_view(data, view)
            if tuple(x.shape) != expected:
                raise DecodeError(tar.key, f"decoded clip has shape {tuple(x.shape)}, expected {expected}")
            if not torch.isfinite(x).all():
                raise DecodeError(tar.key, "decoded clip has non-finite values")
            out["x"][v] = x
        except DecodeError as e:
            out["reasons"][v] = e.reason
        except Exception as e:
            out["reasons"][v] = _one_line(e)
    return out


class ClipDataset(Dataset):
    """Map-style dataset over the clips of a build, in store then sample order; item i is
    `load_clip(items[i], ...)`. Holds only paths and offsets, so it forks and pickles cheaply."""

    def __init__(self, items: list[ClipItem], clip: ClipSpec, views: int, seed: int):
        self.items, self.clip, self.views, self.seed = items, clip, views, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return load_clip(self.items[i], self.clip, self.views, self.seed)
