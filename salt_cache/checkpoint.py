"""Self-describing checkpoints.

One file per model: `{"format": "salt-cache", "kind": ..., "config": ..., "state_dict": ...,
"meta": ...}` saved with `torch.save` and loaded with `weights_only=True`, so loading a file from
a stranger never runs pickled code. Files are written to a temporary name and renamed, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from salt_cache.errors import SaltCacheError
from salt_cache.models import VideoViT, ViTConfig

FORMAT = "salt-cache"
FORMAT_VERSION = 1


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_encoder(path: Path, model: VideoViT, meta: dict | None = None) -> Path:
    """Write an encoder checkpoint (kind "encoder"): config + fp32 weights + meta."""
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "kind": "encoder",
                 "config": model.config.to_dict(), "state_dict": state, "meta": meta or {}}, path)
    return Path(path)


def load_checkpoint(path: Path, kind: str | None = None) -> dict:
    """Load any salt-cache checkpoint safely; `kind` checks what it holds."""
    path = Path(path)
    if not path.is_file():
        raise SaltCacheError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaltCacheError(f"{path}: not a loadable salt-cache checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SaltCacheError(f"{path}: not a salt-cache checkpoint (no 'format: {FORMAT}' record)")
    if kind is not None and ckpt.get("kind") != kind:
        raise SaltCacheError(f"{path}: holds a {ckpt.get('kind')!r} checkpoint, expected {kind!r}")
    return ckpt


def load_encoder(path: Path, device: str | torch.device = "cpu") -> tuple[VideoViT, dict]:
    """Encoder checkpoint -> (model in eval mode on `device`, the checkpoint dict without weights)."""
    ckpt = load_checkpoint(path, kind="encoder")
    try:
        model = VideoViT(ViTConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt.pop("state_dict"))
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise SaltCacheError(f"{path}: encoder checkpoint does not match its own config ({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), ckpt


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
