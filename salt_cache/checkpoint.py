"""Self-describing checkpoints.

One file per model: `{"format": "salt-cache", "kind": ..., "config": ..., "state_dict": ...,
"meta": ...}` saved with `torch.save` and loaded with `weights_only=True`, so loading a file from
a stranger never runs pickled code. Files are written to a temporary name and renamed, so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from salt_cache.config import path_field
from salt_cache.errors import SaltCacheError

if TYPE_CHECKING:
    import torch

    from salt_cache.models import VideoViT

# torch and the models are imported inside the functions, so InitConfig loads without torch (a fast CLI)

FORMAT = "salt-cache"
FORMAT_VERSION = 1


def atomic_save(obj, path: Path) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_encoder(path: Path, model: VideoViT, meta: dict | None = None) -> Path:
    """Write an encoder checkpoint (kind "encoder"): config + fp32 weights + meta."""
    import torch

    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "kind": "encoder",
                 "config": model.config.to_dict(), "state_dict": state, "meta": meta or {}}, path)
    return Path(path)


@dataclass(frozen=True)
class InitConfig:
    """`salt-cache init-model` and the recipe kind init-model: a registered size, its patching,
    positions and init seed, and optionally the clip it stands for (frames, frame_step and size,
    all three)."""

    out: Path = path_field()
    model: str
    patch_size: int = 16
    tubelet_size: int = 2
    pos_embed: str = "rope"
    seed: int = 0
    frames: int | None = None
    frame_step: int | None = None
    size: int | None = None


def init_encoder(config: InitConfig) -> tuple[Path, VideoViT]:
    """Write a randomly initialized encoder checkpoint (a test teacher, or the untrained baseline
    the probes are read against). With frames, frame_step and size (all three), meta["clip"]
    records that clip, so `probe` reads the baseline on the same geometry as the trained
    encoders it is compared with. -> (path, encoder)."""
    import json

    import torch

    from salt_cache.config import to_dict
    from salt_cache.models import build_encoder
    from salt_cache.video import ClipSpec

    c = config
    out, model, patch_size, tubelet_size, seed = c.out, c.model, c.patch_size, c.tubelet_size, c.seed
    frames, frame_step, size = c.frames, c.frame_step, c.size

    given = {"frames": frames, "frame_step": frame_step, "size": size}
    clip = None
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise SaltCacheError(f"{missing[0]}: frames, frame_step and size record the encoder's clip together; "
                                 f"give {missing[0]} too")
        try:
            spec = ClipSpec(frames=int(frames), frame_step=int(frame_step), size=int(size), crop="center")
        except (TypeError, ValueError):
            raise SaltCacheError(f"frames / frame_step / size: expected integers, got {frames!r} / {frame_step!r} / {size!r}") from None
        if spec.frames % tubelet_size or spec.size % patch_size:
            raise SaltCacheError(f"frames / size: a {spec.frames}-frame, {spec.size} px clip does not tile into "
                                 f"tubelets of {tubelet_size} x patches of {patch_size}")
        clip = json.loads(json.dumps(to_dict(spec)))  # plain lists, as the training stages store it
    torch.manual_seed(seed)
    try:
        enc = build_encoder(model, patch_size=patch_size, tubelet_size=tubelet_size, pos_embed=c.pos_embed)
    except ValueError as e:
        raise SaltCacheError(str(e)) from None
    meta = {"origin": "init-model", "seed": seed, **({"clip": clip} if clip else {})}
    return save_encoder(out, enc, meta=meta), enc


def load_checkpoint(path: Path, kind: str | None = None) -> dict:
    """Load any salt-cache checkpoint safely; `kind` checks what it holds."""
    import torch

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
    from salt_cache.models import VideoViT, ViTConfig

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
