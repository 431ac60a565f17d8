"""RankMe and effective rank on matrices whose rank is known, and the token sample behind the
training and cache diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from salt_cache.diagnostics import (
    RankSample, effective_rank, even_sample, feature_ranks, rankme, token_sample, tokens_per_clip,
)


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_equal_singular_values_give_rank_k():
    for k in (1, 3, 10):
        x = orthonormal(200, k, 0) @ orthonormal(48, k, 1).T * 5.0  # k singular values, all 5
        assert rankme(x) == pytest.approx(k, abs=1e-3)
        # centring a product of orthonormal bases barely changes it: k equal variances
        assert effective_rank(x) == pytest.approx(k, rel=0.05)


def test_rank_k_products_stay_at_or_below_k():
    g = torch.Generator().manual_seed(2)
    for k in (2, 5):
        x = torch.randn(300, k, generator=g) @ torch.randn(k, 40, generator=g)
        assert 1.0 < rankme(x) <= k + 1e-3
        assert 1.0 < effective_rank(x) <= k + 1e-6
    # unequal singular values (10, 1, 1): RankMe falls well below 3, the participation ratio more
    x = orthonormal(100, 3, 3) @ torch.diag(torch.tensor([10.0, 1.0, 1.0], dtype=torch.float64)) @ orthonormal(20, 3, 4).T
    assert 1.5 < rankme(x) < 2.0 and 1.0 < effective_rank(x) < rankme(x)


def test_isotropic_gaussian_is_near_full_rank():
    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(5))
    assert 0.97 * 32 < rankme(x) <= 32
    assert 0.95 * 32 < effective_rank(x) <= 32


def test_rankme_counts_the_mean_and_effective_rank_does_not():
    """RankMe is computed on raw features (the paper's choice): a shared offset is one more
    direction. The effective rank centres first: identical rows have no variance at all."""
    same = torch.ones(50, 8) * 3.0
    assert rankme(same) == pytest.approx(1.0, abs=1e-4) and effective_rank(same) == 0.0
    noise = torch.randn(500, 8, generator=torch.Generator().manual_seed(6))
    shifted = noise + 20.0  # a dominant mean direction
    assert rankme(shifted) < 0.5 * rankme(noise)
    assert effective_rank(shifted) == pytest.approx(effective_rank(noise), rel=1e-6)
    assert rankme(torch.zeros(4, 3)) == 0.0 and effective_rank(torch.zeros(1, 3)) == 0.0
    with pytest.raises(ValueError, match=r"\[rows, dim\]"):
        rankme(torch.zeros(2, 3, 4))


def test_token_sample_is_fixed_by_the_clip_index_not_by_batching():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(10, 64, 16, generator=g)
    whole = feature_ranks(tokens, max_rows=100)
    assert tokens_per_clip(10, 64, 100) == 10  # 10 clips x 10 tokens <= 100 rows
    parts = RankSample(10, max_rows=100)
    for start in (6, 0, 3):  # any batching, any order
        stop = {0: 3, 3: 6, 6: 10}[start]
        parts.add(tokens[start:stop], start)
    assert parts.ranks() == whole
    assert set(whole) == {"rankme_token", "rankme_clip", "erank_token", "erank_clip"}
    assert all(math.isfinite(v) and v > 1 for v in whole.values())
    assert whole["rankme_clip"] == pytest.approx(rankme(tokens.mean(1)))
    # below the cap every token is used
    assert feature_ranks(tokens, max_rows=10_000)["rankme_token"] == pytest.approx(rankme(tokens.reshape(-1, 16)))
    assert torch.equal(token_sample(64, 10, 3), token_sample(64, 10, 3))
    assert not torch.equal(token_sample(64, 10, 3), token_sample(64, 10, 4))
    assert even_sample(10, 4) == [0, 3, 6, 9] and even_sample(3, 8) == [0, 1, 2] and even_sample(5, 0) == []
