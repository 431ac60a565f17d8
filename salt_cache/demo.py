"""The embedded demo datasets: two synthetic 4-class tasks, cheap to render, written as real
H.264 MP4 with PyAV.

- `time` (the default): classes differ only by the direction of time. Two time-reversed pairs:
  an object moving right vs left, and growing vs shrinking. A clip of one class played backwards
  is a clip of its partner, so the set of frames says nothing about the label: only temporal
  order does.
- `shape`: classes differ only by the object's shape (disc, square, triangle, cross); the object
  drifts in a random direction at a random speed, so no frame position or motion tells the class.

In both, the nuisance a random encoder does not discount varies per clip: background texture and
brightness, object colour, texture, size, place and speed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_cache.config import path_field
from salt_cache.errors import SaltCacheError
from salt_cache.shards.read import INDEX_NAME

CLASSES = ("move-right", "move-left", "grow", "shrink")
SHAPES = ("disc", "square", "triangle", "cross")
# Per-frame pixel noise (0-255 scale). Kept below the background texture's own variation inside a
# patch: with more, VideoMAE's per-patch normalized target is mostly noise and V-Pixel learns nothing.
NOISE_STD = 3.0


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random colour texture [size, size, 3] in [0, 255]."""
    coarse = rng.uniform(0, 1, (size // 8 + 2, size // 8 + 2, 3))
    reps = int(np.ceil(size / coarse.shape[0])) + 1
    up = np.kron(coarse, np.ones((reps, reps, 1)))[:size, :size]
    # box-blur the blocky upsample so the background has no sharp grid
    k = max(1, reps // 2)
    pad = np.pad(up, ((k, k), (k, k), (0, 0)), mode="edge")
    cs = pad.cumsum(0).cumsum(1)
    blurred = (cs[2 * k:, 2 * k:] - cs[:-2 * k, 2 * k:] - cs[2 * k:, :-2 * k] + cs[:-2 * k, :-2 * k]) / (2 * k) ** 2
    lo, hi = sorted(rng.uniform(40, 200, 2))
    return lo + (hi - lo) * blurred[:size, :size]


def render_clip(label: int, rng: np.random.Generator, size: int = 64, frames: int = 24) -> np.ndarray:
    """One clip of class `label` -> uint8 [frames, size, size, 3]."""
    base = label - label % 2  # the forward-time member of the pair
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = _texture(rng, size)
    color = rng.uniform(0, 255, 3)
    tex = _texture(rng, size) / 255.0
    t = np.linspace(0.0, 1.0, frames)
    if base == 0:  # move right
        r = np.full(frames, rng.uniform(0.12, 0.2) * size)
        travel = rng.uniform(0.35, 0.6) * size
        x0 = rng.uniform(r[0], size - r[0] - travel)
        cx = x0 + travel * t
        cy = np.full(frames, rng.uniform(r[0], size - r[0]))
    else:  # grow
        r0, r1 = rng.uniform(0.06, 0.12) * size, rng.uniform(0.3, 0.42) * size
        r = r0 + (r1 - r0) * t
        cx = np.full(frames, rng.uniform(0.35, 0.65) * size)
        cy = np.full(frames, rng.uniform(0.35, 0.65) * size)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for i in range(frames):
        inside = ((xx - cx[i]) ** 2 + (yy - cy[i]) ** 2 <= r[i] ** 2)[..., None]
        obj = color * (0.6 + 0.4 * tex)
        img = np.where(inside, obj, bg) + rng.normal(0, NOISE_STD, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    if label % 2:  # the partner class is the same motion with time reversed
        out = out[::-1].copy()
    return out


def _shape_mask(shape: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside shape `shape` of radius `r`, at offsets (dx, dy) from its centre."""
    if shape == 0:  # disc
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == 1:  # square of the disc's area
        h = r * 0.886
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == 2:  # upward triangle inscribed in the circle of radius 1.3 r
        R = 1.3 * r
        return (dy <= R / 2) & (dy >= -R + 1.732 * np.abs(dx))
    arm = r * 0.38  # cross (plus sign)
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def render_shape_clip(label: int, rng: np.random.Generator, size: int = 64, frames: int = 24) -> np.ndarray:
    """One clip of shape class `label`: the shape drifts across a textured background -> uint8
    [frames, size, size, 3]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = _texture(rng, size)
    color = rng.uniform(0, 255, 3)
    tex = _texture(rng, size) / 255.0
    r = rng.uniform(0.2, 0.32) * size
    speed = rng.uniform(0.0, 0.4) * size  # total drift over the clip, in a random direction
    angle = rng.uniform(0, 2 * np.pi)
    t = np.linspace(-0.5, 0.5, frames)
    lo, hi = 1.1 * r, size - 1.1 * r
    c0 = rng.uniform(lo, hi, 2)
    cx = np.clip(c0[0] + speed * np.cos(angle) * t, lo, hi)
    cy = np.clip(c0[1] + speed * np.sin(angle) * t, lo, hi)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    obj = color * (0.6 + 0.4 * tex)
    for i in range(frames):
        inside = _shape_mask(label, xx - cx[i], yy - cy[i], r)[..., None]
        img = np.where(inside, obj, bg) + rng.normal(0, NOISE_STD, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


# task -> (classes, the data's name in reports, renderer)
TASKS = {
    "time": (CLASSES, "demo task (direction of time)", render_clip),
    "shape": (SHAPES, "demo task (object shape)", render_shape_clip),
}


# x264 settings that make the bytes a function of the frames alone. threads=1: x264's output
# depends on its thread count, which "auto" takes from the cores of the process (so a DataLoader
# worker or a taskset shell wrote other bytes). mbtree=0: even on one thread, the macroblock-tree
# rate control gave up to 10 distinct outputs in 40 encodes of one 64 px clip (PyAV 18, x264 core
# 165: its float asm is not reproducible run to run); without it, 1080 encodes of 12 clips in 3
# processes (2 cores, 1 core) all matched.
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """uint8 [T, H, W, 3] -> H.264 MP4 bytes, the same bytes in every process (X264_OPTIONS)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(X264_OPTIONS)
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@dataclass(frozen=True)
class DemoConfig:
    """`salt-cache demo-data` and the recipe kind demo-data: where, which task (`time` or
    `shape`, see the module doc), how many clips (balanced over the classes), their side and
    length, the seed, the val share (or a fixed count `val_clips`), clips per shard, the processes
    probing them, and whether a non-empty `out` may be replaced."""

    out: Path = path_field()
    task: str = "time"
    clips: int = 320
    size: int = 64
    frames: int = 24
    seed: int = 0
    val_fraction: float = 0.25
    val_clips: int | None = None
    shard_size: int = 40
    workers: int = 2
    overwrite: bool = False


def is_complete(out: Path) -> bool:
    """The demo data in `out` was written whole (both splits packed)."""
    return (Path(out) / "train" / INDEX_NAME).is_file() and (Path(out) / "val" / INDEX_NAME).is_file()


def make_demo_data(config: DemoConfig, progress=None) -> dict:
    """Write `out/videos/{train,val}/*.mp4`, manifests, and shards `out/train`, `out/val`.

    Balanced classes; deterministic for a seed. Returns a summary dict."""
    from salt_cache.shards import ShardsConfig, write_shards

    c = config
    clips, size, frames, seed, out = c.clips, c.size, c.frames, c.seed, Path(c.out)
    if c.task not in TASKS:
        raise SaltCacheError(f"--task: expected one of {', '.join(TASKS)}, got {c.task!r}")
    classes, title, render = TASKS[c.task]
    if clips < 2 * len(classes):
        raise SaltCacheError(f"--clips: expected at least {2 * len(classes)}, got {clips}")
    if size < 16 or size % 16:
        raise SaltCacheError(f"--size: expected a multiple of 16, got {size}")
    if frames < 2:
        raise SaltCacheError(f"--frames: expected >= 2, got {frames}")
    if out.exists() and any(out.iterdir()):
        if not c.overwrite:
            raise SaltCacheError(f"{out}: folder is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    n_val = c.val_clips if c.val_clips is not None else max(len(classes), int(round(clips * c.val_fraction)))
    if not len(classes) <= n_val <= clips - len(classes):
        raise SaltCacheError(f"val_clips: expected {len(classes)}..{clips - len(classes)} for {clips} clips, got {n_val}")
    task = progress.add_task("rendering clips", total=clips) if progress else None
    splits = {"train": [], "val": []}
    for i in range(clips):
        label = i % len(classes)
        split = "val" if i >= clips - n_val else "train"
        clip_rng = np.random.default_rng([seed, i])
        data = encode_mp4(render(label, clip_rng, size, frames))
        rel = Path("videos") / split / f"{classes[label]}-{i:05d}.mp4"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        splits[split].append((rel, label))
        if progress:
            progress.advance(task)
    summary = {"task": c.task, "classes": list(classes), "splits": {}}
    for split, rows in splits.items():
        manifest = out / f"{split}.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            for rel, label in rows:
                w.writerow([rel.as_posix(), label])
        packed = write_shards(ShardsConfig(manifest, out / split, shard_size=c.shard_size, workers=c.workers), progress)
        if packed.rejected:
            raise SaltCacheError(f"{out / split}: {len(packed.rejected)} demo clips failed to probe")
        summary["splits"][split] = {"clips": packed.packed, "shards": len(packed.shards)}
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    # the data's name and class names, for reports (`salt_cache.shards.task_info`)
    (out / "task.json").write_text(json.dumps({"name": title, "classes": list(classes)}, indent=2) + "\n")
    return summary
