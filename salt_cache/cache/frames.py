"""Student-ready views: each view's decoded frames, stored beside its latents.

Decoding a 16-frame view from its source video costs 80-110 ms (640 x 272 H.264; every frame up
to the last one used is decoded) and every epoch of Stage 2 paid it again, though the build had
decoded each view once. With `student_views.format` set, the build keeps the view as the student
consumes it: cropped, resized, uint8, [T, S, S, 3], and the teacher encodes exactly those stored
frames after a round trip through the codec, so contract 1 (teacher input equals student input)
holds bit for bit.

Formats (`benchmarks/loader.py` measures them on the sample clip, 16 x 224 x 224):
    jpeg  one JPEG per frame (Pillow's libjpeg-turbo, 4:2:0, `quality`): ~0.2 MB and ~6 ms per
          view at quality 90. Lossy, but the teacher saw the decoded JPEG, not the original.
          (torchvision's decode_jpeg is ~30% faster but deprecated since torchvision 0.29.)
    raw   the uint8 frames, Blosc-lz4 (lossless): 2.4 MB and ~0.2 ms per view; camera video
          barely compresses losslessly, so this costs ~10x the disk of jpeg.

Stored as `frames [rows, T]` (Zarr variable-length bytes, one item per frame, sharded like the
latents) and `frames_checksum [rows]`: CRC-32C of the decoded uint8 frames, the digest of what
the teacher saw. Every read re-checks it, so a JPEG decoder that decodes differently from the
build's (another libjpeg-turbo, another IDCT) is refused instead of silently training the student
on other pixels than the teacher's.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from salt_cache.errors import SaltCacheError

FORMATS = ("none", "jpeg", "raw")


def frames_digest(frames: torch.Tensor) -> int:
    """CRC-32C of uint8 frames [T, S, S, 3] (contiguous bytes)."""
    import google_crc32c

    return int(google_crc32c.value(np.ascontiguousarray(frames.numpy()).reshape(-1)))


def encode_frames(frames: torch.Tensor, fmt: str, quality: int = 90) -> list[bytes]:
    """uint8 [T, S, S, 3] -> one item per frame in `fmt` (jpeg or raw)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if fmt == "raw":
        return [f.numpy().tobytes() for f in frames.contiguous()]
    if fmt == "jpeg":
        from PIL import Image

        out = []
        for f in frames.numpy():
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, "JPEG", quality=quality)  # 4:2:0, baseline, libjpeg-turbo
            out.append(buf.getvalue())
        return out
    raise ValueError(f"unknown stored-view format {fmt!r} (expected one of {', '.join(FORMATS[1:])})")


def decode_frames(items: list[bytes], fmt: str, size: int) -> torch.Tensor:
    """One item per frame -> uint8 [T, size, size, 3]."""
    if fmt == "raw":
        want = size * size * 3
        if any(len(b) != want for b in items):
            raise SaltCacheError(f"stored frames: raw frame of {[len(b) for b in items if len(b) != want][0]} bytes, expected {want}")
        return torch.from_numpy(np.frombuffer(b"".join(items), dtype=np.uint8).reshape(len(items), size, size, 3).copy())
    if fmt == "jpeg":
        from PIL import Image

        out = np.empty((len(items), size, size, 3), dtype=np.uint8)
        for i, b in enumerate(items):
            try:
                with Image.open(io.BytesIO(b)) as im:
                    if im.format != "JPEG" or im.mode != "RGB" or im.size != (size, size):
                        raise SaltCacheError(f"stored frames: frame {i} is {im.format} {im.mode} {im.size}, "
                                             f"expected JPEG RGB {(size, size)}")
                    out[i] = np.asarray(im)  # decoded straight into the view's array
            except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
                raise SaltCacheError(f"stored frames: frame {i} does not decode ({str(e).splitlines()[0][:120]})") from None
        return torch.from_numpy(out)
    raise ValueError(f"unknown stored-view format {fmt!r}")


def round_trip(frames: torch.Tensor, fmt: str, quality: int = 90) -> tuple[list[bytes], torch.Tensor, int]:
    """What the build stores for a view and what its teacher encodes:
    uint8 [T, S, S, 3] -> (items, the frames decoded back from them, their digest)."""
    items = encode_frames(frames, fmt, quality)
    decoded = decode_frames(items, fmt, frames.shape[1])
    return items, decoded, frames_digest(decoded)
