"""The attentive probe (V-JEPA 2's attentive classifier): `depth - 1` self-attention blocks over
frozen tokens, then one cross-attention block whose single learned query pools them into a
vector, then a linear layer; and `ProbeHeads`, K such probes trained side by side.
`depth=4` is the paper's probe; `depth=1` (the V-JEPA 1 pooler) keeps tiny CPU runs fast.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from salt_cache.errors import SaltCacheError
from salt_cache.models.vit import Block, init_weights


class CrossAttention(nn.Module):
    """queries [B, Q, D] attend to tokens [B, N, D] -> [B, Q, D].

    Same parameters as V-JEPA's (q, kv, proj), computed in the tokens' own space: the scores
    q_h . (W_k,h x) equal (W_k,h^T q_h) . x, and sum_n a_n (W_v,h x_n) equals W_v,h (sum_n a_n x_n),
    so no [N, 2D] key/value projection of every token is made. With few queries this costs
    O(N D heads) instead of O(N D^2), exactly: the key bias adds a constant to every score of a
    query and cancels in the softmax; the value bias passes through since the weights sum to one.

    `scale` and `shift` [D] (a LayerNorm's affine) apply to the tokens, folded the same way, so
    the [B, N, D] tokens never need a gradient and can be shared by several probes."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None) -> torch.Tensor:
        b, nq, d = q.shape
        h = self.num_heads
        hd = d // h
        w_k, w_v = self.kv.weight[:d].view(h, hd, d), self.kv.weight[d:].view(h, hd, d)
        qh = self.q(q).view(b, nq, h, hd) * hd ** -0.5
        keyq = torch.einsum("bqhj,hjd->bhqd", qh, w_k)  # each head's query, mapped to token space
        if scale is not None:
            keyq = keyq * scale  # (x * scale + shift) . k = x . (k * scale) + a constant per query
        attn = torch.einsum("bhqd,bnd->bhqn", keyq, x).softmax(-1)
        pooled = torch.einsum("bhqn,bnd->bqhd", attn, x)  # [B, Q, heads, D]
        if scale is not None:
            pooled = pooled * scale
        if shift is not None:
            pooled = pooled + shift
        out = torch.einsum("bqhd,hjd->bqhj", pooled, w_v)
        if self.kv.bias is not None:
            out = out + self.kv.bias[d:].view(h, hd)
        return self.proj(out.reshape(b, nq, d))


def normalize_tokens(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim: what every probe's pooling norm starts from."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class CrossAttentionBlock(nn.Module):
    """V-JEPA's pooling block: the tokens are normed, the query is not (it is a parameter).
    `normed` (= normalize_tokens(x)) may be passed in when several probes share the tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, q: torch.Tensor, x: torch.Tensor | None, normed: torch.Tensor | None = None) -> torch.Tensor:
        if normed is None:
            normed = normalize_tokens(x, self.norm1.eps)
        q = q + self.xattn(q, normed, self.norm1.weight, self.norm1.bias)
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """Frozen tokens [B, N, D] -> class logits [B, num_classes].

    `depth - 1` self-attention blocks (no positions: the tokens carry what the encoder put in
    them), one cross-attention block with one learned query -> pooled [B, D] -> linear head."""

    def __init__(self, dim: int, num_classes: int, depth: int = 1, num_heads: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if depth < 1:
            raise SaltCacheError(f"probe depth: expected >= 1, got {depth}")
        num_heads = num_heads or default_num_heads(dim)
        if dim % num_heads:
            raise SaltCacheError(f"probe heads: feature width {dim} is not divisible by {num_heads} heads")
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, True, 0.0, rope=False) for _ in range(depth - 1))
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.pool = CrossAttentionBlock(dim, num_heads, mlp_ratio)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_weights)
        trunc_normal_(self.query, std=0.02)

    def pooled(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, N, D] -> pooled vector [B, D]. `normed`: normalize_tokens(x), precomputed
        (only for a probe without self-attention blocks, whose pooling sees x itself)."""
        for blk in self.blocks:
            x = blk(x, None)
        if self.blocks:
            normed = None
        return self.pool(self.query.expand(x.shape[0], -1, -1), x, normed).squeeze(1)

    def forward(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.pooled(x, normed))


def default_num_heads(dim: int) -> int:
    """The most attention heads (<= 16) that leave each head at least 16 dims (8 for tiny dims)."""
    for h in (16, 12, 8, 6, 4, 3, 2, 1):
        if dim % h == 0 and dim // h >= (16 if dim >= 64 else 8):
            return h
    return 1


class ProbeHeads(nn.Module):
    """K independent probes that start from identical weights, so after training they differ
    only through their (lr, weight decay). One batch of features feeds all of them."""

    def __init__(self, probe: AttentiveProbe, k: int):
        super().__init__()
        self.heads = nn.ModuleList(copy.deepcopy(probe) for _ in range(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] -> logits [K, B, num_classes]. Probes that pool the tokens directly
        share one normalization of them (the costly [B, N, D] part)."""
        normed = None if any(len(h.blocks) for h in self.heads) else normalize_tokens(x)
        return torch.stack([h(x, normed) for h in self.heads])
