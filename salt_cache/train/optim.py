"""AdamW, its parameter groups and the paper's schedules (pure functions of the step).

No weight decay on any 1-D parameter (biases, norm weights), on position embeddings or on mask
tokens: decaying them is a known cause of late-training loss rebound. The schedules follow
V-JEPA's: linear warmup start_lr -> lr, cosine lr -> final_lr over the remaining steps; weight
decay cosine weight_decay -> final_weight_decay over the whole run.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from salt_cache.train.config import OptimConfig

# names of parameters that are never decayed, whatever their shape
NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token", "query_token")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or any(part in name for part in NO_DECAY_NAMES)


def param_groups(named: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Named parameters -> two AdamW groups: {"params", "apply_wd": True} and the undecayed one.

    `apply_wd` tells `set_schedule` which group follows the weight-decay schedule."""
    decay, keep = [], []
    for name, p in named:
        if p.requires_grad:
            (keep if no_weight_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": 0.0, "apply_wd": True},
            {"params": keep, "weight_decay": 0.0, "apply_wd": False}]


def make_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters (groups from `param_groups`); lr and wd are set per step."""
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(param_groups(model.named_parameters()), lr=cfg.start_lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, weight_decay=0.0, fused=fused or None)


def lr_at(step: int, cfg: OptimConfig, total: int) -> float:
    """LR at optimizer step `step` (0-based): start_lr at 0, lr at warmup_steps, final_lr at total."""
    warmup = cfg.warmup_steps or 0
    if step < warmup:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wd_at(step: int, cfg: OptimConfig, total: int) -> float:
    """Weight decay at `step`: weight_decay at 0, final_weight_decay at total (cosine)."""
    progress = min(1.0, step / max(1, total))
    return cfg.final_weight_decay + (cfg.weight_decay - cfg.final_weight_decay) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_schedule(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, total: int) -> tuple[float, float]:
    """Write this step's lr into every group and its weight decay into the decayed ones."""
    lr, wd = lr_at(step, cfg, total), wd_at(step, cfg, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("apply_wd") else 0.0
    return lr, wd


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm to `max_norm` (None: measure only); returns the norm before."""
    params = [p for p in params if p.grad is not None]
    if max_norm is None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm)
