"""Stage 1, V-Pixel: train the teacher by pixel reconstruction under multi-block masks.

The encoder sees the context tokens of a mask set only (gathered right after the patch
embedding, with their true 3D positions); a narrow decoder (`Predictor`) puts mask tokens at the
target positions and predicts their pixels. MSE on target tokens, averaged over the mask sets.

Target (VideoMAE's norm_pix_loss): the clip is first mapped back to [0, 1] pixels (decode_view
returns it ImageNet-normalized), cut into tubelet patches (tubelet x patch x patch), and each
patch is normalized per channel by its own mean and (unbiased) std, + 1e-6. Since a per-channel
affine map commutes with this normalization, un-normalizing first only matters through the eps;
we do it, as VideoMAE does, so the eps means what it means there. A patch's values are flattened
pixel-major, channel-minor: [(t, y, x), c].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from salt_cache.checkpoint import save_encoder
from salt_cache.console import write_json
from salt_cache.models import Predictor, VideoViT
from salt_cache import dist
from salt_cache.train.config import HeadConfig, TrainConfig, plain
from salt_cache.train.data import PlanAndDecode, on_device
from salt_cache.train.engine import Interval, Stage, check_inputs, check_memory, fit, make_loaders, val_columns
from salt_cache.train.optim import make_optimizer
from salt_cache.train.runs import Run, print_run_summary

STAGE = "teacher"
EXPORT = "teacher"  # a finished run hands on RUN/teacher.pt
EPS = 1e-6


@dataclass
class DecoderConfig(HeadConfig):
    """The pixel decoder (VideoMAE's is 384 wide, 4 deep, 6 heads)."""


@dataclass
class TeacherConfig(TrainConfig):
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    norm_pix: bool = True  # per-patch, per-channel target normalization (VideoMAE)

    def head(self) -> DecoderConfig:
        return self.decoder


# ---------------------------------------------------------------- target and loss

def patchify(clip: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, tubelet * patch * patch, C], tokens in the encoder's (t, h, w) order."""
    b, c, t, h, w = clip.shape
    x = clip.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, -1, tubelet * patch * patch, c)


def unpatchify(patches: torch.Tensor, grid, patch: int, tubelet: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, tubelet * patch * patch, C] -> [B, C, T, H, W]."""
    b, _, _, c = patches.shape
    gt, gh, gw = grid
    x = patches.reshape(b, gt, gh, gw, tubelet, patch, patch, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, gt * tubelet, gh * patch, gw * patch)


def unnormalize(clip: torch.Tensor, mean, std) -> torch.Tensor:
    """decode_view's normalized clip [B, C, T, H, W] -> pixels in [0, 1]."""
    m = torch.as_tensor(mean, dtype=clip.dtype, device=clip.device).view(1, -1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=clip.dtype, device=clip.device).view(1, -1, 1, 1, 1)
    return clip * s + m


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel mean and std + EPS of [..., P, C] -> each [..., 1, C]."""
    return patches.mean(dim=-2, keepdim=True), patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + EPS


def pixel_targets(clip: torch.Tensor, mean, std, patch: int, tubelet: int, norm_pix: bool = True) -> torch.Tensor:
    """Normalized clip [B, C, T, H, W] -> V-Pixel targets [B, N, tubelet * patch * patch * C]."""
    x = patchify(unnormalize(clip.float(), mean, std), patch, tubelet)
    if norm_pix:
        m, s = patch_stats(x)
        x = (x - m) / s
    return x.flatten(2)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] at indices idx [B, K] -> [B, K, ...]."""
    shape = idx.shape + x.shape[2:]
    return torch.gather(x, 1, idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(shape))


class VPixel(nn.Module):
    """Encoder + pixel decoder. forward(batch) -> (loss, per-set losses [n_sets]).

    batch: {"clip": [B, C, T, H, W] normalized, "masks": [(ctx_idx [B, Nc], tgt_idx [B, Nt]), ...]}."""

    def __init__(self, encoder: VideoViT, decoder: Predictor, mean, std, norm_pix: bool = True):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.mean, self.std, self.norm_pix = tuple(mean), tuple(std), norm_pix
        self.patch, self.tubelet = encoder.config.patch_size, encoder.config.tubelet_size

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        """The teacher's tokens [B, N, D] of the whole clip (validation diagnostics)."""
        return self.encoder(clip)

    def predict(self, clip: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
        """Predicted (normalized) target patches [B, Nt, P * C]; the encoder gets context tokens only."""
        grid = self.encoder.grid(clip.shape)
        return self.decoder(self.encoder(clip, ctx_idx), ctx_idx, tgt_idx, grid)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        clip = batch["clip"]
        with torch.no_grad():
            targets = pixel_targets(clip, self.mean, self.std, self.patch, self.tubelet, self.norm_pix)
        losses = [F.mse_loss(self.predict(clip, ctx, tgt).float(), gather_tokens(targets, tgt))
                  for ctx, tgt in batch["masks"]]
        per_set = torch.stack(losses)
        return per_set.mean(), per_set

    @torch.no_grad()
    def reconstruct(self, clip: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pictures in [0, 1], each [B, C, T, H, W]: the input, what the encoder sees (other tokens
        grey), and the reconstruction (context pixels + predicted targets, the predictions
        un-normalized with each target patch's own mean and std, VideoMAE style)."""
        grid = self.encoder.grid(clip.shape)
        pixels = patchify(unnormalize(clip.float(), self.mean, self.std), self.patch, self.tubelet)
        b, _, p, c = pixels.shape
        pred = self.predict(clip, ctx_idx, tgt_idx).float().reshape(b, -1, p, c)
        if self.norm_pix:
            m, s = patch_stats(gather_tokens(pixels, tgt_idx))
            pred = pred * s + m
        masked = torch.full_like(pixels, 0.5)
        masked.scatter_(1, ctx_idx[:, :, None, None].expand(-1, -1, p, c), gather_tokens(pixels, ctx_idx))
        recon = masked.clone()
        recon.scatter_(1, tgt_idx[:, :, None, None].expand(-1, -1, p, c), pred)
        def back(x):
            return unpatchify(x, grid, self.patch, self.tubelet).clamp(0, 1)
        return {"input": back(pixels), "masked": back(masked), "reconstruction": back(recon)}


def build_model(config: TeacherConfig) -> VPixel:
    encoder = VideoViT(config.model.vit())
    c = encoder.config
    d = config.decoder
    decoder = Predictor(encoder.embed_dim, c.in_chans * c.tubelet_size * c.patch_size ** 2, embed_dim=d.embed_dim,
                        depth=d.depth, num_heads=d.num_heads, mlp_ratio=d.mlp_ratio, pos_embed=c.pos_embed)
    return VPixel(encoder, decoder, config.clip.mean, config.clip.std, config.norm_pix)


def save_picture(model: VPixel, batch: dict, path: Path, step: int, n: int = 4) -> Path:
    """Reconstruction grid of the first `n` clips of `batch`, for the mask set hiding the most."""
    from salt_cache.viz import save_clip_grid

    k = max(range(len(batch["masks"])), key=lambda i: batch["masks"][i][1].shape[1])
    ctx, tgt = (t[:n] for t in batch["masks"][k])
    was_training = model.training
    model.eval()  # no drop-path draws: a picture must not move the RNG of the run
    rows = model.reconstruct(batch["clip"][:n], ctx, tgt)
    model.train(was_training)
    return save_clip_grid(path, rows, title=f"step {step}: mask set {k} ({tgt.shape[1]} target tokens per clip)")


# ---------------------------------------------------------------- the run

def train(config: TeacherConfig, out: Path, resume: bool = False, stop_at: int | None = None,
          show_progress: bool = True) -> dict:
    """Train a V-Pixel teacher into run folder `out`; writes out/teacher.pt when the run ends.

    resume: continue from out/checkpoints/last.pt (the config must match). stop_at: end this
    session after that step, with a checkpoint (resume later). Returns a summary dict."""
    env = dist.setup(config.device, config.workers)
    try:
        return _train(config, Path(out), resume, stop_at, env, show_progress)
    finally:
        dist.teardown(env)


def _train(config: TeacherConfig, out: Path, resume: bool, stop_at: int | None, env: dist.DistEnv,
           show_progress: bool) -> dict:
    t_start = time.perf_counter()
    inputs = check_inputs(config, env, stop_at)
    check_memory(config, inputs, env)
    interval = Interval([m.name for m in config.masks])
    run = Run(out, config, env, STAGE, interval.columns(), val_columns(interval.set_names, config.val_rank_rows > 0), resume=resume)

    torch.manual_seed(config.seed)
    model = build_model(config).to(env.device)
    optimizer = make_optimizer(model, config.optim, env.device)
    modules = {"encoder": model.encoder, "decoder": model.decoder}
    run.restore(modules, optimizer)
    if run.state is not None:
        interval.load_state(run.state["interval"])

    data, val = make_loaders(config, PlanAndDecode(config.clip, config.seed), inputs, env, run,
                             missing_val="no validation loss; pictures use train clips")
    if config.compile:
        # in place: state-dict keys stay unprefixed; dynamic: context/target counts vary per batch
        model.encoder.compile(dynamic=True)
        model.decoder.compile(dynamic=True)
    net = dist.wrap(model, env)
    run.restore_rng()  # last, so nothing above shifts the RNG streams of a resumed run

    def picture(step: int, last_batch: dict | None) -> None:
        pic = val.batch(0) if val is not None else last_batch
        if pic is not None:
            save_picture(model, on_device(pic, env.device), run.folder.picture(step), step)

    stage = Stage(title="V-Pixel", config=config, model=model, net=net, modules=modules, optimizer=optimizer,
                  data=data, val=val, interval=interval, model_configs={"decoder": model.decoder.config},
                  on_checkpoint=picture)
    summary = {"run": str(out), "rank": env.rank, "world_size": env.world_size, "start_step": run.step,
               "steps": config.steps}
    summary.update(fit(stage, run, stop_at, show_progress))
    summary["wall_s"] = time.perf_counter() - t_start
    end, loss, val_loss = summary["end_step"], summary["loss"], summary["val_loss"]
    if end == config.steps and env.is_main:
        teacher = save_encoder(run.folder.export(EXPORT), model.encoder, meta={
            "origin": "train-teacher", "stage": STAGE, "run": str(out.resolve()), "step": end,
            "clip": plain(config.clip), "masks": plain(config.masks), "decoder": dict(model.decoder.config),
            "norm_pix": config.norm_pix, "train_loss": loss, "val_loss": val_loss, "config": plain(config)})
        summary["teacher"] = str(teacher)
    if env.is_main:
        write_json(run.folder.summary, summary)
    return summary


def print_summary(summary: dict) -> None:
    print_run_summary(summary, f"V-Pixel run {summary['run']}", "teacher")
