"""Frozen-backbone evaluation: an attentive probe on cached encoder tokens.

The encoder runs once per clip and view: `build_cache` (the Stage 2 cache machinery) stores its
final-norm tokens in Zarr, keyed by the encoder's sha256, the clip spec and the shard list, so
extra epochs, extra heads and re-runs cost no encoder forwards. Several probes ("heads"), one per
(lr, weight decay) pair, then train side by side on the same batches; the best one on the
validation split is reported, as in V-JEPA 2.

The probe is V-JEPA 2's attentive classifier: `depth - 1` self-attention blocks over the frozen
tokens, then one cross-attention block whose single learned query pools them into a vector, then
a linear layer. `depth=4` is the paper's probe; the default `depth=1` (the V-JEPA 1 pooler) keeps
tiny CPU runs fast.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tarfile
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from salt_cache.config import from_dict, to_dict
from salt_cache.errors import SaltCacheError
from salt_cache.models.vit import Block, init_weights

# V-JEPA 2's probe grid (the SALT paper's Table 6): 5 x 4 = 20 heads
PAPER_LRS = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4)
PAPER_WDS = (0.8, 0.4, 0.1, 0.01)
DEFAULT_SPEC = "demo-probe"


# --------------------------------------------------------------------------------------------
# The probe


class CrossAttention(nn.Module):
    """queries [B, Q, D] attend to tokens [B, N, D] -> [B, Q, D]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, nq, d = q.shape
        h = self.num_heads
        q = self.q(q).reshape(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(x).reshape(b, x.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class CrossAttentionBlock(nn.Module):
    """V-JEPA's pooling block: the tokens are normed, the query is not (it is a parameter)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = q + self.xattn(q, self.norm1(x))
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

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] -> pooled vector [B, D]."""
        for blk in self.blocks:
            x = blk(x, None)
        return self.pool(self.query.expand(x.shape[0], -1, -1), x).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


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
        """tokens [B, N, D] -> logits [K, B, num_classes]."""
        return torch.stack([h(x) for h in self.heads])


def head_param_groups(heads: ProbeHeads, grid: list[tuple[float, float]]) -> list[dict]:
    """Two AdamW groups per head: decayed weights and undecayed biases / norms (V-JEPA 2's rule:
    no decay on biases and 1-D parameters). `base_lr` drives the schedule."""
    groups = []
    for i, (head, (lr, wd)) in enumerate(zip(heads.heads, grid)):
        decay, no_decay = [], []
        for name, p in head.named_parameters():
            (no_decay if name.endswith("bias") or p.ndim <= 1 else decay).append(p)
        groups.append({"params": decay, "lr": lr, "base_lr": lr, "weight_decay": wd, "head": i})
        groups.append({"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0, "head": i})
    return groups


# --------------------------------------------------------------------------------------------
# Training on features held in memory (or read from a cache on demand)


@dataclass(frozen=True)
class ProbeConfig:
    """How the probes are trained. The heads are the grid lrs x wds, or `heads` [[lr, wd], ...]
    when given. V-JEPA 2: depth 4, 20 epochs, lrs PAPER_LRS, wds PAPER_WDS, cosine to zero."""

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
        if self.depth < 1:
            problems.append(f"depth: expected >= 1, got {self.depth}")
        if self.epochs < 1:
            problems.append(f"epochs: expected >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.warmup_epochs < 0:
            problems.append(f"warmup_epochs: expected >= 0, got {self.warmup_epochs}")
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


class FeatureSet:
    """Frozen tokens of a split as a tensor [rows, N, D] (any float dtype; batches come out as
    float32), with `labels` [rows] (class indices) and `groups` [rows] (clip index of each row:
    several views of one clip are averaged at evaluation)."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None):
        if tokens.ndim != 3:
            raise SaltCacheError(f"features: expected [rows, tokens, dim], got shape {tuple(tokens.shape)}")
        if len(labels) != len(tokens):
            raise SaltCacheError(f"features: {len(tokens)} rows but {len(labels)} labels")
        self.tokens = tokens
        self.labels = labels.long()
        self.groups = torch.arange(len(tokens)) if groups is None else groups.long()

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def batch(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[idx].to(device, torch.float32), self.labels[idx].to(device)


@dataclass
class ProbeRun:
    """What `train_probes` returns: the trained heads and one record per head."""

    model: ProbeHeads
    grid: list[tuple[float, float]]
    records: list[dict] = field(default_factory=list)
    best: int = 0
    predictions: np.ndarray | None = None  # best head's predicted class per val clip
    targets: np.ndarray | None = None  # true class per val clip


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine from 1 to 0 (V-JEPA 2's probe schedule has no warmup)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate_heads(model: ProbeHeads, data: FeatureSet, num_classes: int, batch_size: int,
                   device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (top-1 per head [K], mean cross-entropy per head [K], predictions [K, clips]) where the
    views of a clip are averaged in probability before the argmax; targets follow the sorted clip
    order of `data.groups`."""
    model.eval()
    k = len(model.heads)
    clips, inverse = torch.unique(data.groups, return_inverse=True)
    probs = torch.zeros(k, len(clips), num_classes, dtype=torch.float64)
    views = torch.zeros(len(clips), dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x, _ = data.batch(idx, device)
        p = model(x).float().softmax(-1).double().cpu()  # [K, B, C]
        probs.index_add_(1, inverse[idx], p)
        views.index_add_(0, inverse[idx], torch.ones(len(idx), dtype=torch.float64))
    probs /= views.view(1, -1, 1)
    targets = torch.zeros(len(clips), dtype=torch.long)
    targets[inverse] = data.labels
    pred = probs.argmax(-1)  # [K, clips]
    top1 = (pred == targets).double().mean(1).numpy()
    nll = -probs.gather(-1, targets.view(1, -1, 1).expand(k, -1, 1)).clamp_min(1e-12).log().mean((1, 2)).numpy()
    return top1, nll, pred.numpy()


def train_probes(train: FeatureSet, val: FeatureSet, num_classes: int, config: ProbeConfig = ProbeConfig(),
                 device: str | torch.device = "cpu", progress=None) -> ProbeRun:
    """Train one attentive probe per (lr, wd) of `config.grid()` side by side: each step draws
    one batch of train features, every head sees it, one backward pass updates all heads (the
    summed loss; the heads share no parameter, so each gets exactly its own gradient).

    Heads are scored on `val` after every epoch; the reported top-1 is the last epoch's, and the
    best head is the one with the highest final top-1 (ties: lower val loss)."""
    if len(train) == 0 or len(val) == 0:
        raise SaltCacheError(f"probe: need labelled train and val clips (got {len(train)} train rows, {len(val)} val rows)")
    if train.dim != val.dim:
        raise SaltCacheError(f"probe: train features are {train.dim} wide but val features {val.dim}")
    device = torch.device(device)
    grid = config.grid()
    torch.manual_seed(config.seed)
    base = AttentiveProbe(train.dim, num_classes, config.depth, config.num_heads, config.mlp_ratio)
    model = ProbeHeads(base, len(grid)).to(device)
    opt = torch.optim.AdamW(head_param_groups(model, grid), betas=config.betas)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[list[dict]] = [[] for _ in grid]
    task = progress.add_task(f"probe: {len(grid)} heads", total=config.epochs) if progress else None
    step = 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum = torch.zeros(len(grid), dtype=torch.float64)
        seen = 0
        for idx in torch.randperm(len(train), generator=gen).split(config.batch_size):
            factor = _lr_factor(step, total, warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            x, y = train.batch(idx, device)
            logits = model(x)  # [K, B, C]
            losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(grid)), reduction="none")
            losses = losses.view(len(grid), -1).mean(1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            loss_sum += losses.detach().double().cpu() * len(idx)
            seen += len(idx)
            step += 1
        top1, nll, _ = evaluate_heads(model, val, num_classes, config.batch_size, device)
        for i in range(len(grid)):
            history[i].append({"epoch": epoch + 1, "train_loss": float(loss_sum[i] / seen),
                               "val_loss": float(nll[i]), "top1": float(top1[i])})
        if progress:
            progress.advance(task)
    top1, nll, pred = evaluate_heads(model, val, num_classes, config.batch_size, device)
    records = [{"head": i, "lr": lr, "wd": wd, "top1": float(top1[i]), "val_loss": float(nll[i]),
                "train_loss": history[i][-1]["train_loss"], "history": history[i]}
               for i, (lr, wd) in enumerate(grid)]
    best = max(range(len(grid)), key=lambda i: (top1[i], -nll[i], -i))
    clips, inverse = torch.unique(val.groups, return_inverse=True)
    targets = torch.zeros(len(clips), dtype=torch.long)
    targets[inverse] = val.labels
    return ProbeRun(model=model.cpu().eval(), grid=grid, records=records, best=best,
                    predictions=pred[best], targets=targets.numpy())


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, names: list) -> dict:
    """{class name: {"accuracy", "count"}} over the classes present in `target`."""
    out = {}
    for c, name in enumerate(names):
        mask = target == c
        if mask.any():
            out[str(name)] = {"accuracy": float((pred[mask] == c).mean()), "count": int(mask.sum())}
    return out
