from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from salt_cache.config import apply_overrides, from_dict
from salt_cache.errors import SaltCacheError
from salt_cache.masks import DEFAULT_MASKS, MaskSet, mask_seed, multiblock_masks
from salt_cache.video import ClipSpec


def _expected_target_fraction(grid, size, n_blocks):
    """Exact expectation for uniformly placed blocks: per-token cover probability, unioned."""
    def axis(g, l):
        starts = g - l + 1
        return np.array([sum(1 for s in range(starts) if s <= p < s + l) / starts for p in range(g)])
    p = axis(grid[0], size[0])[:, None, None] * axis(grid[1], size[1])[None, :, None] * axis(grid[2], size[2])[None, None, :]
    return float((1 - (1 - p) ** n_blocks).mean())


@pytest.mark.parametrize("m,size", [
    (MaskSet("short", 8, (0.15, 0.15), aspect_ratio=(1.0, 1.0)), (8, 5, 5)),   # keep = int(196*.15) = 29
    (MaskSet("long", 2, (0.7, 0.7), aspect_ratio=(1.0, 1.0)), (8, 12, 12)),    # keep = 137
])
def test_mask_statistics_match_the_multiblock_generator(m, size):
    grid = (8, 14, 14)
    fracs = []
    for s in range(1500):
        (ctx, tgt), = multiblock_masks(1, grid, (m,), seed=s)
        n = ctx.shape[1] + tgt.shape[1]
        assert n == 8 * 14 * 14  # one sample: no truncation, context is the exact complement
        fracs.append(tgt.shape[1] / n)
    assert abs(np.mean(fracs) - _expected_target_fraction(grid, size, m.num_blocks)) < 0.01


def test_masks_are_disjoint_sorted_full_temporal_and_seeded():
    grid = (8, 14, 14)
    a = multiblock_masks(6, grid, DEFAULT_MASKS, seed=mask_seed(1, 0, 2))
    b = multiblock_masks(6, grid, DEFAULT_MASKS, seed=mask_seed(1, 0, 2))
    c = multiblock_masks(6, grid, DEFAULT_MASKS, seed=mask_seed(1, 0, 3))
    assert all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))
    assert not all(torch.equal(x, y) for p, q in zip(a, c) for x, y in zip(p, q))
    for ctx, tgt in a:
        assert ctx.shape[0] == tgt.shape[0] == 6 and ctx.shape[1] > 0
        for i in range(6):
            assert not set(ctx[i].tolist()) & set(tgt[i].tolist())
            assert torch.all(ctx[i][1:] > ctx[i][:-1])
    (ctx_s, _), (ctx_l, _) = a
    assert ctx_s.shape[1] > ctx_l.shape[1]  # long-range masks hide more
    for s in range(20):  # one sample per batch: no truncation, the whole target is there
        for _, tgt in multiblock_masks(1, grid, DEFAULT_MASKS, seed=s):
            # temporal scale 1: a masked (h, w) is masked in every one of the 8 frames
            per_hw = np.bincount(tgt[0].numpy() % 196, minlength=196)
            assert set(per_hw.tolist()) <= {0, 8} and per_hw.sum() == tgt.shape[1]


def test_blocks_are_clamped_below_the_grid_as_vjepa_does():
    from salt_cache.masks import _block_size

    grid = (8, 14, 14)
    long = DEFAULT_MASKS[1]
    sizes = [_block_size(torch.Generator().manual_seed(s), grid, long) for s in range(400)]
    assert max(h for _, h, _ in sizes) == 13 and max(w for _, _, w in sizes) == 13  # never the full 14
    assert min(h for _, h, _ in sizes) < 13  # the clamp bites only the largest draws


@dataclass
class _Cfg:
    clip: ClipSpec = field(default_factory=ClipSpec)
    steps: int = 10
    lr: float = 1e-3
    name: str | None = None


def test_config_errors_name_the_field():
    cfg = from_dict(_Cfg, {"clip": {"frames": 8, "frame_step": 2}, "lr": "2e-4"})
    assert cfg.clip.frames == 8 and cfg.lr == 2e-4
    cases = {
        "clip.frames: expected >= 1": {"clip": {"frames": 0}},
        "clip.framez: unknown field": {"clip": {"framez": 3}},
        "steps: expected an integer": {"steps": "many"},
        "clip.crop: expected 'center' or 'random-resized'": {"clip": {"crop": "zoom"}},
    }
    for msg, data in cases.items():
        with pytest.raises(SaltCacheError, match=f"^spec.yaml: {msg}"):
            from_dict(_Cfg, data, source="spec.yaml")
    cfg = from_dict(_Cfg, apply_overrides({"clip": {"frames": 8}}, ["clip.frames=4", "lr=1e-2", "name=run"]))
    assert (cfg.clip.frames, cfg.lr, cfg.name) == (4, 0.01, "run")
