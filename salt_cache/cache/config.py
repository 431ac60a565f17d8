"""The typed options of `salt-cache build` and `salt-cache verify` (and of the recipe kinds of
the same names): each default lives here once. No torch import, so the CLI loads fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from salt_cache.config import path_field


@dataclass(frozen=True)
class BuildConfig:
    """`salt-cache build` and the recipe kind build: the frozen teacher (an encoder checkpoint),
    the shards (a folder, brace pattern, comma list or a list of them), the cache spec (a YAML
    file, a bundled name, or a CacheSpec) with `overrides` ("storage.dtype=bfloat16"), the cache
    folder, views per teacher forward, decoding processes, device."""

    teacher: Path = path_field()
    data: str | list[str] = path_field()
    spec: str
    out: Path = path_field()
    batch_size: int = 8
    workers: int = 2
    device: str = "cpu"
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VerifyConfig:
    """`salt-cache verify` and the recipe kind verify. cache: the cache folder; data: shards
    whose clips must be exactly the cache's keys; teacher: a checkpoint whose sha256 must match,
    with `sample` rows (picked by `seed`) re-encoded on `device`; digest / rows: the two full
    reads (store digests, per-row checks); out: where to write the report as JSON (None: not)."""

    cache: Path = path_field()
    data: str | list[str] | None = path_field(default=None)
    teacher: Path | None = path_field(default=None)
    sample: int = 8
    seed: int = 0
    device: str = "cpu"
    digest: bool = True
    rows: bool = True
    out: Path | None = path_field(default=None)
