"""Representation diagnostics: RankMe and effective rank of encoder features.

A collapsing encoder (e.g. a tiny V-Pixel teacher that learned "predict the patch mean") can
keep a smooth loss curve while its features fall onto a few directions; its student inherits
that. These two numbers show it directly, and they are cheap: one SVD of a bounded matrix.

- `rankme(x)` (Garrido et al. 2023, "RankMe"): the singular values s of the [n, d] feature
  matrix, NOT centred (as in the paper), p = s / sum(s) + 1e-7, RankMe = exp(-sum p log p).
  Between 1 and min(n, d); equals k for k equal non-zero singular values.
- `effective_rank(x)`: the participation ratio of the centred covariance's eigenvalues λ,
  (sum λ)^2 / sum λ^2 (a standard "effective dimensionality", e.g. Gao et al. 2017). It weighs
  the spectrum by variance squared, so a few dominant directions pull it down more than they
  pull RankMe; centring removes the mean direction that RankMe counts.

Both are computed in float64 on the CPU, so the same features give the same numbers anywhere.

Encoder tokens [clips, N, D] give four numbers (`feature_ranks`): token level (rows are tokens)
and clip level (rows are clips, each the mean of its tokens). Token rows are capped: each clip
contributes the same number of tokens, picked by a private generator seeded with the clip's
index, so the sample does not depend on batching, on the number of processes, or on the global
RNG of a training run (exact resume).
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-7
MAX_TOKEN_ROWS = 8192
RANK_KEYS = ("rankme_token", "rankme_clip", "erank_token", "erank_clip")


def _matrix(features) -> torch.Tensor:
    x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    x = x.detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected a [rows, dim] matrix, got shape {tuple(x.shape)}")
    return x


def rankme(features) -> float:
    """RankMe of a [n, d] matrix (not centred); 0.0 for an empty or all-zero matrix."""
    x = _matrix(features)
    if x.numel() == 0:
        return 0.0
    s = torch.linalg.svdvals(x)
    total = float(s.sum())
    if total == 0.0 or not math.isfinite(total):
        return 0.0 if total == 0.0 else float("nan")
    p = s / total + EPS
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank(features) -> float:
    """Participation ratio (sum λ)^2 / sum λ^2 of the eigenvalues λ of the centred covariance of
    a [n, d] matrix; 0.0 when the rows do not vary (or n < 2)."""
    x = _matrix(features)
    if x.shape[0] < 2:
        return 0.0
    lam = torch.linalg.svdvals(x - x.mean(0, keepdim=True)) ** 2  # eigenvalues, up to the 1/(n-1) that cancels
    denom = float((lam ** 2).sum())
    return float(lam.sum() ** 2 / denom) if denom > 0 else 0.0


def token_sample(n_tokens: int, k: int, index: int) -> torch.Tensor:
    """k of n_tokens token indices (all of them when k >= n_tokens), chosen by a generator seeded
    with `index` alone, sorted."""
    if k >= n_tokens:
        return torch.arange(n_tokens)
    g = torch.Generator().manual_seed(0x5A17 + int(index))
    return torch.randperm(n_tokens, generator=g)[:k].sort().values


def tokens_per_clip(clips: int, n_tokens: int, max_rows: int = MAX_TOKEN_ROWS) -> int:
    """Tokens each clip contributes so that clips x that <= max(max_rows, clips)."""
    return max(1, min(n_tokens, max_rows // max(1, clips)))


class RankSample:
    """Collects, clip by clip, what `feature_ranks` needs: each clip's mean token and a fixed
    share of its tokens. Add tokens [B, N, D] with the global index of their first clip; the
    result depends only on (clip index, tokens), never on how clips were batched.

    clips: how many clips will be added in all (fixes each clip's share of the token cap)."""

    def __init__(self, clips: int, max_rows: int = MAX_TOKEN_ROWS):
        self.clips, self.max_rows = int(clips), int(max_rows)
        self.parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def add(self, tokens: torch.Tensor, first_index: int) -> None:
        """tokens [B, N, D] of clips first_index .. first_index + B - 1."""
        x = tokens.detach().to("cpu", torch.float32)
        k = tokens_per_clip(self.clips, x.shape[1], self.max_rows)
        for j in range(x.shape[0]):
            i = first_index + j
            self.parts[i] = (x[j].mean(0), x[j, token_sample(x.shape[1], k, i)])

    def merge(self, parts: dict) -> None:
        self.parts.update(parts)

    def ranks(self) -> dict[str, float] | None:
        """{"rankme_token", "rankme_clip", "erank_token", "erank_clip"}; None when empty."""
        if not self.parts:
            return None
        order = sorted(self.parts)
        clip_rows = torch.stack([self.parts[i][0] for i in order])
        token_rows = torch.cat([self.parts[i][1] for i in order])
        return {"rankme_token": rankme(token_rows), "rankme_clip": rankme(clip_rows),
                "erank_token": effective_rank(token_rows), "erank_clip": effective_rank(clip_rows)}


def feature_ranks(tokens: torch.Tensor, max_rows: int = MAX_TOKEN_ROWS) -> dict[str, float] | None:
    """Encoder tokens [clips, N, D] -> {"rankme_token", "rankme_clip", "erank_token",
    "erank_clip"}: token level on at most max(max_rows, clips) token rows (the same share of
    every clip, `token_sample`), clip level on the clips' mean tokens [clips, D]."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens: expected [clips, tokens, dim], got shape {tuple(tokens.shape)}")
    sample = RankSample(tokens.shape[0], max_rows)
    sample.add(tokens, 0)
    return sample.ranks()


def even_sample(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n), first and last included."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})
