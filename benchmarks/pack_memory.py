"""Peak memory of `salt-cache shards` against the number of videos, measured in one run. Prints JSON:

- peak_rss_mb:   {copies: peak RSS in MB of the `salt-cache shards` process (its largest process:
                 the packer; the probe workers are smaller)} for each --copies
- growth_mb:     peak RSS at the largest count minus that at the smallest (bounded packing: ~0)
- video_mb:      size of the one MP4 copied (about --video-mb)

Each count packs that many copies of one H.264 MP4 (written here with PyAV) into a fresh folder
with a fresh process, so the figures sit side by side under the same conditions.

    python benchmarks/pack_memory.py [--copies 40 400] [--video-mb 0.5] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import resource, sys
from salt_cache.cli import app
try:
    app(prog_name="salt-cache")
except SystemExit as e:
    code = e.code
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def make_video(path: Path, target_mb: float) -> None:
    """An H.264 MP4 of roughly `target_mb`: noisy frames, 320 x 240, until the size is reached."""
    import av

    rng = np.random.default_rng(0)
    frames = 8
    while True:
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=25)
            s.height, s.width, s.pix_fmt = 240, 320, "yuv420p"
            for _ in range(frames):
                img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
                for p in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        if buf.tell() >= target_mb * 1e6 or frames > 400:
            path.write_bytes(buf.getvalue())
            return
        frames = int(frames * max(1.2, target_mb * 1e6 / max(buf.tell(), 1)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, nargs="+", default=[40, 400])
    ap.add_argument("--video-mb", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="salt-pack-mem-"))
    try:
        video = tmp / "one.mp4"
        make_video(video, args.video_mb)
        peaks = {}
        for n in args.copies:
            src = tmp / f"src-{n}"
            src.mkdir()
            for i in range(n):
                shutil.copyfile(video, src / f"clip{i:05d}.mp4")
            r = subprocess.run([sys.executable, "-c", CHILD, "shards", str(src), str(tmp / f"out-{n}"),
                                "--workers", str(args.workers)], capture_output=True, text=True, cwd=tmp)
            if r.returncode != 0:
                raise SystemExit(f"salt-cache shards failed on {n} copies: {r.stderr.strip()[-500:]}")
            kb = int(r.stderr.split("MAXRSS_KB")[-1].split()[0])
            peaks[str(n)] = round(kb / 1024, 1)
            shutil.rmtree(src)
            shutil.rmtree(tmp / f"out-{n}")
        first, last = str(min(args.copies)), str(max(args.copies))
        out = {"video_mb": round(video.stat().st_size / 1e6, 3), "workers": args.workers, "peak_rss_mb": peaks,
               "growth_mb": round(peaks[last] - peaks[first], 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
