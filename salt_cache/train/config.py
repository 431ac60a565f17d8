"""Typed run configs shared by both training stages.

`TrainConfig` holds everything the engine needs (model size, clip, masks, optimizer, data,
batching, devices, logging cadence). Each stage subclasses it with its own sections: Stage 1's
`TeacherConfig` adds the pixel decoder; Stage 2 adds its cache, predictor and loss fields the
same way (a dataclass subclass whose new fields all have defaults).

A run's config comes from, in order of precedence (last wins):
  class defaults < YAML file (--config) < explicit CLI flags (--steps, --model, ...) < --set a.b=v

`load_run_config` does that merge and validates once, through `salt_cache.config.from_dict`,
so every mistake reads "<source>: <field.path>: <problem>".

Scaled warmup: the paper warms up for 10000 steps of a 240k-step schedule. Short runs cannot
afford that, so `optim.warmup_steps: null` resolves to min(10000, steps // 10) (at least 1) when
the config is built; the resolved number is what RUN/config.yaml records.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salt_cache import config as cfgio
from salt_cache.errors import SaltCacheError
from salt_cache.masks import DEFAULT_MASKS, MaskSet
from salt_cache.models import SIZES, ViTConfig, vit_config
from salt_cache.video import ClipSpec

PAPER_WARMUP_STEPS = 10_000


@dataclass
class ModelConfig:
    """The encoder being trained: a registered size plus its token geometry."""

    name: str = "base"
    patch_size: int = 16
    tubelet_size: int = 2
    pos_embed: str = "rope"
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SIZES:
            raise SaltCacheError(f"name: unknown model size {self.name!r} (expected one of {', '.join(SIZES)})")
        if self.pos_embed not in ("rope", "sincos"):
            raise SaltCacheError(f"pos_embed: expected 'rope' or 'sincos', got {self.pos_embed!r}")
        for name in ("patch_size", "tubelet_size"):
            if getattr(self, name) < 1:
                raise SaltCacheError(f"{name}: expected >= 1, got {getattr(self, name)}")

    def vit(self) -> ViTConfig:
        return vit_config(self.name, patch_size=self.patch_size, tubelet_size=self.tubelet_size,
                          pos_embed=self.pos_embed, drop_path=self.drop_path)


@dataclass
class OptimConfig:
    """AdamW with the paper's schedules (Table 5): LR start_lr -> lr (peak) linearly over
    warmup_steps, then cosine to final_lr; weight decay cosine weight_decay -> final_weight_decay
    over the whole run (none on biases, norms, position embeddings, mask tokens)."""

    lr: float = 6.25e-4
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_steps: int | None = None
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float | None = 0.02

    def __post_init__(self) -> None:
        for name in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay"):
            if getattr(self, name) < 0:
                raise SaltCacheError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise SaltCacheError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        if not all(0 <= b < 1 for b in self.betas):
            raise SaltCacheError(f"betas: expected two values in [0, 1), got {list(self.betas)}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise SaltCacheError(f"clip_grad: expected > 0 or null, got {self.clip_grad}")


@dataclass
class DataConfig:
    """Shards (a folder, a brace pattern or a comma list) and the loader's knobs.

    shuffle_buffer: samples held per DataLoader worker before the per-sample stage; they hold
    compressed video bytes only, so memory is about shuffle_buffer x mean video file size.
    loader_timeout_s: a DataLoader that yields no batch for this long stops the run with one
    line (a hung decoder in one worker would otherwise hang every DDP rank); resume from the
    last checkpoint. decode_timeout_s: each sample's decode gets this long, then it is skipped
    and counted like a failed decode. max_damaged_rows: cache rows failing their checksum that
    one rank skips (and counts) before it stops."""

    train: str | list[str] | None = None
    val: str | list[str] | None = None
    shuffle_buffer: int = 256
    val_batch_size: int = 8
    loader_timeout_s: float = 600.0
    decode_timeout_s: float = 60.0
    max_damaged_rows: int = 100

    def __post_init__(self) -> None:
        if self.shuffle_buffer < 1:
            raise SaltCacheError(f"shuffle_buffer: expected >= 1, got {self.shuffle_buffer}")
        if self.val_batch_size < 1:
            raise SaltCacheError(f"val_batch_size: expected >= 1, got {self.val_batch_size}")
        for name in ("loader_timeout_s", "decode_timeout_s"):
            if getattr(self, name) <= 0:
                raise SaltCacheError(f"{name}: expected > 0 seconds, got {getattr(self, name)}")
        if self.max_damaged_rows < 0:
            raise SaltCacheError(f"max_damaged_rows: expected >= 0, got {self.max_damaged_rows}")


@dataclass
class HeadConfig:
    """A narrow transformer on top of the encoder: Stage 1's pixel decoder, Stage 2's predictor."""

    embed_dim: int = 384
    depth: int = 4
    num_heads: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise SaltCacheError(f"embed_dim: {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.depth < 1:
            raise SaltCacheError(f"depth: expected >= 1, got {self.depth}")


@dataclass
class TrainConfig:
    """Everything both stages share. batch_size is GLOBAL: per-rank micro-batch =
    batch_size / (world_size x grad_accum), which must divide exactly."""

    model: ModelConfig = field(default_factory=ModelConfig)
    clip: ClipSpec = field(default_factory=ClipSpec)
    masks: list[MaskSet] = field(default_factory=lambda: list(DEFAULT_MASKS))
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 10_000
    batch_size: int = 64
    grad_accum: int = 1
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 1000
    # step checkpoints kept: the newest, and those whose step is a multiple of this (0: all);
    # last.pt is always kept. A ViT-L run state is ~4 GB: 200k steps every 5k is 160 GB unpruned
    ckpt_keep_every: int = 0
    val_every: int = 500
    val_batches: int = 8
    # token rows behind val.csv's RankMe / effective-rank columns (computed on the encoder's
    # tokens of the whole val clips; 0: no such columns, no extra encoder forward)
    val_rank_rows: int = 8192

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "val_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise SaltCacheError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("workers", "val_batches", "seed", "val_rank_rows", "ckpt_keep_every"):
            if getattr(self, name) < 0:
                raise SaltCacheError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not self.masks:
            raise SaltCacheError("masks: expected at least one mask set")
        if len({m.name for m in self.masks}) != len(self.masks):
            raise SaltCacheError("masks: mask set names must be distinct (they name log columns)")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise SaltCacheError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        m, c = self.model, self.clip
        if c.frames % m.tubelet_size:
            raise SaltCacheError(f"clip.frames: {c.frames} frames do not split into tubelets of {m.tubelet_size}")
        if c.size % m.patch_size:
            raise SaltCacheError(f"clip.size: {c.size} px does not split into patches of {m.patch_size}")
        if self.optim.warmup_steps is None:
            self.optim.warmup_steps = min(PAPER_WARMUP_STEPS, max(1, self.steps // 10))

    def head(self) -> HeadConfig | None:
        """The narrow transformer the stage trains on top of the encoder (Stage 1's decoder,
        Stage 2's predictor), for the CPU memory estimate; each stage's config names it."""
        return None

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') of one clip."""
        m, c = self.model, self.clip
        return (c.frames // m.tubelet_size, c.size // m.patch_size, c.size // m.patch_size)


# Fields that may change when a run is resumed: they do not touch the training math or the data
# stream (validation and checkpoints run in eval mode and draw no random numbers).
RESUME_FREE = ("device", "compile", "log_every", "ckpt_every", "ckpt_keep_every", "val_every", "val_batches", "val_rank_rows",
               "data.val", "data.val_batch_size", "data.loader_timeout_s", "data.max_damaged_rows")


def load_run_config(cls: type, path: Path | None = None, flags: dict[str, Any] | None = None,
                    sets: list[str] | None = None, base: dict | None = None):
    """Build config `cls` from `base` (e.g. a run's stored config) or the YAML at `path`, then
    explicit flags ({"steps": 100, "model.name": "micro"}; None values are ignored), then
    `sets` ("a.b=value" strings). Errors name the source and the field."""
    if path is not None:
        data = cfgio.load_yaml(Path(path))
        source = str(path)
    else:
        data = copy.deepcopy(base or {})
        source = "config"
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SaltCacheError(f"{source}: {p}: expected a section (mapping), got {node!r}")
        node[leaf] = str(value) if isinstance(value, Path) else value
    data = cfgio.apply_overrides(data, list(sets or []))
    return cfgio.from_dict(cls, data, source=source)


def plain(obj: Any) -> Any:
    """Config (or any nested data) -> plain dicts / lists / str / numbers, safe for YAML, JSON
    and `torch.load(weights_only=True)`."""
    data = cfgio.to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(v) for v in data]
    if isinstance(data, Path):
        return str(data)
    return data


def config_diff(a: dict, b: dict, ignore: tuple[str, ...] = RESUME_FREE, prefix: str = "") -> str | None:
    """First dotted field where plain configs `a` and `b` differ (ignoring `ignore`), or None."""
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        if path in ignore:
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            found = config_diff(va, vb, ignore, prefix=f"{path}.")
            if found:
                return found
        elif va != vb:
            return f"{path} ({va!r} vs {vb!r})"
    return None
