import json

import numpy as np
from typer.testing import CliRunner

from conftest import write_video
from salt_cache import __version__
from salt_cache.checkpoint import load_encoder
from salt_cache.cli import app
from salt_cache.demo import CLASSES, render_clip
from salt_cache.shards import iter_shard, resolve_shards

runner = CliRunner()


def test_help_and_version():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("shards", "demo-data", "init-model", "inspect-video"):
        assert cmd in res.output
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_init_model_and_inspect_video(tmp_path):
    res = runner.invoke(app, ["init-model", "--model", "micro", "--out", str(tmp_path / "t.pt")])
    assert res.exit_code == 0, res.output
    model, ckpt = load_encoder(tmp_path / "t.pt")
    assert model.config.name == "micro" and ckpt["kind"] == "encoder"
    res = runner.invoke(app, ["init-model", "--model", "mega", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 1 and "unknown model size 'mega'" in res.output
    write_video(tmp_path / "v.mp4", frames=9, height=32, width=80)
    res = runner.invoke(app, ["inspect-video", str(tmp_path / "v.mp4")])
    assert res.exit_code == 0 and "9" in res.output and "80" in res.output
    res = runner.invoke(app, ["inspect-video", str(tmp_path / "nope.mp4")])
    assert res.exit_code == 1 and "nope.mp4" in res.output


def test_demo_classes_differ_only_by_time_direction():
    for pair in ((0, 1), (2, 3)):
        fwd = render_clip(pair[0], np.random.default_rng(3), size=32, frames=8)
        bwd = render_clip(pair[1], np.random.default_rng(3), size=32, frames=8)
        assert np.array_equal(fwd[::-1], bwd)
        assert not np.array_equal(fwd, bwd)


def test_demo_data_is_balanced_and_deterministic(demo, tmp_path):
    labels = [m["label"] for s in resolve_shards(demo / "train") for _, _, m in iter_shard(s)]
    assert sorted(set(labels)) == list(range(len(CLASSES)))
    assert max(np.bincount(labels)) - min(np.bincount(labels)) <= 1
    res = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--clips", "48", "--size", "32", "--frames", "12"])
    assert res.exit_code == 0, res.output
    a = {k: d for s in resolve_shards(demo / "val") for k, d, _ in iter_shard(s)}
    b = {k: d for s in resolve_shards(tmp_path / "d" / "val") for k, d, _ in iter_shard(s)}
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert json.loads((tmp_path / "d" / "val" / "index.json").read_text())["samples"] == len(a)


ENCODE_SCRIPT = """
import hashlib, os, sys
import numpy as np
from salt_cache.demo import encode_mp4, render_clip
if sys.argv[1] == "one-core" and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # x264's "auto" threads would change
for label, size, frames in ((0, 32, 12), (3, 64, 24)):
    clip = render_clip(label, np.random.default_rng([7, label]), size, frames)
    print(label, sorted({hashlib.sha256(encode_mp4(clip)).hexdigest() for _ in range(8)}))
"""


def test_demo_mp4_bytes_are_the_same_in_every_process(tmp_path):
    """x264 pinned (one thread, no mb-tree): 8 encodes of a clip in each of two processes, one
    of them held to one core, give one byte string."""
    import subprocess
    import sys

    outs = [subprocess.run([sys.executable, "-c", ENCODE_SCRIPT, mode], capture_output=True, text=True, timeout=120)
            for mode in ("all-cores", "one-core")]
    assert all(o.returncode == 0 for o in outs), [o.stderr[-2000:] for o in outs]
    lines = [o.stdout.strip().splitlines() for o in outs]
    assert lines[0] == lines[1] and len(lines[0]) == 2
    assert all(line.count("'") == 2 for line in lines[0])  # one distinct digest per clip
