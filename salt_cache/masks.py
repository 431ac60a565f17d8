"""V-JEPA multi-block 3D masks.

Each mask set places `num_blocks` blocks of one sampled size (spatial scale, aspect ratio,
temporal scale; sampled once per batch, as V-JEPA does) at random positions per sample. Targets
are the union of the blocks, context is the complement. Flat indices follow the encoder's (t, h,
w) token order. In a batch, every sample keeps the batch's minimum number of context and target
tokens (V-JEPA's collator truncation), so the index tensors stack.

Masks are a pure function of a seed: the data pipeline seeds each batch from (run seed, rank,
worker, epoch, batch), so a resumed run redraws exactly the masks it would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from salt_cache.errors import SaltCacheError

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class MaskSet:
    """One mask set: `num_blocks` blocks of spatial scale in `spatial_scale` (fraction of H'W'),
    aspect ratio in `aspect_ratio`, temporal extent `temporal_scale` of T'."""

    name: str
    num_blocks: int
    spatial_scale: tuple[float, float]
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise SaltCacheError(f"masks.{self.name}.num_blocks: expected >= 1, got {self.num_blocks}")
        for field_name in ("spatial_scale", "aspect_ratio", "temporal_scale"):
            lo, hi = getattr(self, field_name)
            if not 0 < lo <= hi:
                raise SaltCacheError(f"masks.{self.name}.{field_name}: expected 0 < min <= max, got [{lo}, {hi}]")
        if self.spatial_scale[1] > 1 or self.temporal_scale[1] > 1:
            raise SaltCacheError(f"masks.{self.name}: scales must be <= 1")


# The paper's (and V-JEPA's) two sets: 8 short-range blocks at 0.15, 2 long-range blocks at 0.7
DEFAULT_MASKS = (
    MaskSet("short", num_blocks=8, spatial_scale=(0.15, 0.15)),
    MaskSet("long", num_blocks=2, spatial_scale=(0.7, 0.7)),
)


def mask_sets_from_config(items: list[dict] | None) -> tuple[MaskSet, ...]:
    """[{name, num_blocks, spatial_scale, aspect_ratio?, temporal_scale?}, ...] -> MaskSets."""
    if not items:
        return DEFAULT_MASKS
    out = []
    for i, d in enumerate(items):
        try:
            out.append(MaskSet(
                name=str(d.get("name", f"set{i}")), num_blocks=int(d["num_blocks"]),
                spatial_scale=_pair(d["spatial_scale"]), aspect_ratio=_pair(d.get("aspect_ratio", (0.75, 1.5))),
                temporal_scale=_pair(d.get("temporal_scale", (1.0, 1.0)))))
        except KeyError as e:
            raise SaltCacheError(f"masks[{i}]: missing field {e.args[0]!r}") from None
    return tuple(out)


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return (float(v), float(v))
    lo, hi = v
    return (float(lo), float(hi))


def _block_size(g: torch.Generator, grid: Grid, m: MaskSet) -> tuple[int, int, int]:
    gt, gh, gw = grid
    u = torch.rand(3, generator=g).tolist()
    t_scale = m.temporal_scale[0] + u[0] * (m.temporal_scale[1] - m.temporal_scale[0])
    s_scale = m.spatial_scale[0] + u[1] * (m.spatial_scale[1] - m.spatial_scale[0])
    ar = m.aspect_ratio[0] + u[2] * (m.aspect_ratio[1] - m.aspect_ratio[0])
    t = max(1, int(gt * t_scale))
    keep = int(gh * gw * s_scale)
    # V-JEPA clamps a block to less than the grid on each spatial axis (h < H', w < W'): a block
    # spanning the whole height or width leaves the batch's minimum context tiny
    h = min(max(1, gh - 1), max(1, int(round(math.sqrt(keep * ar)))))
    w = min(max(1, gw - 1), max(1, int(round(math.sqrt(keep / ar)))))
    return t, h, w


def _one_sample(g: torch.Generator, grid: Grid, size: tuple[int, int, int], num_blocks: int) -> torch.Tensor:
    """Boolean [T'*H'*W'] target mask: the union of `num_blocks` blocks of `size`."""
    gt, gh, gw = grid
    t, h, w = size
    target = torch.zeros(grid, dtype=torch.bool)
    for _ in range(num_blocks):
        s = int(torch.randint(0, gt - t + 1, (1,), generator=g))
        top = int(torch.randint(0, gh - h + 1, (1,), generator=g))
        left = int(torch.randint(0, gw - w + 1, (1,), generator=g))
        target[s:s + t, top:top + h, left:left + w] = True
    return target.flatten()


def multiblock_masks(batch_size: int, grid: Grid, mask_sets=DEFAULT_MASKS, seed: int = 0,
                     max_tries: int = 100) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (context_idx [B, Nc], target_idx [B, Nt]) pair of int64 tensors per mask set.

    Indices are sorted; a sample whose blocks cover everything is redrawn (V-JEPA does the same)."""
    g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    out = []
    for m in mask_sets:
        size = _block_size(g, grid, m)
        ctx, tgt = [], []
        for _ in range(batch_size):
            for _try in range(max_tries):
                target = _one_sample(g, grid, size, m.num_blocks)
                if not target.all():
                    break
            else:
                raise SaltCacheError(f"mask set {m.name!r} covers the whole {grid} grid; lower its scale or blocks")
            ctx.append(torch.nonzero(~target).flatten())
            tgt.append(torch.nonzero(target).flatten())
        n_ctx = min(len(c) for c in ctx)
        n_tgt = min(len(t) for t in tgt)
        out.append((torch.stack([c[:n_ctx] for c in ctx]), torch.stack([t[:n_tgt] for t in tgt])))
    return out


def mask_seed(*parts: int) -> int:
    """Mix integers (run seed, rank, worker, epoch, batch, ...) into one 63-bit seed."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + ((h << 6) & 0xFFFF_FFFF_FFFF_FFFF) + (h >> 2)) & 0xFFFF_FFFF_FFFF_FFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFF_FFFF_FFFF_FFFF
    return h & 0x7FFF_FFFF_FFFF_FFFF
