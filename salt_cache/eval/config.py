"""`ProbeConfig`: every option of a probe, with its default, in one typed record (no torch
import, so the CLI can show the defaults cheaply)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from salt_cache.errors import SaltCacheError

# V-JEPA 2's probe grid (the SALT paper's Table 6): 5 x 4 = 20 heads
PAPER_LRS = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4)
PAPER_WDS = (0.8, 0.4, 0.1, 0.01)


@dataclass(frozen=True)
class ProbeConfig:
    """How an encoder is probed: on which clips, how its features are built, and how the heads
    are trained. The one place these options and their defaults live: `salt-cache probe` and
    `select` build it from their flags, a recipe's probe stage from its fields.

    spec: a cache spec (YAML path or bundled name, or a CacheSpec) for the probe's clips; None:
    the encoder's own training clip, centre crop, one view (`features.probe_spec`). device,
    workers, encode_batch_size: the feature build (`build_cache`); max_memory_gb: features above
    this are read from the cache per batch instead of held in memory. The heads are the grid lrs
    x wds, or `heads` [[lr, wd], ...] when given. V-JEPA 2: depth 4, 20 epochs, lrs PAPER_LRS,
    wds PAPER_WDS, cosine to zero."""

    spec: str | None = None
    device: str = "cpu"
    workers: int = 2
    encode_batch_size: int = 8
    max_memory_gb: float = 8.0
    depth: int = 1
    num_heads: int | None = None  # attention heads; None: the encoder's, else default_num_heads
    mlp_ratio: float = 4.0
    epochs: int = 20
    batch_size: int = 16
    lrs: tuple[float, ...] = (5e-3, 1e-3, 3e-4)
    wds: tuple[float, ...] = (0.01, 0.1)
    heads: list[tuple[float, float]] | None = None
    warmup_epochs: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name, low in (("workers", 0), ("encode_batch_size", 1), ("max_memory_gb", 0), ("depth", 1), ("epochs", 1),
                          ("batch_size", 1), ("warmup_epochs", 0)):
            if getattr(self, name) < low:
                problems.append(f"{name}: expected >= {low}, got {getattr(self, name)}")
        grid = self.grid()
        if not grid:
            problems.append("lrs: expected at least one learning rate and one weight decay")
        for lr, wd in grid:
            if not (lr > 0 and math.isfinite(lr)):
                problems.append(f"lrs: expected positive learning rates, got {lr}")
            if not (wd >= 0 and math.isfinite(wd)):
                problems.append(f"wds: expected weight decays >= 0, got {wd}")
        if problems:
            raise SaltCacheError("; ".join(problems))

    def grid(self) -> list[tuple[float, float]]:
        if self.heads is not None:
            return [(float(lr), float(wd)) for lr, wd in self.heads]
        return [(float(lr), float(wd)) for lr in self.lrs for wd in self.wds]
