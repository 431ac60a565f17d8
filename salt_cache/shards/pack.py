"""Packing videos into webdataset tar shards (`salt-cache shards`).

Each sample is `<key>.<ext>` (the original bytes, untouched) plus `<key>.json` (source path,
label, frames, fps, height, width as probed with decord). Keys come from the path relative to
the source folder or the manifest's folder (absolute manifest paths outside it: relative to
their common folder), so the same data packed on another machine gets the same keys; they hold
no dot, so they read back the same under webdataset's key rule (`salt_cache.shards.read`).

Sources are packed in a seeded random order (the seed is in index.json): a sorted folder walk
gives single-class shards, which a training shuffle buffer of a few hundred samples cannot mix.
At most a small window of probes is in flight, and each result is dropped once written, so
memory does not grow with the number of videos.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from salt_cache.config import path_field
from salt_cache.errors import DecodeError, SaltCacheError
from salt_cache.shards.read import INDEX_NAME
from salt_cache.video import VIDEO_EXTENSIONS, VideoInfo, probe_video

SHARD_PATTERN = "shard-{:06d}.tar"
REJECTED_NAME = "rejected.jsonl"
PROBE_TIMEOUT_S = 60.0


@dataclass
class Source:
    path: Path
    rel: str
    label: object = None


@dataclass
class PackSummary:
    out: Path
    shards: list[dict] = field(default_factory=list)
    packed: int = 0
    rejected: list[dict] = field(default_factory=list)


def list_sources(src: Path) -> list[Source]:
    """A folder (recursive, video extensions) or a CSV / JSONL manifest with `path` and optional
    `label`. Relative manifest paths are taken from the manifest's folder."""
    src = Path(src)
    if not src.exists():
        raise SaltCacheError(f"{src}: no such file or folder")
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        return [Source(p, p.relative_to(src).as_posix()) for p in files]
    rows = _read_manifest(src)
    home = src.parent.resolve()
    out, outside = [], []
    for i, row in enumerate(rows, start=1):
        if not row.get("path"):
            raise SaltCacheError(f"{src}: row {i} has no 'path'")
        p = Path(row["path"])
        full = p if p.is_absolute() else src.parent / p
        label = row.get("label")
        if label in ("", None):
            label = None
        elif isinstance(label, str) and re.fullmatch(r"-?\d+", label):
            label = int(label)
        rel = _relative(full, home)
        if rel is None:
            outside.append(len(out))
        out.append(Source(full, rel or "", label))
    if outside:
        # absolute paths outside the manifest's folder: relative to their deepest common folder
        resolved = [os.path.abspath(out[j].path) for j in outside]
        base = os.path.commonpath([os.path.dirname(r) for r in resolved])
        for j, r in zip(outside, resolved):
            out[j].rel = Path(os.path.relpath(r, base)).as_posix()
    return out


def _relative(path: Path, home: Path) -> str | None:
    """`path` relative to folder `home` (posix), or None when it lies outside."""
    try:
        return Path(os.path.abspath(path)).relative_to(home).as_posix()
    except ValueError:
        return None


def _read_manifest(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise SaltCacheError(f"{path}: expected a CSV header with a 'path' column")
            return list(reader)
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path) as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise SaltCacheError(f"{path}: line {i} is not JSON ({e.msg})") from None
        return rows
    raise SaltCacheError(f"{path}: expected a folder, a .csv or a .jsonl manifest")


def make_keys(rels: list[str]) -> list[str]:
    """Tar-safe unique keys from relative paths: no dots (webdataset splits keys at the first
    dot), only [A-Za-z0-9_-]; a collision after cleaning gets a short hash of the full path."""
    keys, seen = [], set()
    for rel in rels:
        stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
        key = re.sub(r"[^A-Za-z0-9_-]", "_", stem.replace("/", "__")) or "clip"
        if key in seen:
            key = f"{key}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        seen.add(key)
        keys.append(key)
    return keys


def _probe_file(path: str) -> tuple[bytes, VideoInfo]:
    data = Path(path).read_bytes()
    return data, probe_video(data, key=path)


def _probe_all(sources: list[Source], workers: int, timeout: float,
               window: int | None = None) -> Iterator[tuple[Source, object]]:
    """Yield (source, (bytes, info) or reason) in input order. Each probe runs in a separate
    process with a time bound, so a decoder that hangs or crashes costs one file, not the run.
    At most `window` probes are scheduled ahead of the one being written, and a result is
    dropped as soon as it is yielded: memory holds a few videos, not the dataset."""
    from pebble import ProcessPool

    workers = max(1, workers)
    window = window or 4 * workers
    with ProcessPool(max_workers=workers) as pool:
        todo = iter(sources)
        pending: deque = deque()

        def top_up() -> None:
            while len(pending) < window:
                s = next(todo, None)
                if s is None:
                    return
                pending.append((s, pool.schedule(_probe_file, args=(str(s.path),), timeout=timeout)))

        top_up()
        while pending:
            s, fut = pending.popleft()
            top_up()
            yield s, _outcome(fut, timeout)
            del fut  # a kept future would hold its video bytes until the end


def _outcome(fut, timeout: float) -> object:
    """A probe future -> (bytes, info), or the reason it failed."""
    try:
        return fut.result()
    except DecodeError as e:
        return e.reason
    except FutureTimeout:
        return f"probe timed out after {timeout:.0f} s"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    except Exception as e:  # a worker killed by a crashing decoder lands here
        return f"probe failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


@dataclass(frozen=True)
class ShardsConfig:
    """`salt-cache shards` and the recipe kind shards: videos `src` (a folder or a CSV / JSONL
    manifest) packed into `out`, `shard_size` samples per shard, probed by `workers` processes
    with a `timeout` each; `overwrite` replaces a non-empty `out`."""

    src: Path = path_field()
    out: Path = path_field()
    shard_size: int = 100
    workers: int = 2
    overwrite: bool = False
    timeout: float = PROBE_TIMEOUT_S
    seed: int = 0
    shuffle: bool = True


def is_packed(out: Path) -> bool:
    """`out` holds a finished packing (its index.json is written last)."""
    return (Path(out) / INDEX_NAME).is_file()


def write_shards(config: ShardsConfig, progress=None) -> PackSummary:
    """Pack the videos of `config.src` into `out/shard-NNNNNN.tar` with `out/index.json`.

    Undecodable files are listed in `out/rejected.jsonl` (path and reason) and not packed."""
    import webdataset as wds

    src, out, shard_size, workers = config.src, config.out, config.shard_size, config.workers
    if shard_size < 1:
        raise SaltCacheError(f"--shard-size: expected >= 1, got {shard_size}")
    out = Path(out)
    sources = list_sources(Path(src))
    if not sources:
        raise SaltCacheError(f"{src}: no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise SaltCacheError(f"{out}: folder is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = make_keys([s.rel for s in sources])  # from the sorted list: stable whatever the order
    key_of = {id(s): k for s, k in zip(sources, keys)}
    if config.shuffle:
        order = np.random.default_rng([config.seed, 0x5EED]).permutation(len(sources))
        sources = [sources[i] for i in order]
    summary = PackSummary(out=out)
    writer, count, tmp = None, 0, None

    def close():
        nonlocal writer
        if writer is not None:
            writer.close()
            final = out / SHARD_PATTERN.format(len(summary.shards))
            os.replace(tmp, final)
            summary.shards.append({"name": final.name, "samples": count})
            writer = None

    task = progress.add_task("probing + packing", total=len(sources)) if progress else None
    for source, result in _probe_all(sources, workers, config.timeout):
        if progress:
            progress.advance(task)
        if isinstance(result, str):
            summary.rejected.append({"path": str(source.path), "reason": result})
            continue
        data, info = result
        if writer is None:
            tmp = out / (SHARD_PATTERN.format(len(summary.shards)) + ".partial")
            writer, count = wds.TarWriter(str(tmp)), 0
        meta = {"source": source.rel, "frames": info.frames, "fps": info.fps,
                "height": info.height, "width": info.width}
        if source.label is not None:
            meta["label"] = source.label
        ext = source.path.suffix.lower().lstrip(".")
        writer.write({"__key__": key_of[id(source)], ext: data, "json": meta})
        count += 1
        summary.packed += 1
        if count >= shard_size:
            close()
    close()
    with open(out / REJECTED_NAME, "w") as f:
        for r in summary.rejected:
            f.write(json.dumps(r) + "\n")
    index = {"shards": summary.shards, "samples": summary.packed, "rejected": len(summary.rejected),
             "order": {"shuffled": config.shuffle, "seed": config.seed} if config.shuffle else {"shuffled": False}}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return summary
