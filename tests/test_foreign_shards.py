"""A foreign webdataset shard, with members named the way other tools name them (dots in folder
names, dotted fields such as `clip.480p.mp4`, extra fields such as a caption), is grouped by
webdataset's own key rule everywhere: the tar-header index, the key and label lists, the cache
build, verify, and Stage 2's join of the streamed samples with the cache."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from salt_cache.cache import BuildConfig, CacheReader, build_cache, verify_cache
from salt_cache.shards import iter_shard, resolve_shards, shard_keys, shard_labels
from salt_cache.train.config import load_run_config
from salt_cache.train.runs import read_log
from salt_cache.train.student import StudentConfig, train
from test_cache_common import make_teacher, write_spec
from test_train_student import student_flags

pytestmark = pytest.mark.usefixtures("one_thread")


def member_names(i: int) -> tuple[str, str, str | None]:
    """(video name, record name, caption name or None) of foreign sample i."""
    if i % 3 == 0:  # a dotted folder: the key keeps it
        return f"part.{i}/clip{i}.mp4", f"part.{i}/clip{i}.json", None
    if i % 3 == 1:  # a dotted file name: the key ends at the first dot, the fields are 480p.*
        return f"clip{i}.480p.mp4", f"clip{i}.480p.json", None
    return f"clip{i}.mp4", f"clip{i}.json", f"clip{i}.txt"


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def foreign(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    samples = list(iter_shard(resolve_shards(demo / "train")[0]))[:8]
    (root / "data").mkdir()
    shard = root / "data" / "foreign-000.tar"
    with tarfile.open(shard, "w") as tf:
        for i, (_, video, meta) in enumerate(samples):
            vname, jname, caption = member_names(i)
            add(tf, vname, video)
            add(tf, jname, json.dumps(meta).encode())
            if caption:
                add(tf, caption, b"a clip")
    return root, shard, [m["label"] for _, _, m in samples]


def webdataset_keys(shard) -> list[str]:
    import webdataset as wds

    return [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())]


def test_index_and_lists_follow_webdataset(foreign):
    _, shard, labels = foreign
    keys = webdataset_keys(shard)
    assert keys[:3] == ["part.0/clip0", "clip1", "clip2"]
    assert shard_keys(shard) == keys
    assert [k for k, _, _ in iter_shard(shard)] == keys
    assert shard_labels(shard) == dict(zip(keys, labels))


def test_foreign_shard_builds_verifies_and_joins_in_stage2(demo, foreign, tmp_path):
    root, shard, _ = foreign
    keys = webdataset_keys(shard)
    teacher = make_teacher(root / "teacher.pt", seed=1)
    cache = tmp_path / "cache"
    s = build_cache(BuildConfig(teacher, shard.parent, write_spec(root / "spec.yaml", views=1), cache, batch_size=4, workers=0))
    assert (s.clips, s.failed) == (len(keys), 0)
    assert CacheReader(cache).keys() == sorted(keys)
    assert verify_cache(cache, data=shard.parent) == []

    flags = student_flags(demo, cache, **{"data.train": str(shard.parent), "data.val": None, "val_batches": 0,
                                          "batch_size": 4, "steps": 2})
    summary = train(load_run_config(StudentConfig, flags=flags), tmp_path / "run", show_progress=False)
    assert summary["end_step"] == 2
    rows = read_log(tmp_path / "run" / "log.csv")
    assert len(rows) == 2 and sum(r["skipped"] for r in rows) == 0  # every streamed sample found its rows
