"""Building a latent cache on the demo fixture with a micro teacher, and reading it back."""

from __future__ import annotations

import json
import warnings
import pickle

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from salt_cache.cache import BuildConfig, CacheReader, RowRef, build_cache, describe_cache, verify_cache
from salt_cache.checkpoint import file_sha256, load_encoder
from salt_cache.cli import app
from salt_cache.errors import SaltCacheError
from salt_cache.shards import iter_shard, resolve_shards, shard_keys
from salt_cache.spec import load_spec
from salt_cache.video import normalize_frames, plan_view, probe_video, view_frames
from salt_cache.cache.store import FRAME_ARRAYS, ROW_ARRAYS, done_path
from test_cache_common import DIM, TOKENS, make_teacher, store_arrays, store_names, write_spec

runner = CliRunner()


@pytest.fixture(scope="module")
def built(demo, tmp_path_factory):
    """demo/train (36 clips in 4 shards) x 2 views, float16, student-ready views stored as JPEG,
    batch 3, 2 decoding workers."""
    root = tmp_path_factory.mktemp("cache_build")
    teacher = make_teacher(root / "teacher.pt")
    spec = write_spec(root / "spec.yaml", frames="jpeg")
    summary = build_cache(BuildConfig(teacher, demo / "train", spec, root / "cache", batch_size=3, workers=2))
    return {"root": root, "teacher": teacher, "spec": spec, "cache": root / "cache", "summary": summary}


@pytest.fixture(scope="module")
def built_source(demo, built, tmp_path_factory):
    """One shard of demo/train x 2 views, float16, no student-ready views: Stage 2 decodes each
    view from the source and checks it against the build's `view_crc`."""
    root = tmp_path_factory.mktemp("cache_source")
    spec = write_spec(root / "spec.yaml")
    build_cache(BuildConfig(built["teacher"], [resolve_shards(demo / "train")[3]], spec, root / "cache",
                            batch_size=3, workers=1))
    return root / "cache"




def test_every_row_is_the_teacher_output_of_its_stored_view(built, demo, one_thread):
    s = built["summary"]
    assert s.complete and (s.clips, s.rows, s.ok, s.failed) == (36, 72, 72, 0)
    model, _ = load_encoder(built["teacher"])
    spec = load_spec(built["spec"])
    reader = CacheReader(built["cache"])
    checked = 0
    for shard in resolve_shards(demo / "train"):
        for key, video, _meta in iter_shard(shard):
            info = probe_video(video, key)
            refs = reader.rows(key)
            assert [r.view_index for r in refs] == [0, 1]
            for ref in refs:
                view = reader.view(ref)
                # contract 1: the stored view is exactly the planned one (frames, box, size, norm)
                assert view == plan_view(key, ref.view_index, spec.seed, info, spec.clip)
                # ... and the stored frames are that view of the source (through a JPEG q90 round trip)
                frames = reader.frames(ref)
                assert frames.dtype == torch.uint8 and frames.shape == (4, 32, 32, 3)
                assert (frames.float() - view_frames(video, view).float()).abs().mean() < 6
                # the row is the teacher's output on exactly those stored pixels
                with torch.inference_mode():
                    want = model(normalize_frames(frames, view.mean, view.std)[None])[0]
                got = reader.read(ref)
                assert got.dtype == torch.float32 and got.shape == (TOKENS, DIM)
                # float16 storage: each value within its rounding (2^-11 relative) plus fp32 noise
                torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
                assert torch.equal(got, want.half().float()) or (got - want).abs().max() < 2e-3
                checked += 1
    assert checked == 72
    # the two views of a clip are different crops, so their latents differ
    a, b = reader.rows(reader.keys()[0])
    assert not torch.allclose(reader.read(a), reader.read(b))


def test_rows_follow_shard_order_times_views_and_zarr_layout(built, demo):
    shards = resolve_shards(demo / "train")
    names = store_names(built["cache"])
    assert names == [f"{i:06d}-shard-{i:06d}.zarr" for i in range(4)]
    for shard, name in zip(shards, names):
        arr = store_arrays(built["cache"], name)
        keys = shard_keys(shard)
        assert arr["key"].tolist() == [k for k in keys for _ in range(2)]
        assert arr["view_index"].tolist() == [0, 1] * len(keys)
        assert set(arr["status"].tolist()) == {1}
        g = zarr.open_group(built["cache"] / "stores" / name, mode="r")
        lat = g["latents"]
        assert lat.shape == (2 * len(keys), TOKENS, DIM) and lat.dtype == np.float16
        assert lat.chunks == (1, TOKENS, DIM) and lat.shards == (4, TOKENS, DIM)
        # one file per Zarr shard of 4 rows, the last one partial but written whole
        files = sorted((built["cache"] / "stores" / name / "latents" / "c").rglob("*"))
        assert len([f for f in files if f.is_file()]) == -(-2 * len(keys) // 4)
        done = json.loads(done_path(built["cache"] / "stores" / name).read_text())
        with warnings.catch_warnings():  # the done record lies outside the Zarr hierarchy: listing it is quiet
            warnings.simplefilter("error")
            assert sorted(n for n, _ in g.members()) == sorted(("latents", "fidelity") + ROW_ARRAYS + FRAME_ARRAYS)
        assert done["rows"] == 2 * len(keys) and done["digest"].startswith("sha256:")
        assert not (built["cache"] / "stores" / (name + ".partial")).exists()


def test_cache_json_fingerprint(built):
    doc = json.loads((built["cache"] / "cache.json").read_text())
    assert doc["status"] == "complete"
    assert doc["teacher"]["sha256"] == file_sha256(built["teacher"])
    assert doc["teacher"]["config"]["embed_dim"] == DIM and doc["teacher"]["config"]["patch_size"] == 8
    assert (doc["teacher_dim"], doc["grid"], doc["tokens"]) == (DIM, [2, 4, 4], TOKENS)
    assert doc["token_order"] == "t,h,w" and doc["final_norm"] is True
    assert doc["storage"]["dtype"] == "float16" and doc["storage"]["codecs"][0]["name"] == "sharding_indexed"
    assert {"torch", "zarr", "numcodecs", "salt-cache"} <= set(doc["versions"])
    assert doc["spec"]["clip"]["size"] == 32 and doc["spec"]["views"] == 2
    assert len(doc["stores"]) == 4 and doc["summary"]["rows"] == 72
    assert doc["build"]["batch_size"] == 3


def test_reader_api_pickles_and_reads_in_forked_workers(built):
    reader = CacheReader(built["cache"])
    assert (reader.teacher_dim, reader.grid, reader.tokens) == (DIM, (2, 4, 4), TOKENS)
    assert reader.spec == load_spec(built["spec"])
    keys = reader.keys()
    assert keys == sorted(keys) and len(keys) == 36
    assert reader.counts() == {"ok": 72, "failed": 0, "missing": 0, "rows": 72, "clips": 36, "clips_ok": 36, "stores": 4}
    meta = reader.meta(keys[0])
    assert meta["source"].startswith("videos/train/") and meta["label"] in range(4)
    refs = [r for k in keys for r in reader.rows(k)]
    assert all(refs[i].row + 1 == refs[i + 1].row for i in range(0, len(refs), 2))  # views consecutive

    class Rows(torch.utils.data.Dataset):
        def __init__(self, reader):
            self.reader = reader

        def __len__(self):
            return len(refs)

        def __getitem__(self, i):
            return self.reader.read(refs[i])

    # the reader travels to forked workers, opens its stores there, and reads the same bytes
    fresh = pickle.loads(pickle.dumps(CacheReader(built["cache"])))
    loader = torch.utils.data.DataLoader(Rows(fresh), batch_size=8, num_workers=2)
    got = torch.cat(list(loader))
    want = torch.stack([reader.read(r) for r in refs])
    assert torch.equal(got, want)
    with pytest.raises(SaltCacheError, match="no finished store"):
        reader.read(RowRef("nope.zarr", 0, 0))
    with pytest.raises(SaltCacheError, match="unknown key"):
        reader.meta("no-such-clip")
    # Stage 2 refuses a cache that does not fit its data or model, naming the mismatch
    reader.require(grid=[2, 4, 4], tokens=TOKENS, teacher_dim=DIM, patch_size=8, frames=4, size=32,
                   teacher_sha256=file_sha256(built["teacher"]))
    with pytest.raises(SaltCacheError, match=r"cache has teacher_dim 96, expected 384$"):
        reader.require(teacher_dim=384)
    with pytest.raises(SaltCacheError, match=r"cache has grid \(2, 4, 4\), expected \(8, 14, 14\)"):
        reader.require(grid=(8, 14, 14))


def test_failed_clip_is_a_failed_row_and_shifts_nothing(built, demo, tmp_path):
    import webdataset as wds

    src = resolve_shards(demo / "train")[0]
    samples = list(iter_shard(src))
    data = tmp_path / "data"
    data.mkdir()
    with wds.TarWriter(str(data / "shard-000000.tar")) as w:
        for i, (key, video, meta) in enumerate(samples):
            if i == 3:
                w.write({"__key__": "broken-clip", "mp4": b"\x00\x00\x00\x18ftypmp42 not really a video", "json": {"label": 1}})
            if i == 6:
                w.write({"__key__": "no-video", "json": {"label": 2}})
            w.write({"__key__": key, "mp4": video, "json": meta})
    out = tmp_path / "cache"
    s = build_cache(BuildConfig(built["teacher"], data, built["spec"], out, batch_size=1, workers=1))
    assert (s.clips, s.rows, s.failed) == (12, 24, 4)
    assert {(f["key"], f["view"]) for f in s.failures} == {("broken-clip", 0), ("broken-clip", 1), ("no-video", 0), ("no-video", 1)}
    assert all(f["reason"] for f in s.failures)
    arr = store_arrays(out, store_names(out)[0])
    keys = [k for k, _, _ in samples]
    order = keys[:3] + ["broken-clip"] + keys[3:6] + ["no-video"] + keys[6:]
    assert arr["key"].tolist() == [k for k in order for _ in range(2)]  # nothing dropped or moved
    failed_rows = [2 * order.index("broken-clip") + v for v in (0, 1)] + [2 * order.index("no-video") + v for v in (0, 1)]
    assert np.flatnonzero(arr["status"] == 2).tolist() == sorted(failed_rows)
    assert "no video member" in arr["reason"][failed_rows[2]]
    assert not arr["latents"][failed_rows].any()  # latents of failed rows stay the fill value
    reader, ref_reader = CacheReader(out), CacheReader(built["cache"])
    assert "broken-clip" not in reader.keys() and reader.meta("broken-clip") == {"label": 1}
    with pytest.raises(SaltCacheError, match="status failed, not ok"):
        reader.read(RowRef(store_names(out)[0], failed_rows[0], 0))
    for key in keys:  # every other clip: same views and latents as in the clean cache
        for a, b in zip(reader.rows(key), ref_reader.rows(key), strict=True):
            assert reader.view(a) == ref_reader.view(b)
            torch.testing.assert_close(reader.read(a), ref_reader.read(b), rtol=2e-3, atol=2e-3)
    assert verify_cache(out, data=data) == []


@pytest.mark.parametrize("dtype,codec", [("bfloat16", "zstd"), ("float32", "none")])
def test_other_storage_dtypes_and_codecs(built, demo, tmp_path, dtype, codec):
    spec = write_spec(tmp_path / "spec.yaml", dtype=dtype, codec=codec, frames="jpeg")  # as `built`: the same teacher inputs
    data = resolve_shards(demo / "train")[3]  # one shard of 6 clips
    build_cache(BuildConfig(built["teacher"], [data], spec, tmp_path / "cache", batch_size=4, workers=1))
    g = zarr.open_group(tmp_path / "cache" / "stores" / "000000-shard-000003.zarr", mode="r")
    lat = g["latents"]
    assert lat.dtype == (np.uint16 if dtype == "bfloat16" else np.float32) and lat.attrs["dtype"] == dtype
    names = [c["name"] for c in lat.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]]
    assert names == (["bytes", "zstd", "crc32c"] if codec == "zstd" else ["bytes", "crc32c"])
    new, ref = CacheReader(tmp_path / "cache"), CacheReader(built["cache"])
    tol = 1e-2 if dtype == "bfloat16" else 1e-3
    for key in new.keys():
        a, b = new.read_key(key, 1)[1], ref.read_key(key, 1)[1]
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert verify_cache(tmp_path / "cache") == []


def test_describe_and_cli_inspect(built):
    rep = describe_cache(built["cache"])
    assert rep["counts"] == {"stores": 4, "stores_done": 4, "clips": 36, "rows": 72, "views_per_clip": 2, "ok": 72, "failed": 0}
    assert rep["bytes"]["fp32_bytes_per_row"] == TOKENS * DIM * 4
    assert 0 < rep["bytes"]["on_disk"] < rep["bytes"]["raw_fp32"] and rep["stray"] == []
    res = runner.invoke(app, ["inspect", str(built["cache"])])
    assert res.exit_code == 0, res.output
    assert "4 done of 4" in res.output and "36 clips, 72 rows" in res.output and "000003-shard-000003.zarr" in res.output
    res = runner.invoke(app, ["inspect", str(built["cache"]), "--json"])
    assert json.loads(res.stdout)["counts"]["rows"] == 72


def test_inspect_reports_the_ranks_of_a_spread_sample_of_latents(built):
    from salt_cache.diagnostics import feature_ranks

    reader = CacheReader(built["cache"])
    refs = sorted((r for k in reader.keys() for r in reader.rows(k)), key=lambda r: (r.store, r.row))
    # every row (72 < 256): the numbers are those of the whole latent tensor
    ranks = describe_cache(built["cache"])["ranks"]
    want = feature_ranks(torch.stack([reader.read(r) for r in refs]))
    assert (ranks["rows"], ranks["ok_rows"], ranks["tokens"], ranks["dim"]) == (72, 72, TOKENS, DIM)
    assert ranks["rankme_token"] == pytest.approx(want["rankme_token"]) and ranks["erank_row"] == pytest.approx(want["erank_clip"])
    assert 1 < ranks["rankme_row"] <= DIM and 1 < ranks["erank_token"] <= DIM
    # 8 rows spread over the 4 stores of 18 rows: 2 from each, the same 8 every time
    res = runner.invoke(app, ["inspect", str(built["cache"]), "--rank-sample", "8", "--json"])
    few = json.loads(res.stdout)["ranks"]
    assert few["rows"] == 8 and few == describe_cache(built["cache"], rank_sample=8)["ranks"]
    picked = [refs[i] for i in (0, 10, 20, 30, 41, 51, 61, 71)]
    assert sorted({r.store for r in picked}) == store_names(built["cache"])
    assert few["rankme_row"] == pytest.approx(feature_ranks(torch.stack([reader.read(r) for r in picked]))["rankme_clip"])
    res = runner.invoke(app, ["inspect", str(built["cache"]), "--rank-sample", "8"])
    assert res.exit_code == 0 and "latent ranks (8 of 72 ok rows, 32 tokens x 96 wide)" in res.output
    assert describe_cache(built["cache"], rank_sample=0)["ranks"] is None
    assert "latent ranks" not in runner.invoke(app, ["inspect", str(built["cache"]), "--rank-sample", "0"]).output


def test_the_build_writes_a_compact_index_that_readers_memory_map(built, demo, tmp_path):
    from salt_cache.cache.header import CacheHeader
    from salt_cache.cache.index import INDEX_DIR, build_index, open_index

    cache = built["cache"]
    header = CacheHeader.read(cache)
    mapped = open_index(cache, header)
    assert mapped is not None and isinstance(mapped.hash, np.memmap)
    fresh = build_index(cache, header)
    for col in ("hash", "store", "row", "view", "status"):
        assert np.array_equal(getattr(mapped, col), getattr(fresh, col))
    assert mapped.counts == {"ok": 72, "failed": 0, "missing": 0, "rows": 72, "clips": 36, "clips_ok": 36, "stores": 4}
    reader = CacheReader(cache)
    keys = [k for p in resolve_shards(demo / "train") for k in shard_keys(p)]
    assert sorted(keys) == reader.keys() and len(reader) == 36
    assert all([r.view_index for r in reader.rows(k)] == [0, 1] for k in keys)
    assert reader.rows("no-such-clip") == [] and not reader.has_key("no-such-clip")
    # an index that does not cover the manifest's stores is not used: the reader builds its own
    copy = tmp_path / "cache"
    import shutil
    shutil.copytree(cache, copy)
    h = CacheHeader.read(copy)
    h.with_stores({k: v for i, (k, v) in enumerate(sorted(h.stores.items())) if i > 0}).write(copy)
    assert open_index(copy, CacheHeader.read(copy)) is None and (copy / INDEX_DIR).is_dir()
    partial = CacheReader(copy)
    first = shard_keys(resolve_shards(demo / "train")[0])  # the store dropped from the manifest
    assert len(partial) == 36 - len(first) and partial.counts()["stores"] == 3
    assert [k for k in keys if not partial.has_key(k)] == first


def test_stage2_refuses_shards_that_differ_from_the_caches(built, demo, tmp_path):
    from salt_cache.cache.header import CacheHeader
    from salt_cache.train.student import shard_difference

    header = CacheHeader.read(built["cache"])
    shards = resolve_shards(demo / "train")
    assert shard_difference(header, shards) is None
    repacked = tmp_path / "train"
    repacked.mkdir()
    for p in shards:
        (repacked / p.name).write_bytes(p.read_bytes() + (b"\0" * 10240 if p.name.endswith("2.tar") else b""))
    why = shard_difference(header, resolve_shards(repacked))
    assert "shard-000002.tar has" in why and "repacked or changed data" in why
    (repacked / "shard-000002.tar").rename(repacked / "other.tar")
    assert "other.tar is not one the cache was built from" in shard_difference(header, [repacked / "other.tar"])


def test_a_damaged_row_is_skipped_and_counted_up_to_the_limit(built, demo, tmp_path):
    import shutil

    from salt_cache.masks import DEFAULT_MASKS
    from salt_cache.train.data import TrainData, TrainStream
    from salt_cache.train.student import CacheJoin

    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    shard_file = sorted((cache / "stores").glob("*.zarr"))[0] / "latents" / "c" / "0" / "0" / "0"
    blob = bytearray(shard_file.read_bytes())
    end = len(blob) - 100  # every chunk of the first Zarr shard (rows 0-3), not its index at the end
    blob[:end] = bytes(b ^ 0xFF for b in blob[:end])
    shard_file.write_bytes(bytes(blob))
    shards = resolve_shards(demo / "train")
    join = CacheJoin(cache, seed=0)
    stream = TrainStream(shards, join, 4, (2, 4, 4), DEFAULT_MASKS, seed=0, rank=0, world_size=1, workers=1,
                         shuffle_buffer=4)
    seen, skipped, damaged = 0, 0, 0
    for batch in stream.batches(split=0, n_splits=1):
        if batch["position"]["epoch"] > 0:
            break
        seen += len(batch["keys"])
        skipped += batch["skipped"]
        damaged += batch["damaged"]
        assert seen + skipped == batch["position"]["consumed"]
    assert damaged == 2 and skipped >= damaged  # the first two clips of the store, whichever view
    data = TrainData(shards, join, batch_size=4, grid=(2, 4, 4), mask_sets=DEFAULT_MASKS, seed=0, rank=0,
                     world_size=1, workers=0, shuffle_buffer=4, max_damaged=0)
    with pytest.raises(SaltCacheError, match=r"data.max_damaged_rows: \d cache rows failed their checksum on this rank \(limit 0\)"):
        for _ in range(20):
            data.next()


def _first_batch(cache, shards):
    from salt_cache.masks import DEFAULT_MASKS
    from salt_cache.train.data import TrainStream
    from salt_cache.train.student import CacheJoin

    join = CacheJoin(cache, seed=0)
    stream = TrainStream(shards, join, 3, (2, 4, 4), DEFAULT_MASKS, seed=0, rank=0, world_size=1, workers=1,
                         shuffle_buffer=4)
    batch = next(stream.batches(split=0, n_splits=1))
    reader = join.reader
    refs = [next(r for r in reader.rows(k) if r.view_index == v) for k, v in zip(batch["keys"], batch["view_index"])]
    return reader, batch, refs


def test_the_loader_ships_uint8_clips_and_stored_latents_normalized_on_device_as_the_teacher_saw(built, built_source, demo):
    from salt_cache.train.data import on_device
    from salt_cache.video import decode_view, decode_view_uint8, view_crc

    # stored student-ready views (`built`): the uint8 stored frames, normalized on the device the
    # way the build normalized them for the teacher
    reader, batch, refs = _first_batch(built["cache"], resolve_shards(demo / "train"))
    assert batch["clip"].dtype == torch.uint8 and batch["latents"].dtype == torch.float16
    assert "latent_scale" not in batch
    views = [reader.view(r) for r in refs]
    ready = on_device(batch, torch.device("cpu"))
    want = torch.stack([normalize_frames(reader.frames(r), v.mean, v.std) for r, v in zip(refs, views)])
    assert ready["clip"].dtype == torch.float32 and torch.equal(ready["clip"], want)  # bit for bit
    assert torch.equal(ready["latents"].float(), torch.stack([reader.read(r) for r in refs]))
    # the stored frames' checksum is their view's digest: no source decode, no view_crc
    assert all(reader.view_crc(r) is None for r in refs)

    # no stored views (`built_source`): the view decoded from the source, checked against the
    # CRC of exactly the uint8 pixels the build fed the teacher
    shards = [resolve_shards(demo / "train")[3]]
    reader, batch, refs = _first_batch(built_source, shards)
    assert batch["clip"].dtype == torch.uint8 and batch["latents"].dtype == torch.float16
    videos = {k: v for p in shards for k, v, _ in iter_shard(p)}
    views = [reader.view(r) for r in refs]
    ready = on_device(batch, torch.device("cpu"))
    want = torch.stack([decode_view(videos[k], v) for k, v in zip(batch["keys"], views)])
    assert ready["clip"].dtype == torch.float32 and torch.equal(ready["clip"], want)  # bit for bit
    assert torch.equal(ready["latents"].float(), torch.stack([reader.read(r) for r in refs]))
    assert all(reader.view_crc(r) == view_crc(decode_view_uint8(videos[k], v))
               for r, k, v in zip(refs, batch["keys"], views))


def test_stage2_refuses_a_view_that_decodes_to_other_pixels(built, built_source, demo, tmp_path):
    import shutil

    from salt_cache.shards.read import Sample
    from salt_cache.train.data import StageContext
    from salt_cache.train.student import CacheJoin

    # a source decode whose CRC differs from the build's
    cache = tmp_path / "source"
    shutil.copytree(built_source, cache)
    store = sorted((cache / "stores").glob("*.zarr"))[0]
    crc = zarr.open_group(store, mode="r+", zarr_format=3)["view_crc"]
    crc[...] = np.asarray(crc[...]) ^ 1  # as if the pixels decoded by this machine were others
    key, video, meta = next(iter_shard(resolve_shards(demo / "train")[3]))
    with pytest.raises(SaltCacheError, match=f"^{key}: the decoded view .* differs from the pixels the teacher saw"):
        CacheJoin(cache, seed=0)(Sample(key, video, meta), StageContext(epoch=0, train=True))

    # stored frames whose pixels differ from the ones the teacher encoded
    cache = tmp_path / "stored"
    shutil.copytree(built["cache"], cache)
    store = sorted((cache / "stores").glob("*.zarr"))[0]
    crc = zarr.open_group(store, mode="r+", zarr_format=3)["frames_checksum"]
    crc[...] = np.asarray(crc[...]) ^ 1
    key, video, meta = next(iter_shard(resolve_shards(demo / "train")[0]))
    with pytest.raises(SaltCacheError, match="stored frames decode to other pixels than the teacher encoded"):
        CacheJoin(cache, seed=0)(Sample(key, video, meta), StageContext(epoch=0, train=True))


def test_a_spec_normalizing_otherwise_than_the_teacher_was_trained_is_refused(built, demo, tmp_path):
    from salt_cache.checkpoint import save_encoder
    from salt_cache.models import build_encoder

    teacher = tmp_path / "teacher.pt"
    trained = {"frames": 4, "frame_step": 2, "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    save_encoder(teacher, build_encoder("micro", patch_size=8, tubelet_size=2),
                 meta={"origin": "train-teacher", "clip": trained})
    with pytest.raises(SaltCacheError, match=r"clip.mean: spec 'test32' normalizes with mean \[0.485.*trained with \[0.5, 0.5, 0.5\]"):
        build_cache(BuildConfig(teacher, demo / "train", built["spec"], tmp_path / "cache"))
    assert not (tmp_path / "cache" / "cache.json").exists()


def test_the_row_writer_thread_keeps_order_and_hands_errors_back():
    from salt_cache.cache.build import RowWriter

    done = []
    w = RowWriter(depth=2)
    for i in range(20):
        w.submit(done.append, i)
    w.drain()
    assert done == list(range(20))

    def boom(i):
        raise ValueError(f"row {i} written twice")

    w.submit(boom, 3)
    w.submit(done.append, 99)  # skipped: the writer stops at its first error
    with pytest.raises(ValueError, match="row 3 written twice"):
        w.drain()
    w.close()
    assert done[-1] == 19
