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

Clip geometry: the encoder is probed on clips like those it was trained on (frames, frame step or
fps, size, mean/std of its training clip, read from the checkpoint), centre crop, one view; an
explicit spec wins, and a checkpoint that records no training clip is refused (`probe_spec`).
The best head is picked on the validation split, as V-JEPA 2 does, so the report gives the
binomial standard error of its top-1 with it. Every report also gives the RankMe / effective
rank of the features (`salt_cache.diagnostics`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
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
from salt_cache.shards import shard_labels, task_info

# V-JEPA 2's probe grid (the SALT paper's Table 6): 5 x 4 = 20 heads
PAPER_LRS = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4)
PAPER_WDS = (0.8, 0.4, 0.1, 0.01)
# one binomial standard error of the best head's top-1 above this many points earns a warning
MAX_SE_POINTS = 2.5
RANK_ROWS = 1024  # feature rows (clip x view) per split behind the report's RankMe / effective rank


# --------------------------------------------------------------------------------------------
# The probe


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


def make_heads(dim: int, num_classes: int, config: "ProbeConfig") -> ProbeHeads:
    """One probe per (lr, wd) of `config.grid()`, all with the same initial weights: a pure
    function of `config.seed`."""
    torch.manual_seed(config.seed)
    base = AttentiveProbe(dim, num_classes, config.depth, config.num_heads, config.mlp_ratio)
    return ProbeHeads(base, len(config.grid()))


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
                   device) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (top-1 per head [K], cross-entropy per head [K], predictions [K, clips], targets
    [clips]). A clip's views are averaged in probability before the argmax and the loss; clips
    follow the sorted order of `data.groups`."""
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
    return top1, nll, pred.numpy(), targets.numpy()


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
    model = make_heads(train.dim, num_classes, config).to(device)
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
        top1, nll, pred, targets = evaluate_heads(model, val, num_classes, config.batch_size, device)
        for i in range(len(grid)):
            history[i].append({"epoch": epoch + 1, "train_loss": float(loss_sum[i] / seen),
                               "val_loss": float(nll[i]), "top1": float(top1[i])})
        if progress:
            progress.advance(task)
    records = [{"head": i, "lr": lr, "wd": wd, "top1": float(top1[i]), "val_loss": float(nll[i]),
                "train_loss": history[i][-1]["train_loss"], "history": history[i]}
               for i, (lr, wd) in enumerate(grid)]
    best = max(range(len(grid)), key=lambda i: (top1[i], -nll[i], -i))
    return ProbeRun(model=model.cpu().eval(), grid=grid, records=records, best=best,
                    predictions=pred[best], targets=targets)


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, names: list) -> dict:
    """{class name: {"accuracy", "count"}} over the classes present in `target`."""
    out = {}
    for c, name in enumerate(names):
        mask = target == c
        if mask.any():
            out[str(name)] = {"accuracy": float((pred[mask] == c).mean()), "count": int(mask.sum())}
    return out


# --------------------------------------------------------------------------------------------
# Frozen features through the cache machinery


class CachedTokens:
    """Rows of a feature cache read on demand: `[idx]` -> float32 [len(idx), N, D]. Used when a
    split's features do not fit the memory budget; small splits are loaded whole instead."""

    def __init__(self, reader, refs: list, tokens: int, dim: int):
        self.reader, self.refs = reader, refs
        self.shape = (len(refs), tokens, dim)
        self.ndim = 3

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, idx) -> torch.Tensor:
        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        return torch.from_numpy(np.stack([np.asarray(self.reader.read(self.refs[i]), dtype=np.float32) for i in idx]))


def check_labelled(paths: list[Path], split: str) -> int:
    """Every clip of every shard must carry a label; the error names the first shard and key.
    -> the number of clips."""
    total = 0
    for p in paths:
        labels = shard_labels(p)
        if not labels:
            raise SaltCacheError(f"{p}: {split} shard holds no clips")
        missing = [k for k, v in labels.items() if v is None or v == ""]
        if missing:
            more = f" (and {len(missing) - 1} more in this shard)" if len(missing) > 1 else ""
            raise SaltCacheError(f"{p}: {split} clip {missing[0]} has no label{more}; the probe needs labelled clips")
        total += len(labels)
    return total


def parse_floats(value, option: str) -> tuple[float, ...]:
    """'1e-3,3e-4' (or a sequence of numbers) -> (0.001, 0.0003); errors name the option."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            raise SaltCacheError(f"{option}: expected comma-separated numbers, got {item!r}") from None
    if not out:
        raise SaltCacheError(f"{option}: expected at least one number")
    return tuple(out)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def probe_spec(spec, encoder_config: dict, clip: dict | None = None, where: str = "the encoder checkpoint"):
    """The cache spec the probe encodes with, in order of precedence:
      1. `spec` (a CacheSpec, a YAML path or a bare name in cache_specs/), as given;
      2. `clip`, the encoder's own training clip (a ClipSpec dict from its checkpoint: frames,
         frame_step or fps, size, mean, std), with a centre crop and one view: the encoder is
         read on the inputs it learned from, not on some other geometry;
      3. neither: refused in one line naming `where` and --spec.
    Patch and tubelet sizes always come from the encoder. -> (CacheSpec, notes: list[str])."""
    from salt_cache.config import from_dict as clip_from_dict
    from salt_cache.spec import CacheSpec, load_spec
    from salt_cache.video import ClipSpec

    notes = []
    patch, tubelet = int(encoder_config["patch_size"]), int(encoder_config["tubelet_size"])
    if spec is None and clip is None:
        raise SaltCacheError(f"{where}: records no training clip (meta.clip), so the probe cannot match its clip "
                             "geometry; pass --spec (for init-model baselines: --frames, --frame-step and --size)")
    if spec is None:
        # random-crop ranges mean nothing for a centre crop: reset them, so encoders trained on
        # the same geometry get equal specs (and compare on identical clips)
        default = ClipSpec()
        c = replace(clip_from_dict(ClipSpec, dict(clip), source=f"{where}: clip"), crop="center",
                    scale=default.scale, ratio=default.ratio)
        spec = CacheSpec(name="training-clip", clip=c, views=1, seed=0, patch_size=patch, tubelet_size=tubelet)
        step = f"frame_step {c.frame_step}" if c.frame_step is not None else f"fps {c.fps:g}"
        notes.append(f"clips as the encoder was trained on ({where}): {c.frames} frames, {step}, {c.size} px; "
                     "centre crop, 1 view")
    elif isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    clip = spec.clip
    if clip.size % patch:
        raise SaltCacheError(f"spec {spec.name}: clip.size {clip.size} is not a multiple of the encoder's patch size {patch} (pass --spec)")
    if clip.frames % tubelet:
        raise SaltCacheError(f"spec {spec.name}: clip.frames {clip.frames} is not a multiple of the encoder's tubelet size {tubelet} (pass --spec)")
    if (spec.patch_size, spec.tubelet_size) != (patch, tubelet):
        notes.append(f"spec {spec.name}: patch/tubelet {spec.patch_size}/{spec.tubelet_size} set to the encoder's {patch}/{tubelet}")
        spec = replace(spec, patch_size=patch, tubelet_size=tubelet)
    if clip.crop != "center":
        notes.append(f"spec {spec.name}: {clip.crop} crops, not center crops: each of the {spec.views} views is a random crop")
    return spec, notes


def encoder_checkpoint(path: Path, workdir: Path) -> tuple[Path, dict, dict]:
    """An encoder checkpoint file for `build_cache`. `path` may hold an encoder (used as is), or
    be a training run's state checkpoint or run folder (its checkpoints/last.pt): its encoder is
    then saved as workdir/encoders/<sha256 of the source, 12 hex>.pt, once.
    -> (encoder file, encoder config dict, source: {"kind", "stage", "step", "clip": the
    training clip (an encoder's meta.clip, a run's config clip) or None, "clip_from"})."""
    from salt_cache.checkpoint import file_sha256, load_checkpoint, save_encoder

    path = Path(path)
    if path.is_file():
        ckpt = load_checkpoint(path)
        if ckpt.get("kind") == "encoder":
            # build_cache loads the weights itself
            meta = ckpt.get("meta") or {}
            return path, ckpt["config"], {"kind": "encoder", "stage": meta.get("stage"), "step": meta.get("step"),
                                          "clip": meta.get("clip"), "clip_from": f"{path.name} meta.clip"}
        del ckpt
    from salt_cache.train.runs import load_run_encoder

    model, meta = load_run_encoder(path)
    source = path / "checkpoints" / "last.pt" if path.is_dir() else path
    # a Stage 2 run records the clips it saw (a cache's views); else the run config's clip
    clip = meta.get("clip") or (meta.get("config") or {}).get("clip")
    out = Path(workdir) / "encoders" / f"{file_sha256(source)[:12]}.pt"
    if not out.is_file():
        save_encoder(out, model, {"origin": "probe", "source": str(source), "step": meta.get("step"),
                                  "stage": meta.get("stage"), "clip": clip})
    return out, model.config.to_dict(), {"kind": "run-state", "stage": meta.get("stage"), "step": meta.get("step"),
                                         "clip": clip, "clip_from": f"{source.name} run clip"}


def encode_split(encoder_ckpt: Path, paths: list[Path], spec, cache_dir: Path, batch_size: int = 8,
                 workers: int = 2, device: str = "cpu", progress=None) -> dict:
    """Encode every clip x view of `paths` once into a feature cache at `cache_dir` (a re-run
    finds the stores complete and encodes nothing). -> the build summary's counts as a dict
    (`rows_built`: encoder forwards of this call, one per clip x view)."""
    from salt_cache.cache import build_cache

    summary = build_cache(Path(encoder_ckpt), paths, spec, Path(cache_dir), batch_size=batch_size,
                          workers=workers, device=device, progress=progress)
    s = summary.to_dict()
    keep = ("clips", "rows", "ok", "failed", "clips_built", "rows_built", "stores_built", "stores_skipped", "wall_s")
    return {**{k: s[k] for k in keep}, "failures": s["failures"][:20]}


def load_split(cache_dir: Path, split: str) -> tuple[list[str], list, list, object]:
    """Rows of a feature cache -> (clip keys, refs per clip, raw labels per clip, reader)."""
    from salt_cache.cache import CacheReader

    reader = CacheReader(Path(cache_dir))
    keys, refs, labels = [], [], []
    for key in reader.keys():
        rows = list(reader.rows(key))
        if not rows:
            continue  # a clip that failed to decode has no usable row; counted by the caller
        label = reader.meta(key).get("label")
        if label is None or label == "":
            raise SaltCacheError(f"{cache_dir}: {split} clip {key} has no label; the probe needs labelled clips")
        keys.append(key)
        refs.append(rows)
        labels.append(label)
    return keys, refs, labels, reader


def class_index(train_labels: list, val_labels: list) -> tuple[list, dict, str | None]:
    """Raw labels -> (class list, {raw label: index}, note). Integer labels keep their order;
    any string label makes all labels names, mapped in sorted order (and the note says so)."""
    raw = list(train_labels) + list(val_labels)
    bad = [v for v in raw if isinstance(v, bool) or not isinstance(v, (int, str))]
    if bad:
        raise SaltCacheError(f"labels: expected integers or class names, got {bad[0]!r}")
    note = None
    if any(isinstance(v, str) for v in raw):
        classes = sorted({str(v) for v in raw})
        note = f"labels are names: mapped the {len(classes)} sorted names to classes 0..{len(classes) - 1}"
        return classes, {v: classes.index(str(v)) for v in set(raw)}, note
    classes = sorted(set(raw))
    return classes, {v: i for i, v in enumerate(classes)}, note


def build_features(keys: list[str], refs: list[list], labels: list, reader, index: dict,
                   max_bytes: float) -> FeatureSet:
    """One row per clip x view; `groups` ties the views of a clip together for evaluation."""
    flat, y, groups = [], [], []
    for g, (rows, label) in enumerate(zip(refs, labels)):
        for ref in rows:
            flat.append(ref)
            y.append(index[label])
            groups.append(g)
    tokens, dim = int(reader.tokens), int(reader.teacher_dim)
    if len(flat) * tokens * dim * 4 <= max_bytes:
        data = torch.from_numpy(np.stack([np.asarray(reader.read(r), dtype=np.float32) for r in flat]))
    else:
        data = CachedTokens(reader, flat, tokens, dim)
    return FeatureSet(data, torch.tensor(y), torch.tensor(groups))


def probe_encoder(encoder_ckpt: Path, train, val, *, spec=None, config: ProbeConfig | None = None,
                  epochs: int | None = None, batch_size: int | None = None, lrs=None, wds=None,
                  depth: int | None = None, device: str = "cpu", workdir: Path | None = None,
                  out: Path | None = None, encode_batch_size: int = 8, workers: int = 2,
                  class_names: list[str] | None = None, max_memory_gb: float = 8.0,
                  progress=None) -> dict:
    """Frozen evaluation of an encoder checkpoint with an attentive probe.

    encoder_ckpt: an encoder checkpoint, or a training run's checkpoint or folder (its encoder is
    extracted, see `encoder_checkpoint`); train / val: labelled shards (a folder,
    brace pattern, comma list or list). Features are cached under `workdir` (default: a temporary
    folder, removed afterwards); `spec` as in `probe_spec` (None: the checkpoint's training clip,
    centre crop, one view); `epochs`, `batch_size`, `lrs`, `wds` (sequences or '1e-3,3e-4'
    strings), `depth` override fields of `config`. `class_names[i]` names integer label i in the
    report (default: the "classes" of the val data's task.json, see `shards.task_info`).

    Returns the report (also written as JSON to `out`, a .json file or a folder): the best
    head's top-1 (chosen on val, "selection") with its binomial standard error ("top1_se") and
    per-class accuracy, chance, every head's (lr, wd, top-1, history), RankMe / effective rank of
    each split's features ("ranks"), the data ("task", "data") and clip geometry ("spec",
    "spec_from"), the feature caches (rows, tokens, width, encoder forwards of this call) and
    wall times."""
    from salt_cache.checkpoint import file_sha256
    from salt_cache.shards import resolve_shards

    t_start = time.perf_counter()
    config = config or ProbeConfig()
    over = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, depth=depth,
                                   lrs=None if lrs is None else parse_floats(lrs, "--lrs"),
                                   wds=None if wds is None else parse_floats(wds, "--wds")).items() if v is not None}
    if over:
        config = from_dict(ProbeConfig, {**to_dict(config), **over}, source="probe")
    given = Path(encoder_ckpt)
    if not given.exists():
        raise SaltCacheError(f"{given}: checkpoint not found")
    paths = {"train": resolve_shards(train), "val": resolve_shards(val)}
    shared = {p.resolve() for p in paths["train"]} & {p.resolve() for p in paths["val"]}
    if shared:
        raise SaltCacheError(f"{sorted(shared)[0]}: the same shard is in both --train and --val")
    clip_counts = {split: check_labelled(ps, split) for split, ps in paths.items()}

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="salt-probe-")
        workdir = Path(tmp.name)
    try:
        encoder_ckpt, enc_cfg, source = encoder_checkpoint(given, Path(workdir))
        if config.num_heads is None:
            config = replace(config, num_heads=int(enc_cfg["num_heads"]))
        spec_from = "--spec" if spec is not None else source["clip_from"] if source.get("clip") else None
        spec, notes = probe_spec(spec, enc_cfg, source.get("clip"), where=str(given))
        sha = file_sha256(encoder_ckpt)
        root = Path(workdir) / f"{sha[:12]}-{_digest(to_dict(spec))[:8]}"
        features, loaded = {}, {}
        t0 = time.perf_counter()
        for split, ps in paths.items():
            cache_dir = root / f"{split}-{_digest([str(p.resolve()) for p in ps])[:8]}"
            build = encode_split(encoder_ckpt, ps, spec, cache_dir, batch_size=encode_batch_size,
                                 workers=workers, device=device, progress=progress)
            keys, refs, labels, reader = load_split(cache_dir, split)
            n_clips = clip_counts[split]
            if not keys:
                raise SaltCacheError(f"{cache_dir}: no {split} clip could be decoded ({n_clips} clips in {len(ps)} shards)")
            loaded[split] = (keys, refs, labels, reader)
            features[split] = {"cache": str(cache_dir), "shards": len(ps), "clips": n_clips,
                               "clips_used": len(keys), "rows": sum(len(r) for r in refs),
                               "tokens": int(reader.tokens), "dim": int(reader.teacher_dim),
                               "grid": list(reader.grid), "build": build}
            if len(keys) < n_clips:
                notes.append(f"{split}: {n_clips - len(keys)} of {n_clips} clips failed to decode and are left out")
        t_features = time.perf_counter() - t0
        classes, index, note = class_index(loaded["train"][2], loaded["val"][2])
        if note:
            notes.append(note)
        data = {s: build_features(*loaded[s], index, max_memory_gb * 2**30) for s in ("train", "val")}
        t0 = time.perf_counter()
        ranks = {s: split_ranks(data[s]) for s in ("train", "val")}
        t_ranks = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = train_probes(data["train"], data["val"], len(classes), config, device=device, progress=progress)
        t_train = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()

    task = task_info(paths["val"][0].parent)
    class_names = class_names or task["classes"]
    names = [class_names[c] if class_names and isinstance(c, int) and 0 <= c < len(class_names) else c
             for c in classes]
    counts = np.bincount(run.targets, minlength=len(classes))
    best = run.records[run.best]
    n_val = len(run.targets)
    se = top1_standard_error(best["top1"], n_val)
    if 100 * se > MAX_SE_POINTS:
        notes.append(f"one standard error of the best top-1 is {100 * se:.1f} points on {n_val} val clips: validation "
                     f"sets must be large enough that one standard error is <= {MAX_SE_POINTS:g} points")
    report = {
        "encoder": {"path": str(given), **source, "sha256": sha, "config": enc_cfg},
        "task": task["name"],
        "data": {split: [str(p) for p in ps] for split, ps in paths.items()},
        "spec": to_dict(spec),
        "spec_from": spec_from,
        "probe": to_dict(config),
        "features": features,
        "classes": [str(n) for n in names],
        "num_classes": len(classes),
        "chance": 1.0 / len(classes),
        "majority": float(counts.max() / counts.sum()),
        "top1": best["top1"],
        "top1_se": se,
        "selection": f"best of {len(run.records)} heads on val (as V-JEPA 2)",
        "ranks": ranks,
        "best": {"head": best["head"], "lr": best["lr"], "wd": best["wd"], "top1": best["top1"],
                 "val_loss": best["val_loss"],
                 "per_class": per_class_accuracy(run.predictions, run.targets, names)},
        "heads": run.records,
        "grid": head_grid(run.records),
        "notes": notes,
        "wall_s": {"features": round(t_features, 3), "ranks": round(t_ranks, 3), "train": round(t_train, 3),
                   "total": round(time.perf_counter() - t_start, 3)},
    }
    if out is not None:
        write_report(report, out)
    return report


def top1_standard_error(top1: float, clips: int) -> float:
    """Binomial standard error sqrt(p (1 - p) / n) of a top-1 measured on n val clips (a fraction)."""
    return math.sqrt(top1 * (1.0 - top1) / clips) if clips > 0 else float("nan")


def split_ranks(data: FeatureSet, rows: int = RANK_ROWS) -> dict:
    """RankMe / effective rank of a split's features: up to `rows` rows (clip x view) spread
    evenly over the split, token level (an equal share of MAX_TOKEN_ROWS token rows from each)
    and clip level (each row's mean token). -> the four `diagnostics.RANK_KEYS` + "rows"."""
    from salt_cache.diagnostics import RankSample, even_sample

    picked = even_sample(len(data), rows)
    sample = RankSample(len(picked))
    for start in range(0, len(picked), 64):
        sample.add(data.tokens[torch.tensor(picked[start:start + 64])], start)
    return {**sample.ranks(), "rows": len(picked)}


def head_grid(records: list[dict]) -> dict:
    """Heads as a table: {"lrs", "wds" (first-seen order), "top1": [lr][wd] (None where no head
    has that pair; a repeated pair keeps its best top-1)}."""
    lrs = list(dict.fromkeys(r["lr"] for r in records))
    wds = list(dict.fromkeys(r["wd"] for r in records))
    top1 = [[None] * len(wds) for _ in lrs]
    for r in records:
        i, j = lrs.index(r["lr"]), wds.index(r["wd"])
        top1[i][j] = r["top1"] if top1[i][j] is None else max(top1[i][j], r["top1"])
    return {"lrs": lrs, "wds": wds, "top1": top1}


def write_report(report: dict, out: Path, name: str = "probe.json") -> Path:
    """Write JSON to `out` (a .json file, or a folder that gets `name`)."""
    from salt_cache.console import write_json

    out = Path(out)
    path = out if out.suffix == ".json" else out / name
    write_json(path, report)
    return path


def print_report(report: dict, console=None) -> None:
    """The heads grid, the best head's per-class accuracy and the summary, as rich tables."""
    from rich.table import Table

    from salt_cache.console import console as default_console

    console = console or default_console
    g, best_head = report["grid"], report["best"]["head"]
    if all(v is not None for row in g["top1"] for v in row):
        # a full lr x wd grid: one row per lr, one column per weight decay, best head starred
        grid = Table(title="heads: val top-1 %")
        grid.add_column("lr \\ wd", justify="right")
        for wd in g["wds"]:
            grid.add_column(f"{wd:g}", justify="right")
        best = (report["best"]["lr"], report["best"]["wd"])
        for lr, row in zip(g["lrs"], g["top1"]):
            grid.add_row(f"{lr:.0e}", *(f"{100 * v:.1f}" + (" *" if (lr, wd) == best else "") for wd, v in zip(g["wds"], row)))
    else:
        grid = Table(title="probe heads (val top-1)")
        for col in ("head", "lr", "wd", "top-1", "val loss", "train loss"):
            grid.add_column(col, justify="right")
        for r in report["heads"]:
            mark = " *" if r["head"] == best_head else ""
            grid.add_row(f"{r['head']}{mark}", f"{r['lr']:.0e}", f"{r['wd']:g}", f"{100 * r['top1']:.1f}",
                         f"{r['val_loss']:.3f}", f"{r['train_loss']:.3f}")
    console.print(grid)
    per = Table(title="best head, per class")
    per.add_column("class")
    per.add_column("top-1", justify="right")
    per.add_column("clips", justify="right")
    for name, v in report["best"]["per_class"].items():
        per.add_row(name, f"{100 * v['accuracy']:.1f}", str(v["count"]))
    console.print(per)
    if report.get("ranks"):
        ranks = Table(title="feature ranks (RankMe / effective rank)")
        for col in ("split", "rows", "RankMe token", "RankMe clip", "eff. rank token", "eff. rank clip"):
            ranks.add_column(col, justify="right")
        for split, r in report["ranks"].items():
            ranks.add_row(split, str(r["rows"]), f"{r['rankme_token']:.1f}", f"{r['rankme_clip']:.1f}",
                          f"{r['erank_token']:.1f}", f"{r['erank_clip']:.1f}")
        console.print(ranks)
    best = report["best"]
    task = f" on {report['task']}" if report.get("task") else ""
    summary = Table(title=f"probe of {Path(report['encoder']['path']).name}{task}")
    for col in ("top-1 ± 1 s.e.", "chance", "best lr", "best wd", "val clips", "features (s)", "train (s)"):
        summary.add_column(col, justify="right")
    se = report.get("top1_se")
    summary.add_row(f"{100 * best['top1']:.1f}" + ("" if se is None else f" ± {100 * se:.1f}"),
                    f"{100 * report['chance']:.1f}", f"{best['lr']:.0e}",
                    f"{best['wd']:g}", str(report["features"]["val"]["clips_used"]),
                    f"{report['wall_s']['features']:.1f}", f"{report['wall_s']['train']:.1f}")
    if report.get("selection"):
        summary.caption = f"selection: {report['selection']}; clips: {report.get('spec_from') or report['spec']['name']}"
    console.print(summary)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
