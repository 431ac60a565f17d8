"""`verify` passes a clean cache and catches each kind of damage, naming store, row and key."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from salt_cache.cache import BuildConfig, VerifyConfig, build_cache, run_verify, verify_cache
from salt_cache.cache.store import done_path, row_checksum
from salt_cache.cli import app
from test_cache_common import make_teacher, store_arrays, write_spec

runner = CliRunner()
STORE0, STORE1 = "000000-shard-000000.zarr", "000001-shard-000001.zarr"


@pytest.fixture(scope="module")
def clean(demo, tmp_path_factory):
    """demo/val: 12 clips in 2 shards (10 + 2) x 2 views = 24 rows, 4 rows per Zarr shard."""
    root = tmp_path_factory.mktemp("cache_verify")
    teacher = make_teacher(root / "teacher.pt")
    build_cache(BuildConfig(teacher, demo / "val", write_spec(root / "spec.yaml"), root / "cache", batch_size=4, workers=1))
    return {"root": root, "teacher": teacher, "cache": root / "cache", "data": demo / "val"}


@pytest.fixture
def copy(clean, tmp_path):
    dst = tmp_path / "cache"
    shutil.copytree(clean["cache"], dst)
    return dst


def lines(problems):
    return [p.line() for p in problems]


def test_clean_cache_passes_every_check(clean):
    rep = run_verify(VerifyConfig(clean["cache"], data=clean["data"], teacher=clean["teacher"], sample=4))
    assert rep.problems == [], lines(rep.problems)
    assert rep.checks == ["cache.json", "stores", "structure", "keys-vs-data", "digest", "rows", "teacher"]
    assert rep.rows_checked == 24 and len(rep.reencoded) == 4
    assert all(r["cosine"] > 0.9999 and r["relative_error"] < 2e-3 for r in rep.reencoded)
    res = runner.invoke(app, ["verify", str(clean["cache"]), "--data", str(clean["data"]),
                              "--teacher", str(clean["teacher"]), "--sample", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["verify", str(clean["cache"]), "--json"])
    report = json.loads(res.stdout)
    assert res.exit_code == 0 and report["ok"] is True and report["problems"] == []


def test_one_flipped_byte_in_a_latent_chunk(copy):
    key = store_arrays(copy, STORE0)["key"][4]
    shard_file = copy / "stores" / STORE0 / "latents" / "c" / "1" / "0" / "0"  # rows 4..7
    raw = bytearray(shard_file.read_bytes())
    raw[20] ^= 0x01  # inside row 4's compressed chunk (the shard index sits at the end)
    shard_file.write_bytes(bytes(raw))
    found = lines(verify_cache(copy))
    assert any(f"store {STORE0}: digest mismatch" in line for line in found), found
    assert any(line.startswith(f"store {STORE0} row 4 key {key}: latents unreadable") for line in found), found
    assert not any(" row 5 " in line for line in found)  # the neighbours in the same shard file are fine
    res = runner.invoke(app, ["verify", str(copy)])
    assert res.exit_code == 1 and f"store {STORE0} row 4 key {key}" in res.stdout
    # the quick pass (no full reads) cannot see damage inside a file of unchanged size
    res = runner.invoke(app, ["verify", str(copy), "--no-digest", "--no-rows"])
    assert res.exit_code == 0, res.output


def test_deleted_store(copy, clean):
    keys = sorted(set(store_arrays(copy, STORE1)["key"].tolist()))
    shutil.rmtree(copy / "stores" / STORE1)
    found = lines(verify_cache(copy, data=clean["data"]))
    assert f"store {STORE1}: store missing (listed in the manifest, not on disk)" in found
    for key in keys:
        assert f"key {key}: missing from the cache (in the data)" in found


def test_truncated_shard_file(copy):
    shard_file = copy / "stores" / STORE0 / "latents" / "c" / "0" / "0" / "0"
    size = shard_file.stat().st_size
    shard_file.write_bytes(shard_file.read_bytes()[: size - 40])
    found = lines(verify_cache(copy))
    assert f"store {STORE0}: file latents/c/0/0/0 is {size - 40} bytes, expected {size} (truncated or overwritten)" in found
    assert any(" row 0 " in line and "unreadable" in line for line in found), found


def test_row_whose_stats_do_not_match(copy):
    stats = zarr.open_array(copy / "stores" / STORE0 / "stats", mode="r+")
    row5 = stats[5]
    stats[5] = row5 * np.array([1.0, 1.0, 1.01], dtype=np.float32)  # L2 off by 1 %
    key = store_arrays(copy, STORE0)["key"][5]
    found = lines(verify_cache(copy))
    assert any(line.startswith(f"store {STORE0} row 5 key {key}: stats mismatch") for line in found), found
    assert sum("stats mismatch" in line for line in found) == 1


def test_rewritten_and_non_finite_rows(copy):
    lat = zarr.open_array(copy / "stores" / STORE0 / "latents", mode="r+")
    lat[7] = lat[6]  # valid chunk, wrong content: only the row checksum can tell
    nan_row = lat[9].copy()
    nan_row[0, 0] = np.nan
    lat[9] = nan_row
    checksum = zarr.open_array(copy / "stores" / STORE0 / "checksum", mode="r+")
    checksum[9] = row_checksum(nan_row)  # a consistent checksum: the finiteness check must catch it
    found = lines(verify_cache(copy))
    assert any(" row 7 " in line and "checksum mismatch" in line for line in found), found
    assert any(" row 9 " in line and "1 non-finite values" in line for line in found), found


def test_different_teacher(clean, tmp_path):
    other = make_teacher(tmp_path / "other.pt", seed=1)
    rep = run_verify(VerifyConfig(clean["cache"], teacher=other, sample=3, digest=False, rows=False))
    found = lines(rep.problems)
    assert any(line.startswith(f"teacher {other} has sha256") for line in found), found
    assert sum("re-encoded row differs" in line for line in found) == 3
    assert all(r["cosine"] < 0.9 for r in rep.reencoded)
    res = runner.invoke(app, ["verify", str(clean["cache"]), "--teacher", str(other), "--sample", "1", "--json"])
    report = json.loads(res.stdout)
    assert res.exit_code == 1 and report["ok"] is False and report["tolerance"]["basis"] == "float16"
    assert {p["what"].split(" ")[0] for p in report["problems"]} >= {"teacher", "re-encoded"}


def test_stray_partial_missing_done_record_and_foreign_data(copy, demo):
    (copy / "stores" / (STORE1 + ".partial")).mkdir()
    record = done_path(copy / "stores" / STORE0)
    record.unlink()
    found = lines(verify_cache(copy, data=demo / "train"))
    assert f"store {STORE0}: no readable done record {record.name} (store never finished)" in found
    assert any(line.startswith(f"store {STORE1}.partial: stray entry") for line in found)
    assert any(line.endswith("in the cache but not in the data") for line in found)
    assert any(line.endswith("missing from the cache (in the data)") for line in found)


def test_not_a_cache(tmp_path):
    found = lines(verify_cache(tmp_path))
    assert len(found) == 1 and "not a latent cache (no cache.json)" in found[0]
    res = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no such cache folder" in res.stdout
