"""Stage 2, SALT: train a student and predictor to predict the frozen teacher's latents.

Cached mode (the point of the project): the data pipeline joins every shard sample with the
latent cache by key, picks one of the clip's stored views, decodes the clip at exactly that view
(contract 1) and reads that row's latents. No teacher weights are loaded.

Online mode (`online_teacher`): the same trainer, but the targets come from running the teacher
on the same clips. With a cache it uses the cache's views (the correctness oracle: same loss as
cached mode within the storage dtype's tolerance); without one it plans views like Stage 1 (the
paper's own setting and the speed baseline).

EMA mode (`ema.enabled`, `--ema`): the V-JEPA / V-JEPA 2 baseline in the same trainer, with the
same masks, predictor, loss, optimizer and data path (views planned like Stage 1, no cache). The
target encoder starts as a copy of the student and follows it as an exponential moving average
after every optimizer step (`ema_update`, momentum schedule `ema_momentum`); it runs on the whole
clip under no_grad, is never trained, never in training mode, and is saved in run checkpoints
("target_encoder"), so resume stays exact. The export follows V-JEPA 2, whose frozen evaluation
uses its `target_encoder`: student.pt is the EMA target encoder, online.pt the online student.

Loss: for each mask set the student encodes the context tokens only; the predictor places mask
tokens at the target positions and regresses `layer_norm` (no affine) of the teacher latents
there; L1 by default, averaged over the mask sets.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from salt_cache.checkpoint import file_sha256, load_encoder, save_encoder
from salt_cache.console import console, write_json
from salt_cache.errors import DecodeError, SaltCacheError
from salt_cache.models import Predictor, VideoViT
from salt_cache.shards import shard_keys
from salt_cache import dist
from salt_cache.train.config import HeadConfig, TrainConfig, plain
from salt_cache.train.data import PlanAndDecode, Sample, StageContext, view_norm
from salt_cache.train.engine import Interval, Stage, check_inputs, check_memory, fit, make_loaders, val_columns
from salt_cache.train.optim import make_optimizer
from salt_cache.train.runs import Run, print_run_summary
from salt_cache.video import decode_view_uint8, frames_to_clip, view_crc, view_rng

STAGE = "student"
EXPORT = "student"  # a finished run hands on RUN/student.pt (and RUN/online.pt with --ema)
LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}


@dataclass
class PredictorConfig(HeadConfig):
    """The predictor (paper, Table 4: 384 wide, 12 deep, 16 heads); its output width is the
    teacher's, read from the cache (or the online teacher)."""

    depth: int = 12
    num_heads: int = 16


@dataclass
class EmaConfig:
    """The V-JEPA baseline: targets from an exponential moving average of the student itself.
    After optimizer step i (0-based) of a `steps`-step run, target = m * target + (1 - m) *
    student with m = momentum[0] + (momentum[1] - momentum[0]) * i / steps: linear over the run,
    as V-JEPA / V-JEPA 2's momentum scheduler (without their ipe_scale stretch of the horizon)."""

    enabled: bool = False
    momentum: tuple[float, float] = (0.998, 1.0)

    def __post_init__(self) -> None:
        if not all(0.0 <= m <= 1.0 for m in self.momentum):
            raise SaltCacheError(f"momentum: expected two values in [0, 1], got {list(self.momentum)}")


@dataclass
class StudentConfig(TrainConfig):
    cache: str | None = None
    online_teacher: str | None = None
    ema: EmaConfig = field(default_factory=EmaConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    target_norm: Literal["layer_norm", "none"] = "layer_norm"
    loss: Literal["l1", "mse", "smooth_l1"] = "l1"

    def head(self) -> PredictorConfig:
        return self.predictor

    @property
    def mode(self) -> str:
        """"ema" (V-JEPA baseline), "online" (a teacher runs on every batch) or "cached"."""
        return "ema" if self.ema.enabled else "online" if self.online_teacher is not None else "cached"


# ---------------------------------------------------------------- model and loss

def normalize_targets(latents: torch.Tensor, target_norm: str) -> torch.Tensor:
    """Teacher latents [B, N, D] -> regression targets (float32)."""
    latents = latents.float()
    return F.layer_norm(latents, latents.shape[-1:]) if target_norm == "layer_norm" else latents


class SALT(nn.Module):
    """Student + predictor (+ a frozen teacher in online mode, the EMA target encoder in EMA
    mode). forward(batch) -> (loss, per-set losses).

    batch: {"clip": [B, C, T, H, W], "masks": [(ctx [B, Nc], tgt [B, Nt]), ...], and in cached
    mode "latents": [B, N, D_teacher]}."""

    def __init__(self, student: VideoViT, predictor: Predictor, target_norm: str = "layer_norm", loss: str = "l1",
                 teacher: VideoViT | None = None):
        super().__init__()
        self.student, self.predictor = student, predictor
        self.target_norm, self.loss_fn = target_norm, LOSSES[loss]
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: never in training mode (no drop-path draws)
        return self

    def targets(self, batch: dict) -> torch.Tensor:
        if self.teacher is None:
            return normalize_targets(batch["latents"], self.target_norm)
        with torch.no_grad():
            return normalize_targets(self.teacher(batch["clip"]), self.target_norm)

    def encode(self, clip: torch.Tensor) -> torch.Tensor:
        """The student's tokens [B, N, D] of the whole clip (validation diagnostics)."""
        return self.student(clip)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        clip = batch["clip"]
        grid = self.student.grid(clip.shape)
        targets = self.targets(batch)
        losses = []
        for ctx, tgt in batch["masks"]:
            pred = self.predictor(self.student(clip, ctx), ctx, tgt, grid)
            y = torch.gather(targets, 1, tgt.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))
            losses.append(self.loss_fn(pred.float(), y))
        per_set = torch.stack(losses)
        return per_set.mean(), per_set


def ema_momentum(step: int, ema: EmaConfig, total: int) -> float:
    """The EMA momentum applied after optimizer step `step` (0-based) of a `total`-step run."""
    m0, m1 = ema.momentum
    return m0 + (m1 - m0) * min(1.0, step / max(1, total))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameter by parameter (V-JEPA 2's update; the
    encoders have no persistent buffers)."""
    t, o = list(target.parameters()), [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, o, alpha=1.0 - m)


# ---------------------------------------------------------------- the cache join

class CacheJoin:
    """Stage 2's sample stage: rows of the clip's key -> one stored view (a new pick per epoch,
    seeded by (seed, epoch, key); view 0 in validation) -> the clip at that view as uint8 pixels
    with the view's normalization (the row's stored frames when the cache has student-ready
    views, else decoded from the source), and the row's latents in their stored dtype (int8 with
    its per-channel scales) unless `latents` is False (online oracle). Clips with no ok row are
    skipped (the batcher counts them).

    The view's pixels are checked against the digest the build recorded: stored frames against
    their CRC-32C on every read (`CacheReader.frames`), a source decode against its `view_crc`
    (stores that have it). Repacked shards or another decoder that gives other pixels stop the
    run, naming the clip, instead of silently training on inputs the teacher never saw."""

    def __init__(self, cache: Path, seed: int, latents: bool = True):
        from salt_cache.cache import CacheReader

        self.reader = CacheReader(cache)  # cheap: stores open lazily inside each worker
        self.seed, self.latents = seed, latents

    def __call__(self, sample: Sample, ctx: StageContext) -> dict | None:
        rows = self.reader.rows(sample.key)
        if not rows:
            return None
        if ctx.train:
            ref = rows[int(view_rng(sample.key, ctx.epoch, self.seed).integers(len(rows)))]
        else:
            ref = min(rows, key=lambda r: r.view_index)
        view = self.reader.view(ref)
        try:
            if self.reader.has_frames:  # the stored view: no source decode, the teacher's exact pixels
                clip = frames_to_clip(self.reader.frames(ref))
            else:
                clip = decode_view_uint8(sample.video, view)
        except DecodeError:
            return None
        want = None if self.reader.has_frames else self.reader.view_crc(ref)
        if want is not None and view_crc(clip) != want:
            raise SaltCacheError(
                f"{sample.key}: the decoded view (store {ref.store} row {ref.row}) differs from the pixels the teacher "
                f"saw (CRC {view_crc(clip):08x}, built {want:08x}): repacked shards or another FFmpeg / decord build; "
                f"train on the shards the cache was built from, with the same decoder")
        out = {"clip": clip, "norm": view_norm(view), "view_index": ref.view_index}
        if self.latents:
            out["latents"], scale = self.reader.read_stored(ref)
            if scale is not None:  # int8 rows: dequantized on the device (`data.on_device`)
                out["latent_scale"] = scale
        return out


# ---------------------------------------------------------------- refusals

# the student config field that must agree with each field of the cache (`CacheHeader.require`)
CACHE_FIELDS = {"patch_size": "model.patch_size", "tubelet_size": "model.tubelet_size",
                "frames": "clip.frames", "size": "clip.size"}


def check_cache(config: StudentConfig, shards: list[Path], val_shards: list[Path] | None,
                env: dist.DistEnv | None = None) -> dict:
    """Refuse a cache that fails its quick checks, was built from other shard files than the
    ones given, does not fit the student's token geometry, or lacks clips of the given shards.
    Returns the fingerprint summary stored with checkpoints.

    The checks run once, on rank 0 (they read every store's record and every shard's tar
    headers), which also writes the cache's key index if it is missing; the verdict is broadcast,
    so every rank refuses alike."""
    verdict = None
    if env is None or env.is_main:
        try:
            verdict = {"ok": _check_cache(config, shards, val_shards)}
        except SaltCacheError as e:
            verdict = {"error": str(e)}
    if env is not None:
        verdict = dist.broadcast_object(verdict, env)
    if "error" in verdict:
        raise SaltCacheError(verdict["error"])
    return verdict["ok"]


def shard_difference(header, shards: list[Path]) -> str | None:
    """The first given shard whose file name and size do not match a shard the cache was built
    from (repacked or other data gives other clips than the teacher saw), or None."""
    built: dict[str, set[int]] = {}
    for s in header.shards:
        built.setdefault(s.name, set()).add(s.bytes)
    for p in shards:
        size = Path(p).stat().st_size
        if p.name not in built:
            return f"shard {p} is not one the cache was built from (its data lists {len(header.shards)} shards, e.g. {header.shards[0].name})"
        if size not in built[p.name]:
            want = " or ".join(str(b) for b in sorted(built[p.name]))
            return f"shard {p} has {size} bytes, the cache was built from {p.name} of {want} bytes (repacked or changed data)"
    return None


def _check_cache(config: StudentConfig, shards: list[Path], val_shards: list[Path] | None) -> dict:
    from salt_cache.cache import CacheReader, verify_cache
    from salt_cache.cache.index import ensure_index

    cache = Path(config.cache)
    problems = verify_cache(cache, digest=False, rows=False)
    if problems:
        more = f" (and {len(problems) - 1} more; run salt-cache verify)" if len(problems) > 1 else ""
        raise SaltCacheError(f"{cache}: fails its quick checks: {problems[0].line()}{more}")
    reader = CacheReader(cache)
    reader.header.require(cache, who="the student config", labels=CACHE_FIELDS, patch_size=config.model.patch_size,
                          tubelet_size=config.model.tubelet_size, frames=config.clip.frames, size=config.clip.size)
    ensure_index(cache, reader.header)
    for label, group in (("train", shards), ("val", val_shards or [])):
        for shard in group:
            missing = [k for k in shard_keys(shard) if not reader.has_key(k)]
            if missing:
                raise SaltCacheError(f"{cache}: has no rows for {len(missing)} clip(s) of {label} shard {shard} "
                                     f"(first: {missing[0]}); build the cache over these shards")
    # the same keys in other shard files (repacked, re-encoded) can hold other clips
    diff = shard_difference(reader.header, list(shards) + list(val_shards or []))
    if diff:
        raise SaltCacheError(f"{cache}: {diff}")
    h = reader.header
    return {"path": str(cache.resolve()), "teacher_sha256": h.teacher.sha256, "spec": h.spec.name,
            "grid": list(reader.grid), "teacher_dim": reader.teacher_dim, "dtype": reader.dtype,
            "failed_rows": reader.counts().get("failed", 0)}


# ---------------------------------------------------------------- the run

def train(config: StudentConfig, out: Path, resume: bool = False, stop_at: int | None = None,
          show_progress: bool = True) -> dict:
    """Train a SALT student into run folder `out`; writes out/student.pt when the run ends.

    resume: continue from out/checkpoints/last.pt (same config). stop_at: end this session after
    that step, with a checkpoint. Returns a summary dict."""
    env = dist.setup(config.device, config.workers)
    try:
        return _train(config, Path(out), resume, stop_at, env, show_progress)
    finally:
        dist.teardown(env)


def _targets_source(config: StudentConfig, shards, val_shards, env) -> tuple[dict, int | None, VideoViT | None]:
    """(cache fingerprint summary or {}, teacher width (None in EMA mode: the student's), online
    teacher or None)."""
    if config.ema.enabled:
        given = [f for f, v in (("--cache", config.cache), ("--online-teacher", config.online_teacher)) if v is not None]
        if given:
            raise SaltCacheError(f"ema: --ema trains against an EMA of the student itself, not a teacher; drop {given[0]}")
        return {}, None, None
    if config.cache is None and config.online_teacher is None:
        raise SaltCacheError("cache: give --cache CACHE (or --online-teacher CKPT for the online baseline, "
                             "or --ema for the V-JEPA baseline)")
    fingerprint = check_cache(config, shards, val_shards, env) if config.cache is not None else {}
    if config.online_teacher is None:
        return fingerprint, fingerprint["teacher_dim"], None
    teacher, _ = load_encoder(Path(config.online_teacher), env.device)
    tc = teacher.config
    if (tc.patch_size, tc.tubelet_size) != (config.model.patch_size, config.model.tubelet_size):
        raise SaltCacheError(f"{config.online_teacher}: teacher patch {tc.patch_size} / tubelet {tc.tubelet_size}, "
                             f"student {config.model.patch_size} / {config.model.tubelet_size}: token grids differ")
    if fingerprint and fingerprint["teacher_sha256"] != file_sha256(Path(config.online_teacher)):
        console.print("[yellow]online teacher differs from the cache's teacher: its views are used, its latents are not")
    fingerprint = {**fingerprint, "online_teacher": str(Path(config.online_teacher).resolve())}
    return fingerprint, tc.embed_dim, teacher


def build_model(config: StudentConfig, teacher_dim: int | None = None, teacher: VideoViT | None = None) -> SALT:
    """Student + predictor (output width `teacher_dim`) + `teacher`; in EMA mode the teacher is
    a copy of the freshly initialized student and the width is the student's."""
    student = VideoViT(config.model.vit())
    if config.ema.enabled:
        teacher, teacher_dim = copy.deepcopy(student), student.embed_dim
    p = config.predictor
    predictor = Predictor(student.embed_dim, teacher_dim, embed_dim=p.embed_dim, depth=p.depth,
                          num_heads=p.num_heads, mlp_ratio=p.mlp_ratio, pos_embed=student.config.pos_embed)
    return SALT(student, predictor, config.target_norm, config.loss, teacher)


def _train(config: StudentConfig, out: Path, resume: bool, stop_at: int | None, env: dist.DistEnv,
           show_progress: bool) -> dict:
    t_start = time.perf_counter()
    inputs = check_inputs(config, env, stop_at)
    fingerprint, teacher_dim, teacher = _targets_source(config, inputs.shards, inputs.val_shards, env)
    check_memory(config, inputs, env)
    interval = Interval([m.name for m in config.masks])
    run = Run(out, config, env, STAGE, interval.columns(), val_columns(interval.set_names, config.val_rank_rows > 0), resume=resume)

    torch.manual_seed(config.seed)
    model = build_model(config, teacher_dim, teacher).to(env.device)
    optimizer = make_optimizer(model, config.optim, env.device)
    modules = {"encoder": model.student, "predictor": model.predictor}  # never a teacher ...
    if config.ema.enabled:
        modules["target_encoder"] = model.teacher  # ... but the EMA target is part of the run's state
    run.restore(modules, optimizer)
    if run.state is not None:
        interval.load_state(run.state["interval"])

    if config.cache is not None:
        samples = CacheJoin(Path(config.cache), config.seed, latents=teacher is None)
    else:
        samples = PlanAndDecode(config.clip, config.seed)
    data, val = make_loaders(config, samples, inputs, env, run,
                             missing_val="no validation distillation loss")
    if config.compile:
        model.student.compile(dynamic=True)
        model.predictor.compile(dynamic=True)
        if config.ema.enabled:
            model.teacher.compile(dynamic=True)
    net = dist.wrap(model, env)
    run.restore_rng()  # last, so nothing above shifts the RNG streams of a resumed run

    def ema_step(step: int) -> None:
        # every rank, after every optimizer step: the students are equal, so the targets stay equal
        ema_update(model.teacher, model.student, ema_momentum(step, config.ema, config.steps))

    mode = config.mode
    # the clips the student really saw: with a cache its views (the cache spec's clip: frame step
    # or fps, mean/std), else the config's; the probe reads the student on this geometry
    clip = plain(samples.reader.spec.clip if config.cache is not None else config.clip)
    stage = Stage(title="SALT", config=config, model=model, net=net, modules=modules, optimizer=optimizer,
                  data=data, val=val, interval=interval, model_configs={"predictor": model.predictor.config},
                  meta={"cache": fingerprint, "mode": mode, "clip": clip},
                  on_step=ema_step if config.ema.enabled else None)
    summary = {"run": str(out), "rank": env.rank, "world_size": env.world_size, "start_step": run.step,
               "steps": config.steps, "mode": mode}
    summary.update(fit(stage, run, stop_at, show_progress))
    summary["wall_s"] = time.perf_counter() - t_start
    end, loss, val_loss = summary["end_step"], summary["loss"], summary["val_loss"]
    if end == config.steps and env.is_main:
        meta = {"origin": "train-student", "stage": STAGE, "mode": mode, "run": str(out.resolve()), "step": end,
                "clip": clip, "cache": fingerprint, "predictor": dict(model.predictor.config),
                "train_loss": loss, "val_loss": val_loss, "config": plain(config)}
        if config.ema.enabled:
            # V-JEPA 2 evaluates its target_encoder frozen: that is the student this run hands on
            student = save_encoder(run.folder.export(EXPORT), model.teacher, meta={
                **meta, "encoder": "target_encoder: the EMA of the online student (V-JEPA 2 evaluates this one)",
                "ema": plain(config.ema)})
            online = save_encoder(run.folder.export("online"), model.student, meta={
                **meta, "encoder": "online student (the network the optimizer trained)", "ema": plain(config.ema)})
            summary["online"] = str(online)
        else:
            student = save_encoder(run.folder.export(EXPORT), model.student, meta=meta)
        summary["student"] = str(student)
    if env.is_main:
        write_json(run.folder.summary, summary)
    return summary


def print_summary(summary: dict) -> None:
    title = "V-JEPA baseline (EMA target)" if summary["mode"] == "ema" else f"SALT ({summary['mode']})"
    print_run_summary(summary, f"{title} run {summary['run']}", "student")
