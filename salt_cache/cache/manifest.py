"""`CACHE/cache.json`: the fingerprint of a cache and the manifest of its finished stores.

Written when a build starts (so an interrupted build is self-describing and resumable) and
rewritten, atomically, each time a store finishes. Only one process ever writes it (rank 0).

Fields: format, version, status ("building" | "complete"), cache_id (sha256 of spec + teacher
sha256 + shard list), spec, teacher {file, sha256, config, meta}, teacher_dim, grid, tokens,
token_order "t,h,w", final_norm, storage {dtype, stored_dtype, codecs, ...}, data {shards: [{index,
name, path, bytes, store}]}, versions, build {device, autocast, batch_size, workers, world_size},
stores {store name: done record without its file list}, summary (after a build).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from salt_cache.cache.store import (
    DONE_NAME, STORES_DIR, TEMP_SUFFIX, codecs_description, read_done, store_name, stored_dtype,
)
from salt_cache.errors import SaltCacheError
from salt_cache.spec import CacheSpec

CACHE_FORMAT = "salt-cache/latents"
CACHE_VERSION = 1
CACHE_JSON = "cache.json"


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
                teacher_meta: dict, shards: list[Path], build: dict) -> dict:
    """The fingerprint part of cache.json for a new build."""
    spec_d = spec.to_dict()
    shard_list = [{"index": i, "name": Path(p).name, "path": str(Path(p).resolve()),
                   "bytes": Path(p).stat().st_size, "store": store_name(i, p)} for i, p in enumerate(shards)]
    identity = {"spec": spec_d, "teacher_sha256": teacher_sha256,
                "shards": [(s["name"], s["bytes"]) for s in shard_list]}
    st = spec.storage
    return {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "status": "building",
        "cache_id": hashlib.sha256(_canonical(identity)).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spec": spec_d,
        "teacher": {"file": str(Path(teacher_file).resolve()), "sha256": teacher_sha256,
                    "config": teacher_config, "meta": json.loads(_canonical(teacher_meta or {}))},
        "teacher_dim": int(teacher_config["embed_dim"]),
        "grid": list(spec.grid), "tokens": spec.tokens, "token_order": "t,h,w",
        # imported VideoMAE teachers with mean pooling have no per-token final norm
        "final_norm": bool(teacher_config.get("final_norm", True)),
        "storage": {"dtype": st.dtype, "stored_dtype": stored_dtype(st.dtype).name, "codec": st.codec,
                    "level": st.level, "rows_per_shard": st.rows_per_shard, "chunk_rows": 1,
                    "codecs": codecs_description(st),
                    "row_checksum": "crc32 of the row's stored bytes, little-endian",
                    "stats": "mean, population std and L2 norm of the fp32 teacher output"},
        "data": {"shards": shard_list},
        "versions": package_versions(),
        "build": build,
        "stores": {},
    }


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


def compatibility_problem(existing: dict, header: dict) -> str | None:
    """Why a build with `header` cannot resume into a cache described by `existing` (or None)."""
    if existing.get("format") != CACHE_FORMAT:
        return "not a salt-cache latent cache (cache.json has no 'format: salt-cache/latents')"
    d = _first_difference(existing.get("spec"), header["spec"])
    if d:
        return f"built with a different spec (spec.{d})"
    old, new = existing.get("teacher", {}).get("sha256", ""), header["teacher"]["sha256"]
    if old != new:
        return f"built with a different teacher (sha256 {old[:12]}... vs {new[:12]}... of {header['teacher']['file']})"
    a = [(s.get("name"), s.get("bytes")) for s in existing.get("data", {}).get("shards", [])]
    b = [(s["name"], s["bytes"]) for s in header["data"]["shards"]]
    if a != b:
        if len(a) != len(b):
            return f"built from {len(a)} shards, given {len(b)}"
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        return f"built from different data (shard {i}: cache has {a[i][0]} of {a[i][1]} bytes, given {b[i][0]} of {b[i][1]} bytes)"
    return None


def cache_json_path(cache: Path) -> Path:
    return Path(cache) / CACHE_JSON


def read_cache_json(cache: Path) -> dict:
    """Parse CACHE/cache.json; a one-line SaltCacheError when it is missing or not a cache."""
    p = cache_json_path(cache)
    if not Path(cache).is_dir():
        raise SaltCacheError(f"{cache}: no such cache folder")
    if not p.is_file():
        raise SaltCacheError(f"{cache}: not a latent cache (no {CACHE_JSON})")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise SaltCacheError(f"{p}: unreadable ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        raise SaltCacheError(f"{p}: not a salt-cache latent cache (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


def write_cache_json(cache: Path, doc: dict) -> None:
    """Atomic rewrite: a reader sees the old or the new file, never half of one."""
    p = cache_json_path(cache)
    doc["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, p)


def manifest_entry(done: dict) -> dict:
    """A done record as kept in cache.json: everything but the per-file list."""
    entry = {k: v for k, v in done.items() if k not in ("files", "format", "version")}
    entry["files"] = len(done.get("files", {}))
    return entry


def scan_stores(cache: Path, doc: dict, known: dict | None = None) -> dict:
    """{store name: manifest entry} for every store of the data list that has a done record;
    stores already in `known` are taken from it without reading their done record."""
    root = Path(cache) / STORES_DIR
    out = {}
    for s in doc.get("data", {}).get("shards", []):
        if known and s["store"] in known:
            out[s["store"]] = known[s["store"]]
            continue
        done = read_done(root / s["store"])
        if done is not None:
            out[s["store"]] = manifest_entry(done)
    return out


def refresh_manifest(cache: Path, doc: dict, full: bool = True) -> dict:
    """Rescan finished stores into `doc["stores"]` (only the unlisted ones unless `full`), set the
    status, write cache.json."""
    doc["stores"] = scan_stores(cache, doc, None if full else doc.get("stores"))
    complete = len(doc["stores"]) == len(doc.get("data", {}).get("shards", []))
    doc["status"] = "complete" if complete else "building"
    write_cache_json(cache, doc)
    return doc


def stray_entries(cache: Path, doc: dict) -> list[str]:
    """Names in CACHE/stores that are not finished stores of this cache: temporary folders of an
    interrupted build, unfinished stores, or foreign files."""
    root = Path(cache) / STORES_DIR
    if not root.is_dir():
        return []
    expected = {s["store"] for s in doc.get("data", {}).get("shards", [])}
    out = []
    for p in sorted(root.iterdir()):
        if p.name.endswith(TEMP_SUFFIX) or p.name not in expected or not (p / DONE_NAME).is_file():
            out.append(p.name)
    return out
