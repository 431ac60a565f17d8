import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_video
from salt_cache.cli import app
from salt_cache.errors import SaltCacheError
from salt_cache.shards import ShardsConfig, iter_shard, make_keys, resolve_shards, shard_keys, write_shards
from salt_cache.video import ClipSpec, decode_view, plan_view, probe_video

runner = CliRunner()

VARIANTS = [  # (relative path, codec, frames, height, width, container format)
    ("a/h264.mp4", "libx264", 12, 48, 64, "mp4"),
    ("a/b/mpeg4.avi", "mpeg4", 7, 80, 96, "avi"),
    ("vp9.webm", "libvpx-vp9", 20, 64, 64, "webm"),
    ("hevc.mkv", "libx265", 5, 96, 128, "matroska"),
    ("mjpeg.mov", "mjpeg", 3, 64, 64, "mov"),
]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i, (rel, codec, frames, h, w, fmt) in enumerate(VARIANTS):
        write_video(root / rel, frames=frames, height=h, width=w, codec=codec, fmt=fmt, seed=i)
    (root / "notes.txt").write_text("not a video, wrong extension: ignored")
    return root


def test_round_trip_mixed_codecs(mixed, tmp_path):
    summary = write_shards(ShardsConfig(mixed, tmp_path / "out", shard_size=2))
    assert summary.packed == len(VARIANTS) and not summary.rejected
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [2, 2, 1]
    seen = {}
    for shard in resolve_shards(tmp_path / "out"):
        for key, data, meta in iter_shard(shard):
            seen[meta["source"]] = (key, data, meta)
    assert sorted(seen) == sorted(v[0] for v in VARIANTS)
    for rel, _codec, frames, h, w, _fmt in VARIANTS:
        key, data, meta = seen[rel]
        assert data == (mixed / rel).read_bytes()  # original bytes, untouched
        assert "." not in key and "/" not in key
        assert (meta["height"], meta["width"]) == (h, w)
        assert meta["frames"] == frames
        info = probe_video(data)
        view = plan_view(key, 0, 0, info, ClipSpec(frames=4, frame_step=2, size=32))
        assert decode_view(data, view).shape == (3, 4, 32, 32)


def test_manifest_labels_and_cli(tmp_path):
    for i in range(3):
        write_video(tmp_path / "v" / f"clip {i}.mp4", seed=i)
    (tmp_path / "m.jsonl").write_text("".join(
        json.dumps({"path": f"v/clip {i}.mp4", "label": i % 2}) + "\n" for i in range(3)))
    res = runner.invoke(app, ["shards", str(tmp_path / "m.jsonl"), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    labels = {k: m["label"] for s in resolve_shards(tmp_path / "out") for k, _, m in iter_shard(s)}
    assert labels == {"v__clip_0": 0, "v__clip_1": 1, "v__clip_2": 0}
    # a second run into the same folder is refused, with --overwrite it goes through
    res = runner.invoke(app, ["shards", str(tmp_path / "m.jsonl"), str(tmp_path / "out")])
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["shards", str(tmp_path / "m.jsonl"), str(tmp_path / "out"), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_bad_files_are_rejected_not_packed(tmp_path):
    good = write_video(tmp_path / "src" / "good.mp4", frames=10)
    full = good.read_bytes()
    (tmp_path / "src" / "truncated.mp4").write_bytes(full[: len(full) // 3])
    (tmp_path / "src" / "text.mp4").write_text("hello, I am not a video\n" * 20)
    (tmp_path / "src" / "empty.mp4").write_bytes(b"")
    # decord mis-strides narrow MJPEG frames (4 channels); packing it would fail every decode later
    write_video(tmp_path / "src" / "narrow.mov", frames=3, height=32, width=48, codec="mjpeg", fmt="mov")
    summary = write_shards(ShardsConfig(tmp_path / "src", tmp_path / "out"))
    assert summary.packed == 1
    rejected = [json.loads(l) for l in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in rejected) == ["empty.mp4", "narrow.mov", "text.mp4", "truncated.mp4"]
    assert all(r["reason"] for r in rejected)
    keys = [k for s in resolve_shards(tmp_path / "out") for k in shard_keys(s)]
    assert keys == ["good"]


def test_keys_are_unique_stable_and_tar_safe():
    rels = ["a b/c.d.mp4", "a_b/c_d.mp4", "x/y.mp4", "x/y.webm"]
    keys = make_keys(rels)
    assert len(set(keys)) == len(keys)
    assert keys == make_keys(rels)
    assert all(set(k) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for k in keys)


def test_resolve_shards_forms(mixed, tmp_path):
    write_shards(ShardsConfig(mixed, tmp_path / "out", shard_size=2))
    by_folder = resolve_shards(tmp_path / "out")
    by_brace = resolve_shards(str(tmp_path / "out" / "shard-{000000..000002}.tar"))
    by_list = resolve_shards([str(p) for p in by_folder])
    assert by_folder == by_brace == by_list
    with pytest.raises(SaltCacheError, match="not found"):
        resolve_shards(str(tmp_path / "out" / "shard-000009.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaltCacheError, match="no .tar shards"):
        resolve_shards(tmp_path / "empty")
    assert tarfile.is_tarfile(by_folder[0])


def test_absolute_manifest_paths_give_the_same_keys_wherever_the_data_lies(tmp_path):
    keys = []
    for where in ("one/deep/place", "another"):
        root = tmp_path / where
        for i in range(3):
            write_video(root / "videos" / f"c{i}" / f"clip{i}.mp4", frames=4, seed=i)
        manifest = tmp_path / "lists" / f"m-{len(keys)}.jsonl"  # the data lies outside its folder
        manifest.parent.mkdir(exist_ok=True)
        manifest.write_text("".join(json.dumps({"path": str(root / "videos" / f"c{i}" / f"clip{i}.mp4")}) + "\n"
                                    for i in range(3)))
        write_shards(ShardsConfig(manifest, tmp_path / f"out-{len(keys)}", workers=1))
        keys.append(sorted(k for s in resolve_shards(tmp_path / f"out-{len(keys)}") for k in shard_keys(s)))
    assert keys[0] == keys[1] == ["c0__clip0", "c1__clip1", "c2__clip2"]
    # a manifest beside its data: absolute paths are taken relative to the manifest's folder
    manifest = tmp_path / "another" / "m.csv"
    manifest.write_text("path\n" + "".join(f"{tmp_path / 'another' / 'videos' / f'c{i}' / f'clip{i}.mp4'}\n" for i in range(3)))
    write_shards(ShardsConfig(manifest, tmp_path / "out-csv", workers=1))
    assert sorted(k for s in resolve_shards(tmp_path / "out-csv") for k in shard_keys(s))[0] == "videos__c0__clip0"


def test_packing_order_is_shuffled_by_a_recorded_seed(tmp_path):
    for i in range(12):
        write_video(tmp_path / "src" / f"class{i // 4}" / f"v{i:02d}.mp4", frames=4, seed=i)
    orders = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_shards(ShardsConfig(tmp_path / "src", tmp_path / name, shard_size=4, workers=1, seed=seed))
        orders[name] = [k for s in resolve_shards(tmp_path / name) for k in shard_keys(s)]
        index = json.loads((tmp_path / name / "index.json").read_text())
        assert index["order"] == {"shuffled": True, "seed": seed}
    assert orders["a"] == orders["b"] != orders["c"]
    assert sorted(orders["a"]) == sorted(orders["c"]) and orders["a"] != sorted(orders["a"])
    # the first shard is not one class, as a sorted walk would make it
    assert len({k.split("__")[0] for k in orders["a"][:4]}) > 1
