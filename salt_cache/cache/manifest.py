"""The manifest side of `CACHE/cache.json`: a new cache's header, whether a build may resume
into an existing cache, and the list of finished stores (scanned from their done records).

Written when a build starts (so an interrupted build is self-describing and resumable) and
rewritten, atomically, each time a store finishes. Only one process ever writes it (rank 0).
The file's fields and its reading and writing are `salt_cache.cache.header.CacheHeader`'s.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from salt_cache.cache.header import CACHE_FORMAT, CacheHeader, ShardEntry, TeacherRecord
from salt_cache.cache.store import (
    STORES_DIR, TEMP_SUFFIX, codecs_description, done_path, is_done_record, read_done, store_name, stored_dtype,
)
from salt_cache.spec import CacheSpec


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("salt-cache", "torch", "zarr", "numcodecs", "numpy", "decord", "webdataset", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def make_header(spec: CacheSpec, teacher_file: Path, teacher_sha256: str, teacher_config: dict,
                teacher_meta: dict, shards: list[Path], build: dict) -> CacheHeader:
    """The header of a new build (status "building", no finished store)."""
    entries = tuple(ShardEntry(index=i, name=Path(p).name, path=str(Path(p).resolve()), bytes=Path(p).stat().st_size,
                               store=store_name(i, p)) for i, p in enumerate(shards))
    identity = {"spec": spec.to_dict(), "teacher_sha256": teacher_sha256, "shards": [(s.name, s.bytes) for s in entries]}
    st = spec.storage
    return CacheHeader(
        cache_id=hashlib.sha256(_canonical(identity)).hexdigest(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        spec=spec,
        teacher=TeacherRecord(file=str(Path(teacher_file).resolve()), sha256=teacher_sha256, config=dict(teacher_config),
                              meta=json.loads(_canonical(teacher_meta or {}))),
        teacher_dim=int(teacher_config["embed_dim"]),
        grid=tuple(spec.grid), tokens=spec.tokens, token_order="t,h,w",
        # imported VideoMAE teachers with mean pooling have no per-token final norm
        final_norm=bool(teacher_config.get("final_norm", True)),
        storage={"dtype": st.dtype, "stored_dtype": stored_dtype(st.dtype).name, "codec": st.codec,
                 "level": st.level, "rows_per_shard": st.rows_per_shard, "chunk_rows": 1,
                 "codecs": codecs_description(st),
                 "shuffle": st.shuffle,
                 **({"scales": "latent_scales [rows, D] float32: value = int8 x scale of its channel"}
                    if st.dtype == "int8" else {}),
                 "row_checksum": "crc32 of the row's stored bytes, little-endian (int8: values then scales)",
                 "stats": "mean, population std and L2 norm of the fp32 teacher output"},
        shards=entries, versions=package_versions(), build=dict(build),
    )


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: cache has {a!r}, given {b!r}"


def compatibility_problem(existing: CacheHeader, header: CacheHeader) -> str | None:
    """Why a build with `header` cannot resume into a cache described by `existing` (or None)."""
    if existing.format != CACHE_FORMAT:
        return "not a salt-cache latent cache (cache.json has no 'format: salt-cache/latents')"
    d = _first_difference(existing.spec.to_dict(), header.spec.to_dict())
    if d:
        return f"built with a different spec (spec.{d})"
    old, new = existing.teacher.sha256, header.teacher.sha256
    if old != new:
        return f"built with a different teacher (sha256 {old[:12]}... vs {new[:12]}... of {header.teacher.file})"
    a = [(s.name, s.bytes) for s in existing.shards]
    b = [(s.name, s.bytes) for s in header.shards]
    if a != b:
        if len(a) != len(b):
            return f"built from {len(a)} shards, given {len(b)}"
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        return f"built from different data (shard {i}: cache has {a[i][0]} of {a[i][1]} bytes, given {b[i][0]} of {b[i][1]} bytes)"
    return None


def manifest_entry(done: dict) -> dict:
    """A done record as kept in cache.json: everything but the per-file list."""
    entry = {k: v for k, v in done.items() if k not in ("files", "format", "version")}
    entry["files"] = len(done.get("files", {}))
    return entry


def scan_stores(cache: Path, header: CacheHeader, known: dict | None = None) -> dict:
    """{store name: manifest entry} for every store of the data list that has a done record;
    stores already in `known` are taken from it without reading their done record."""
    root = Path(cache) / STORES_DIR
    out = {}
    for name in header.store_names:
        if known and name in known:
            out[name] = known[name]
            continue
        done = read_done(root / name)
        if done is not None:
            out[name] = manifest_entry(done)
    return out


def add_store(cache: Path, header: CacheHeader, name: str, done: dict) -> CacheHeader:
    """List one store that this process just finished (its done record `done`) and write
    cache.json: no store is scanned, so the cost per finished store does not grow with the
    number of stores (only the file's own size)."""
    return header.with_stores({**header.stores, name: manifest_entry(done)}).write(cache)


def refresh_manifest(cache: Path, header: CacheHeader, full: bool = True) -> CacheHeader:
    """Rescan finished stores (only the unlisted ones unless `full`), set the status, write
    cache.json; returns the header as written."""
    stores = scan_stores(cache, header, None if full else dict(header.stores))
    return header.with_stores(stores).write(cache)


def stray_entries(cache: Path, header: CacheHeader) -> list[str]:
    """Names in CACHE/stores that are not finished stores of this cache (or their done records):
    temporary folders of an interrupted build, unfinished stores, or foreign files."""
    root = Path(cache) / STORES_DIR
    if not root.is_dir():
        return []
    expected = set(header.store_names)
    records = {done_path(root / name).name: name for name in expected}
    out = []
    for p in sorted(root.iterdir()):
        if p.name in records:
            if not (root / records[p.name]).is_dir() or not is_done_record(p):
                out.append(p.name)  # a done record without its store, or not one at all
            continue
        if p.name.endswith(TEMP_SUFFIX) or p.name not in expected or read_done(p) is None:
            out.append(p.name)
    return out
