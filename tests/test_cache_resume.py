"""A build killed with SIGKILL and re-run equals a clean build; a two-process torchrun build
equals a one-process build; resuming into a different cache and bad inputs are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from salt_cache.cache import BuildConfig, CacheReader, build_cache, verify_cache
from salt_cache.cli import app
from salt_cache.cache.store import done_path
from test_cache_common import assert_same_cache, make_teacher, store_arrays, write_spec
from conftest import torchrun_cli

runner = CliRunner()
BATCH = 2
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'salt-cache'; from salt_cache.cli import app; app()"]


@pytest.fixture(scope="module")
def ref(demo, tmp_path_factory):
    """The clean one-process build every other build is compared with (4 stores, 72 rows)."""
    root = tmp_path_factory.mktemp("cache_resume")
    teacher = make_teacher(root / "teacher.pt")
    spec = write_spec(root / "spec.yaml")
    build_cache(BuildConfig(teacher, demo / "train", spec, root / "ref", batch_size=BATCH, workers=1))
    return {"root": root, "teacher": teacher, "spec": spec, "cache": root / "ref", "data": demo / "train"}


def build_args(ref, out, workers=0):
    return ["build", "--teacher", str(ref["teacher"]), "--data", str(ref["data"]), "--spec", str(ref["spec"]),
            "--out", str(out), "--batch-size", str(BATCH), "--workers", str(workers)]


def test_sigkill_mid_build_then_rerun_equals_a_clean_build(ref, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(CLI + build_args(ref, out, workers=1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stores = out / "stores"
    seen_partial = False
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            names = [p.name for p in stores.iterdir()] if stores.is_dir() else []
            done = [n for n in names if n.endswith(".zarr") and done_path(stores / n).exists()]
            if done and any(n.endswith(".partial") for n in names):
                seen_partial = True
                os.kill(proc.pid, signal.SIGKILL)  # the first store is whole, the next one half written
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not seen_partial:
            proc.kill()
        proc.wait()
    assert seen_partial, f"the build ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    assert proc.returncode == -signal.SIGKILL

    # the interrupted cache is usable: its manifest lists the finished stores, readers see them
    doc = json.loads((out / "cache.json").read_text())
    assert doc["status"] == "building" and 1 <= len(doc["stores"]) < 4
    reader = CacheReader(out)
    finished = sorted(doc["stores"])
    expected_keys = sorted({k for name in finished for k in store_arrays(out, name)["key"].tolist()})
    assert reader.keys() == expected_keys and reader.read(reader.rows(expected_keys[0])[0]).shape == (32, 96)
    assert any("build incomplete" in p.line() for p in verify_cache(out, digest=False, rows=False))

    # the same command again: skips whole stores, clears the partial one, finishes
    whole = [p for p in stores.glob("*.zarr") if done_path(p).exists()]  # may be ahead of the manifest
    partial = list(stores.glob("*.partial"))
    res = runner.invoke(app, build_args(ref, out, workers=1))
    assert res.exit_code == 0, res.output
    assert (f"cleared {len(partial)} partial store" in res.output) == bool(partial)
    summary = json.loads((out / "cache.json").read_text())["summary"]
    assert summary["stores_skipped"] == len(whole) and summary["stores_built"] == 4 - len(whole)
    assert_same_cache(ref["cache"], out)
    assert not list((out / "stores").glob("*.partial"))
    assert verify_cache(out, data=ref["data"]) == []


def test_torchrun_two_processes_equal_one_process(ref, tmp_path):
    out = tmp_path / "dist"
    res = torchrun_cli(tmp_path, build_args(ref, out, workers=1))
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((out / "cache.json").read_text())
    # rank r built the stores of shards i with i % 2 == r; rank 0 wrote the manifest
    assert {name: s["rank"] for name, s in doc["stores"].items()} == {
        f"{i:06d}-shard-{i:06d}.zarr": i % 2 for i in range(4)}
    assert doc["build"]["world_size"] == 2 and doc["summary"]["clips_built"] == 36
    assert_same_cache(ref["cache"], out)


def test_resume_into_a_different_cache_is_refused(ref, tmp_path):
    other = make_teacher(tmp_path / "other.pt", seed=1)
    args = build_args(ref, ref["cache"])
    res = runner.invoke(app, [a if a != str(ref["teacher"]) else str(other) for a in args])
    assert res.exit_code == 1 and "cannot resume: built with a different teacher" in res.output
    res = runner.invoke(app, args + ["--set", "storage.level=5"])
    assert res.exit_code == 1
    assert "cannot resume: built with a different spec (spec.storage.level: cache has 3, given 5)" in res.output
    res = runner.invoke(app, [a if a != str(ref["data"]) else str(ref["data"].parent / "val") for a in args])
    assert res.exit_code == 1 and "cannot resume: built from 4 shards, given 2" in res.output
    # the same command on a finished cache does nothing and says so
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "4 done of 4 (0 built now, 4 already done)" in res.output
    # two builds never write into one cache at the same time: another process holds rank 0's lock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"), str(ref["cache"] / ".build-rank0.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = runner.invoke(app, args)
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 1 and "another build is writing into this cache (rank 0 lock is held)" in res.output
    # what a build killed before its first store leaves behind does not block the next one
    out = tmp_path / "early"
    (out / "stores").mkdir(parents=True)
    (out / ".cache.json.12345.tmp").write_text('{"format": "salt-cache/lat')
    one = str(ref["data"] / "shard-000003.tar")
    res = runner.invoke(app, [one if a == str(ref["data"]) else a for a in build_args(ref, out)])
    assert res.exit_code == 0, res.output
    assert not (out / ".cache.json.12345.tmp").exists() and verify_cache(out) == []


def test_bad_inputs_end_with_one_line(ref, tmp_path):
    base = build_args(ref, tmp_path / "out")

    def run(**swap):
        args = list(base)
        for flag, value in swap.items():
            args[args.index("--" + flag.replace("_", "-")) + 1] = str(value)
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        text = res.output.strip()
        assert text.startswith("error:") and "\n" not in text and "Traceback" not in text, text
        return text

    assert "nope.pt: teacher checkpoint not found" in run(teacher=tmp_path / "nope.pt")
    typo = tmp_path / "typo.yaml"
    typo.write_text(ref["spec"].read_text().replace("rows_per_shard", "rows_per_shrd"))
    assert "storage.rows_per_shrd: unknown field" in run(spec=typo)
    assert "spec 'nospec'" in run(spec="nospec")
    t16 = make_teacher(tmp_path / "t16.pt", patch=16)
    msg = run(teacher=t16)
    assert "teacher has patch_size 16 and tubelet_size 2, but spec 'test32' asks for patch_size 8" in msg
    assert "init-model --patch-size 8 --tubelet-size 2" in msg  # the refusal names the flag to use
    (tmp_path / "empty").mkdir()
    assert "empty: no .tar shards in this folder" in run(data=tmp_path / "empty")
    odd = write_spec(tmp_path / "odd.yaml")
    odd.write_text(odd.read_text().replace("size: 32", "size: 36"))
    assert "clip.size: 36 px is not divisible by patch_size 8" in run(spec=odd)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "folder is not empty and holds no cache.json" in run(out=busy)
    assert "--batch-size: expected >= 1" in run(batch_size=0)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
