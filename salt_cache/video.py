"""Video probing, view planning and decoding.

A *view* is everything needed to rebuild one model input from a video: frame indices, a crop box
in source pixels, the output size and the normalization. Views are planned deterministically from
(clip key, view index, seed), recorded in the cache, and replayed exactly by Stage 2.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from salt_cache.errors import DecodeError, SaltCacheError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps > 0 else float("nan")


def _reader(data: bytes):
    import decord  # imported lazily: decord starts threads, keep it out of forking parents

    return decord.VideoReader(io.BytesIO(data), num_threads=1)


def probe_video(data: bytes, key: str = "<video>") -> VideoInfo:
    """Open video bytes with decord and check the first and last frames really decode.

    Files that over-report their frame count fail here rather than hanging a later decode."""
    if not data:
        raise DecodeError(key, "empty file")
    try:
        vr = _reader(data)
        n = len(vr)
        if n <= 0:
            raise DecodeError(key, "zero frames")
        first = vr[0].asnumpy()
        vr[n - 1].asnumpy()
        if first.ndim != 3 or first.shape[2] != 3:
            # seen with decord on narrow MJPEG: a mis-strided 4-channel frame that get_batch refuses
            raise DecodeError(key, f"decoder returned frames of shape {tuple(first.shape)}, expected H x W x 3")
        fps = float(vr.get_avg_fps())
    except DecodeError:
        raise
    except Exception as e:  # decord raises bare RuntimeError / DECORDError for bad streams
        raise DecodeError(key, f"not decodable ({_one_line(e)})") from None
    return VideoInfo(frames=n, fps=fps, height=int(first.shape[0]), width=int(first.shape[1]))


def clip_info(meta: dict, data: bytes, key: str = "<video>") -> VideoInfo:
    """A clip's VideoInfo from its shard record (probed once, at packing time); the bytes are
    probed only when the record lacks it (shards written by other tools)."""
    if isinstance(meta, dict) and all(k in meta for k in ("frames", "fps", "height", "width")):
        try:
            info = VideoInfo(frames=int(meta["frames"]), fps=float(meta["fps"]), height=int(meta["height"]),
                             width=int(meta["width"]))
        except (TypeError, ValueError):
            raise DecodeError(key, "its shard record holds malformed frames / fps / height / width") from None
        if min(info.frames, info.height, info.width) < 1:
            raise DecodeError(key, f"its shard record says {info.frames} frames of {info.width}x{info.height}")
        return info
    return probe_video(data, key=key)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is sampled from a video.

    frames: frames per clip; frame_step: source frames between samples, or fps: a target rate
    (the step then follows each video's own fps); size: output side in pixels; crop: "center" or
    "random-resized" (scale and ratio ranges as in torchvision's RandomResizedCrop)."""

    frames: int = 16
    frame_step: int | None = 4
    fps: float | None = None
    size: int = 224
    crop: str = "random-resized"
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (0.75, 1.35)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        problems = []
        if self.frames < 1:
            problems.append(f"frames: expected >= 1, got {self.frames}")
        if (self.frame_step is None) == (self.fps is None):
            problems.append("frame_step: give exactly one of frame_step and fps")
        if self.frame_step is not None and self.frame_step < 1:
            problems.append(f"frame_step: expected >= 1, got {self.frame_step}")
        if self.fps is not None and self.fps <= 0:
            problems.append(f"fps: expected > 0, got {self.fps}")
        if self.size < 1:
            problems.append(f"size: expected >= 1, got {self.size}")
        if self.crop not in ("center", "random-resized"):
            problems.append(f"crop: expected 'center' or 'random-resized', got {self.crop!r}")
        for name in ("scale", "ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                problems.append(f"{name}: expected 0 < min <= max, got [{lo}, {hi}]")
        if problems:
            raise SaltCacheError("; ".join(problems))

    def step_for(self, video_fps: float) -> int:
        if self.frame_step is not None:
            return self.frame_step
        return max(1, round(video_fps / self.fps)) if video_fps > 0 else 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class View:
    """One planned model input: frame indices into the source video, crop box (x0, y0, x1, y1) in
    source pixels (exclusive end), output size, normalization."""

    key: str
    index: int
    frames: tuple[int, ...]
    box: tuple[int, int, int, int]
    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "View":
        return cls(
            key=d["key"], index=int(d["index"]), frames=tuple(int(f) for f in d["frames"]),
            box=tuple(int(b) for b in d["box"]), size=int(d["size"]),
            mean=tuple(d.get("mean", IMAGENET_MEAN)), std=tuple(d.get("std", IMAGENET_STD)),
        )


def view_rng(key: str, view_index: int, seed: int) -> np.random.Generator:
    """A generator that depends only on (key, view index, seed): never on order or process."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, view_index, h])


def plan_view(key: str, view_index: int, seed: int, info: VideoInfo, clip: ClipSpec) -> View:
    """Deterministic view of a video. Frame indices stay inside [0, info.frames); a video shorter
    than the clip repeats its last frame. The crop box stays inside the source frame."""
    rng = view_rng(key, view_index, seed)
    step = clip.step_for(info.fps)
    span = (clip.frames - 1) * step + 1
    if info.frames >= span:
        room = info.frames - span
        start = room // 2 if clip.crop == "center" else int(rng.integers(0, room + 1))
        frames = [start + i * step for i in range(clip.frames)]
    else:
        frames = [min(i * step, info.frames - 1) for i in range(clip.frames)]
    if clip.crop == "center":
        box = _center_box(info.height, info.width)
    else:
        box = _random_resized_box(rng, info.height, info.width, clip.scale, clip.ratio)
    return View(key=key, index=view_index, frames=tuple(frames), box=box, size=clip.size,
                mean=tuple(clip.mean), std=tuple(clip.std))


def _center_box(h: int, w: int) -> tuple[int, int, int, int]:
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def _random_resized_box(rng, h: int, w: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling, driven by our own generator."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = int(rng.integers(0, h - ch + 1))
            x0 = int(rng.integers(0, w - cw + 1))
            return (x0, y0, x0 + cw, y0 + ch)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return (x0, y0, x0 + cw, y0 + ch)


def read_frames(data: bytes, frames: tuple[int, ...] | list[int], key: str = "<video>") -> torch.Tensor:
    """Decode the given frame indices -> uint8 [T, H, W, C]."""
    import torch  # here, not at the top: specs and configs load without torch (a fast CLI)

    try:
        vr = _reader(data)
        n = len(vr)
        bad = [f for f in frames if not 0 <= f < n]
        if bad:
            raise DecodeError(key, f"frame index {bad[0]} outside the video's {n} frames")
        uniq = sorted(set(frames))
        batch = vr.get_batch(uniq).asnumpy()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(key, f"decode failed ({_one_line(e)})") from None
    pos = {f: i for i, f in enumerate(uniq)}
    return torch.from_numpy(batch[[pos[f] for f in frames]])


def decode_view_uint8(data: bytes, view: View) -> torch.Tensor:
    """Video bytes + view -> the view's pixels, uint8 [C, T, size, size]: frames cropped to the
    box, resized (bilinear, antialiased), rounded. This is what the teacher saw, before
    `normalize_clip`, and what the loader ships (4x smaller than float32)."""
    import torch
    import torch.nn.functional as F

    frames = read_frames(data, view.frames, view.key)
    x0, y0, x1, y1 = view.box
    if x1 > frames.shape[2] or y1 > frames.shape[1]:
        raise DecodeError(view.key, f"crop box {view.box} outside the {frames.shape[2]}x{frames.shape[1]} frame")
    clip = frames[:, y0:y1, x0:x1].permute(0, 3, 1, 2).float()  # [T, C, h, w]
    clip = F.interpolate(clip, size=(view.size, view.size), mode="bilinear", antialias=True, align_corners=False)
    return clip.round_().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()


def normalize_clip(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 pixels [C, T, H, W] (mean, std: 3 values) or [B, C, T, H, W] (mean, std: [B, 3] or
    3 values) -> float32 (x - 255 mean) / (255 std), on x's device. The one normalization: the
    build's teacher input and the trainers' (on the device) are the same float32 arithmetic."""
    import torch

    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device) * 255.0
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device) * 255.0
    shape = (-1, 1, 1, 1) if m.dim() == 1 else (m.shape[0], -1, 1, 1, 1)
    return (x.float() - m.view(shape)) / s.view(shape)


def view_crc(x: torch.Tensor) -> int:
    """CRC-32 of a view's uint8 pixels [C, T, H, W] (C order): recorded with each cache row, so
    Stage 2 and verify can tell that a decode gives exactly the pixels the teacher saw."""
    import zlib

    return zlib.crc32(x.contiguous().numpy().tobytes()) & 0xFFFFFFFF


def decode_view(data: bytes, view: View) -> torch.Tensor:
    """Video bytes + view -> normalized float32 clip [C, T, size, size]
    (`normalize_clip(decode_view_uint8(...))`)."""
    return normalize_clip(decode_view_uint8(data, view), view.mean, view.std)


def view_frames(data: bytes, view: View) -> torch.Tensor:
    """Video bytes + view -> the student-ready view: uint8 [T, size, size, 3], the pixels of
    `decode_view_uint8` in the frame layout the stored views use (one HxWx3 image per frame)."""
    return decode_view_uint8(data, view).permute(1, 2, 3, 0).contiguous()


def frames_to_clip(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [..., T, H, W, 3] -> uint8 clip [..., 3, T, H, W] (the loader's transport layout)."""
    return frames.movedim(-1, -4).contiguous()


def normalize_frames(frames: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 frames [..., T, H, W, 3] -> normalized float32 [..., 3, T, H, W], on their device:
    `normalize_clip` of `frames_to_clip`, so stored views and decoded views see one arithmetic."""
    return normalize_clip(frames_to_clip(frames), mean, std).contiguous()


def denormalize(clip: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """[C, T, H, W] normalized -> [C, T, H, W] in [0, 1], for pictures."""
    import torch

    m = torch.tensor(mean, dtype=clip.dtype).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=clip.dtype).view(3, 1, 1, 1)
    return (clip * s + m).clamp(0, 1)
