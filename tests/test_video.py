import numpy as np
import pytest
import torch

from conftest import write_video
from salt_cache.errors import DecodeError
from salt_cache.video import (
    IMAGENET_MEAN, IMAGENET_STD, ClipSpec, VideoInfo, View, decode_view, plan_view, probe_video, read_frames,
)

RRC = ClipSpec(frames=8, frame_step=2, size=32, crop="random-resized", scale=(0.3, 1.0), ratio=(0.75, 1.35))


def test_plan_is_deterministic_and_distinct():
    info = VideoInfo(frames=100, fps=30.0, height=240, width=320)
    a = plan_view("clip-a", 0, 7, info, RRC)
    assert a == plan_view("clip-a", 0, 7, info, RRC)
    others = {plan_view("clip-a", 1, 7, info, RRC), plan_view("clip-b", 0, 7, info, RRC),
              plan_view("clip-a", 0, 8, info, RRC)}
    assert a not in others and len(others) == 3
    assert View.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("crop", ["center", "random-resized"])
def test_plan_stays_inside_the_video(crop):
    rng = np.random.default_rng(0)
    spec = ClipSpec(frames=16, frame_step=4, size=224, crop=crop)
    for i in range(300):
        info = VideoInfo(frames=int(rng.integers(1, 120)), fps=25.0,
                         height=int(rng.integers(16, 400)), width=int(rng.integers(16, 400)))
        v = plan_view(f"k{i}", i % 3, 0, info, spec)
        assert len(v.frames) == 16
        assert all(0 <= f < info.frames for f in v.frames)
        assert list(v.frames) == sorted(v.frames)
        x0, y0, x1, y1 = v.box
        assert 0 <= x0 < x1 <= info.width and 0 <= y0 < y1 <= info.height
        if info.frames < 61:  # too short for 16 x step 4: the last frame repeats
            assert v.frames[-1] == min(60, info.frames - 1)


def test_fps_mode_follows_each_video():
    spec = ClipSpec(frames=4, frame_step=None, fps=5.0, size=32, crop="center")
    assert np.diff(plan_view("k", 0, 0, VideoInfo(200, 30.0, 64, 64), spec).frames).tolist() == [6, 6, 6]
    assert np.diff(plan_view("k", 0, 0, VideoInfo(200, 10.0, 64, 64), spec).frames).tolist() == [2, 2, 2]


def test_decode_shape_range_and_exact_pixels(tmp_path):
    data = write_video(tmp_path / "v.mp4", frames=12, height=48, width=64).read_bytes()
    info = probe_video(data)
    assert (info.frames, info.height, info.width) == (12, 48, 64)
    clip = decode_view(data, plan_view("v", 0, 0, info, RRC))
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert lo - 1e-4 <= clip.min() and clip.max() <= hi + 1e-4 and clip.std() > 0.05
    # a crop whose size equals the output is not resampled: pixels are exactly the decoded ones
    view = View(key="v", index=0, frames=(0, 3, 3, 11), box=(8, 4, 40, 36), size=32)
    raw = read_frames(data, view.frames).float()[:, 4:36, 8:40]  # [T, h, w, C]
    mean = torch.tensor(IMAGENET_MEAN) * 255
    std = torch.tensor(IMAGENET_STD) * 255
    expected = ((raw - mean) / std).permute(3, 0, 1, 2)
    assert torch.allclose(decode_view(data, view), expected, atol=1e-5)


def test_decode_failures_carry_key_and_reason(tmp_path):
    with pytest.raises(DecodeError) as e:
        probe_video(b"definitely not a video" * 50, key="bad-key")
    assert e.value.key == "bad-key" and e.value.reason
    data = write_video(tmp_path / "v.mp4", frames=5).read_bytes()
    with pytest.raises(DecodeError, match="outside the video"):
        decode_view(data, View(key="k", index=0, frames=(0, 9), box=(0, 0, 16, 16), size=16))


def test_clip_info_reads_the_shard_record_and_probes_only_without_one(tmp_path):
    from salt_cache.video import clip_info

    data = write_video(tmp_path / "v.mp4", frames=7, height=32, width=80).read_bytes()
    record = {"frames": 7, "fps": 10.0, "height": 32, "width": 80}
    # the record is used as is: no bytes are opened (empty bytes would fail a probe)
    assert clip_info(record, b"", "k") == VideoInfo(7, 10.0, 32, 80)
    assert clip_info({}, data, "k") == probe_video(data) == VideoInfo(7, 10.0, 32, 80)
    with pytest.raises(DecodeError, match="malformed"):
        clip_info({**record, "frames": "many"}, data, "k")
    with pytest.raises(DecodeError, match="0 frames"):
        clip_info({**record, "frames": 0}, data, "k")
