"""`CacheHeader`: `CACHE/cache.json` as one frozen, typed record, read and written here only.

cache.json is the contract between a build and everything that reads a cache (Stage 2, the
probe, verify, inspect, recipes): the fingerprint (spec, teacher, token grid and order, final
norm, storage, data, versions) and the manifest of finished stores. Every reader goes through
`CacheHeader.read`, which checks the format and every field once, so no module indexes the
file by string keys, and a truncated or foreign file is one line naming the field.

Fields (JSON layout in brackets where it differs): format, version, status ("building" |
"complete"), cache_id (sha256 of spec + teacher sha256 + shard list), created, updated, spec
(a CacheSpec), teacher (file, sha256, config, meta), teacher_dim, grid (T', H', W'), tokens,
token_order "t,h,w", final_norm, storage {dtype, stored_dtype, codec, level, rows_per_shard,
codecs, ...}, shards [data.shards: index, name, path, bytes, store], versions, build {device,
autocast, batch_size, workers, world_size}, stores {store name: done record without its file
list}, summary (after a build).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from salt_cache.errors import SaltCacheError
from salt_cache.spec import CacheSpec

CACHE_FORMAT = "salt-cache/latents"
CACHE_VERSION = 1
CACHE_JSON = "cache.json"


@dataclass(frozen=True)
class ShardEntry:
    """One input shard of the cache and the store it becomes."""

    index: int
    name: str
    path: str
    bytes: int
    store: str


@dataclass(frozen=True)
class TeacherRecord:
    """The frozen teacher: its file when built, its sha256, model config and checkpoint meta."""

    file: str
    sha256: str
    config: Mapping
    meta: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class CacheHeader:
    """cache.json (see the module docstring). Build a new one with `manifest.make_header`, read
    one with `CacheHeader.read(cache)`; `replace` gives an updated copy."""

    cache_id: str
    spec: CacheSpec
    teacher: TeacherRecord
    teacher_dim: int
    grid: tuple[int, int, int]
    tokens: int
    storage: Mapping
    shards: tuple[ShardEntry, ...]
    token_order: str = "t,h,w"
    final_norm: bool = True
    versions: Mapping = field(default_factory=dict)
    build: Mapping = field(default_factory=dict)
    status: str = "building"
    stores: Mapping[str, Mapping] = field(default_factory=dict)
    summary: Mapping | None = None
    created: str | None = None
    updated: str | None = None
    format: str = CACHE_FORMAT
    version: int = CACHE_VERSION

    # ---------------------------------------------------------------- derived

    @property
    def dtype(self) -> str:
        """Storage dtype of the latents: float16, bfloat16 or float32."""
        return self.storage["dtype"]

    @property
    def complete(self) -> bool:
        """Every input shard has its finished store."""
        return self.status == "complete" and len(self.stores) == len(self.shards)

    @property
    def store_names(self) -> list[str]:
        """Store names of every input shard, in data order (finished or not)."""
        return [s.store for s in self.shards]

    def with_stores(self, stores: Mapping[str, Mapping]) -> "CacheHeader":
        """A copy listing `stores` as finished, its status set accordingly."""
        done = len(stores) == len(self.shards)
        return replace(self, stores=dict(stores), status="complete" if done else "building")

    def require(self, where: str | Path = "", who: str = "expected", labels: Mapping[str, str] | None = None,
                **expected) -> None:
        """Refuse a cache that does not fit what the caller has: keyword arguments among grid,
        tokens, teacher_dim, patch_size, tubelet_size, frames, size, teacher_sha256 (None: not
        checked). Raises a one-line SaltCacheError naming the first mismatch; with `labels`
        {field: the caller's name for it, e.g. "model.patch_size"} the line names that field,
        what `who` has and the value to set."""
        have = {
            "grid": tuple(self.grid), "tokens": self.tokens, "teacher_dim": self.teacher_dim,
            "patch_size": self.spec.patch_size, "tubelet_size": self.spec.tubelet_size,
            "frames": self.spec.clip.frames, "size": self.spec.clip.size, "teacher_sha256": self.teacher.sha256,
        }
        for name, want in expected.items():
            if name not in have:
                raise TypeError(f"require(): unknown field {name!r} (expected one of {', '.join(have)})")
            if want is None:
                continue
            want = tuple(want) if isinstance(want, (list, tuple)) else want
            if have[name] == want:
                continue
            if labels and name in labels:
                grid = "x".join(map(str, self.grid))
                raise SaltCacheError(f"{labels[name]}: {who} has {want}, the cache {where} has {have[name]} "
                                     f"(its token grid is {grid}); set {labels[name]}: {have[name]}")
            raise SaltCacheError(f"{where}: cache has {name} {have[name]}, {who} {want}")

    # ---------------------------------------------------------------- plain data

    def to_dict(self) -> dict:
        """The JSON layout of cache.json."""
        doc = {
            "format": self.format, "version": self.version, "status": self.status, "cache_id": self.cache_id,
            "created": self.created, "spec": self.spec.to_dict(),
            "teacher": {"file": self.teacher.file, "sha256": self.teacher.sha256,
                        "config": _plain(self.teacher.config), "meta": _plain(self.teacher.meta)},
            "teacher_dim": self.teacher_dim, "grid": list(self.grid), "tokens": self.tokens,
            "token_order": self.token_order, "final_norm": self.final_norm, "storage": _plain(self.storage),
            "data": {"shards": [vars(s).copy() for s in self.shards]}, "versions": _plain(self.versions),
            "build": _plain(self.build), "stores": _plain(self.stores),
        }
        if self.summary is not None:
            doc["summary"] = _plain(self.summary)
        if self.updated is not None:
            doc["updated"] = self.updated
        return doc

    @classmethod
    def from_dict(cls, doc, source: str = CACHE_JSON) -> "CacheHeader":
        """Parse cache.json's contents; a one-line SaltCacheError naming `source` and the field."""
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else None
            raise SaltCacheError(f"{source}: not a salt-cache latent cache (format {got!r})")
        try:
            spec = CacheSpec.from_dict(doc["spec"], source=f"{source}: spec")
            t = doc["teacher"]
            header = cls(
                cache_id=str(doc["cache_id"]), spec=spec,
                teacher=TeacherRecord(file=str(t["file"]), sha256=str(t["sha256"]), config=dict(t["config"]),
                                      meta=dict(t.get("meta") or {})),
                teacher_dim=int(doc["teacher_dim"]), grid=tuple(int(g) for g in doc["grid"]), tokens=int(doc["tokens"]),
                storage=dict(doc["storage"]),
                shards=tuple(ShardEntry(int(s["index"]), str(s["name"]), str(s["path"]), int(s["bytes"]), str(s["store"]))
                             for s in doc["data"]["shards"]),
                token_order=str(doc.get("token_order", "t,h,w")), final_norm=bool(doc.get("final_norm", True)),
                versions=dict(doc.get("versions") or {}), build=dict(doc.get("build") or {}),
                status=str(doc.get("status", "building")), stores=dict(doc.get("stores") or {}),
                summary=doc.get("summary"), created=doc.get("created"), updated=doc.get("updated"),
                version=int(doc.get("version", CACHE_VERSION)),
            )
        except SaltCacheError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SaltCacheError(f"{source}: missing or malformed field ({type(e).__name__}: {e})") from None
        if "dtype" not in header.storage:
            raise SaltCacheError(f"{source}: storage.dtype: missing")
        if len(header.grid) != 3:
            raise SaltCacheError(f"{source}: grid: expected 3 numbers (T', H', W'), got {list(header.grid)}")
        return header

    # ---------------------------------------------------------------- the file

    @classmethod
    def read(cls, cache: Path | str) -> "CacheHeader":
        """CACHE/cache.json -> CacheHeader; a one-line SaltCacheError when the folder or the file
        is missing, unreadable or not a cache."""
        cache = Path(cache)
        p = cache / CACHE_JSON
        if not cache.is_dir():
            raise SaltCacheError(f"{cache}: no such cache folder")
        if not p.is_file():
            raise SaltCacheError(f"{cache}: not a latent cache (no {CACHE_JSON})")
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise SaltCacheError(f"{p}: unreadable ({e})") from None
        return cls.from_dict(doc, source=str(p))

    def write(self, cache: Path | str) -> "CacheHeader":
        """Atomic rewrite of CACHE/cache.json (a reader sees the old or the new file, never half
        of one); returns the header as written (with `updated` set)."""
        header = replace(self, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        p = Path(cache) / CACHE_JSON
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(header.to_dict(), indent=1, default=str) + "\n")
        os.replace(tmp, p)
        return header


def is_complete(cache: Path | str) -> bool:
    """True when `cache` holds a readable cache.json whose build finished (what recipes ask)."""
    try:
        return CacheHeader.read(cache).complete
    except SaltCacheError:
        return False


def _plain(obj):
    if isinstance(obj, (dict, MappingProxyType)):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
