"""Cache specs: how clips are sampled for the teacher and how its latents are stored.

A spec is a YAML file, bundled (`cache_specs/`, found by name from any folder) or anywhere, loaded into a typed, validated
`CacheSpec`. Errors name the file and the dotted field, e.g. `cache_specs/demo.yaml:
storage.dtyp: unknown field (expected one of: dtype, codec, level, rows_per_shard)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from salt_cache.config import apply_overrides, from_dict, load_yaml
from salt_cache.errors import SaltCacheError
from salt_cache.video import ClipSpec

# blosc's clevel is 0..9; zstd's own levels run 1..22 (negative "fast" levels are not offered)
LEVEL_RANGE = {"blosc-zstd": (0, 9), "blosc-lz4": (0, 9), "zstd": (1, 22), "none": (0, 22)}


def specs_dir() -> Path | None:
    """The folder of the bundled specs (`salt_cache.resources`: the package's copy in a wheel,
    the repository's `cache_specs/` in a checkout)."""
    from salt_cache.resources import bundled_dir

    return bundled_dir("cache_specs")


@dataclass(frozen=True)
class StorageSpec:
    """How latents are stored. dtype: float16 (default), bfloat16 (kept as uint16 bits), float32,
    or int8 (lossy by choice: per-channel float32 scales, ~0.25x the fp32 bytes; the build reports
    its fidelity against the fp32 output, see `cache.store.fidelity`);
    codec: blosc-zstd (Blosc with zstd), blosc-lz4, zstd, or none; level: compression level;
    shuffle: the Blosc filter, byte (default), bit or none; rows_per_shard: rows per Zarr shard
    file (each shard is written whole, in one call).

    Default Blosc-zstd level 5, byte shuffle (`benchmarks/codecs.py`, ViT-L-sized fp16 rows, one
    core): 0.86x the raw bytes at ~1.4 GB/s decode, where level 3 gives 0.93x at ~0.7 GB/s (Blosc
    picks larger blocks from level 5 on: better ratio and faster decode); levels 7-9 save <0.2%
    more and write 2-20x slower; lz4 and bit shuffle save nothing on such rows; `none` reads
    fastest (~3.5 GB/s) when disk is not the limit."""

    dtype: Literal["float16", "bfloat16", "float32", "int8"] = "float16"
    codec: Literal["blosc-zstd", "blosc-lz4", "zstd", "none"] = "blosc-zstd"
    level: int = 5
    shuffle: Literal["byte", "bit", "none"] = "byte"
    rows_per_shard: int = 64

    def __post_init__(self) -> None:
        lo, hi = LEVEL_RANGE[self.codec]
        if not lo <= self.level <= hi:
            raise SaltCacheError(f"level: expected {lo}..{hi} for codec {self.codec}, got {self.level}")
        if self.rows_per_shard < 1:
            raise SaltCacheError(f"rows_per_shard: expected >= 1, got {self.rows_per_shard}")


@dataclass(frozen=True)
class StudentViewsSpec:
    """Student-ready views (`salt_cache.cache.frames`): format none (default: Stage 2 decodes each
    view from its source video), jpeg (one JPEG per frame at `quality`) or raw (lossless uint8,
    Blosc-lz4). With jpeg or raw, the build stores every view's frames as the student consumes
    them, the teacher encodes exactly those, and Stage 2 reads them instead of the source."""

    format: Literal["none", "jpeg", "raw"] = "none"
    quality: int = 90

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise SaltCacheError(f"quality: expected 1..100, got {self.quality}")

    @property
    def stored(self) -> bool:
        return self.format != "none"


@dataclass(frozen=True)
class CacheSpec:
    """A named cache recipe: the clip sampling (frames, step or fps, size, crop policy and
    ranges), views per clip, the view-planning seed, the tokenization the teacher must use
    (patch and tubelet size), the storage of latents and whether each view's frames are stored
    (`student_views`).

    `grid` is the token grid (T', H', W') = (frames / tubelet, size / patch, size / patch);
    `tokens` is its product. Tokens are ordered (t, h, w) row-major."""

    name: str
    clip: ClipSpec = field(default_factory=ClipSpec)
    views: int = 1
    seed: int = 0
    patch_size: int = 16
    tubelet_size: int = 2
    storage: StorageSpec = field(default_factory=StorageSpec)
    student_views: StudentViewsSpec = field(default_factory=StudentViewsSpec)

    def __post_init__(self) -> None:
        problems = []
        if not self.name or not self.name.strip():
            problems.append("name: expected a non-empty name")
        if self.views < 1:
            problems.append(f"views: expected >= 1, got {self.views}")
        if self.patch_size < 1:
            problems.append(f"patch_size: expected >= 1, got {self.patch_size}")
        if self.tubelet_size < 1:
            problems.append(f"tubelet_size: expected >= 1, got {self.tubelet_size}")
        if not problems:
            if self.clip.size % self.patch_size:
                problems.append(f"clip.size: {self.clip.size} px is not divisible by patch_size {self.patch_size}")
            if self.clip.frames % self.tubelet_size:
                problems.append(f"clip.frames: {self.clip.frames} is not divisible by tubelet_size {self.tubelet_size}")
        if problems:
            raise SaltCacheError("; ".join(problems))

    @property
    def grid(self) -> tuple[int, int, int]:
        side = self.clip.size // self.patch_size
        return (self.clip.frames // self.tubelet_size, side, side)

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def to_dict(self) -> dict:
        from salt_cache.config import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> "CacheSpec":
        return from_dict(cls, data, source=source)


def resolve_spec_path(path_or_name: str | Path) -> Path:
    """A spec file path, or a bare name (`demo`, `vitl-16x224`) of a bundled spec."""
    from salt_cache.resources import bundled

    return bundled("cache_specs", path_or_name, what="spec")


def load_spec(path_or_name: str | Path, overrides: list[str] | None = None) -> CacheSpec:
    """YAML spec (a path or a bare name in `cache_specs/`) + optional 'a.b=value' overrides ->
    validated `CacheSpec`. A spec without `name` takes the file's stem."""
    path = resolve_spec_path(path_or_name)
    data = apply_overrides(load_yaml(path), overrides or [])
    data.setdefault("name", path.stem)
    return from_dict(CacheSpec, data, source=str(path))


def list_specs() -> list[str]:
    """Names of the bundled specs."""
    from salt_cache.resources import list_bundled

    return list_bundled("cache_specs")
