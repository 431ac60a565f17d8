"""The fast row read path (byte ranges from the Zarr shard index, codecs decoded in the caller)
and student-ready views (stored frames), on real stores written by StoreWriter and build_cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from salt_cache.cache import BuildConfig, CacheReader, VerifyConfig, build_cache, run_verify, verify_cache
from salt_cache.cache.chunks import ChunkError, ChunkReader, UnsupportedLayout
from salt_cache.cache.store import StoreWriter
from salt_cache.checkpoint import load_encoder
from salt_cache.errors import SaltCacheError
from salt_cache.shards import iter_shard, resolve_shards
from salt_cache.shards.read import Sample
from salt_cache.spec import StorageSpec
from salt_cache.train.data import StageContext, collate, on_device
from salt_cache.train.student import CacheJoin
from salt_cache.video import normalize_frames, view_frames
from test_cache_common import make_teacher, write_spec


def _store(tmp_path, storage: StorageSpec, rows: int = 6, tokens: int = 8, dim: int = 16):
    x = torch.randn(rows, tokens, dim, generator=torch.Generator().manual_seed(0)) * 3
    w = StoreWriter(tmp_path / "s.zarr", rows, tokens, dim, storage, {})
    for r in range(rows):
        w.put_ok(r, f"k{r}", 0, {"key": f"k{r}", "index": 0}, "{}", x[r])
    w.finish()
    return tmp_path / "s.zarr", x


@pytest.mark.parametrize("dtype,codec,shuffle", [("float16", "blosc-zstd", "byte"), ("float16", "blosc-lz4", "bit"),
                                                 ("bfloat16", "zstd", "byte"), ("float32", "none", "byte")])
def test_byte_range_reads_equal_zarr_for_every_codec(tmp_path, dtype, codec, shuffle):
    # 6 rows in shards of 4: the last shard is partial, its index marks two chunks empty
    path, x = _store(tmp_path, StorageSpec(dtype=dtype, codec=codec, shuffle=shuffle, level=3, rows_per_shard=4))
    arr = zarr.open_array(path / "latents", mode="r")
    chunks = ChunkReader(path / "latents")
    for r in range(6):
        got = chunks.read(r)
        assert got.dtype == arr.dtype and got.tobytes() == arr[r].tobytes()
        assert chunks.decode(chunks.encoded(r)).tobytes() == got.tobytes()
    with pytest.raises(IndexError):
        chunks.read(6)


def test_damaged_chunk_and_damaged_index_are_refused(tmp_path):
    path, _ = _store(tmp_path, StorageSpec(rows_per_shard=4))
    shard = path / "latents" / "c" / "0" / "0" / "0"
    good = shard.read_bytes()
    data = bytearray(good)
    data[40] ^= 0xFF  # inside the first chunk
    shard.write_bytes(bytes(data))
    with pytest.raises(ChunkError, match="crc32c mismatch"):
        ChunkReader(path / "latents").read(0)
    data = bytearray(good)
    data[-10] ^= 0xFF  # inside the shard index at the end of the file
    shard.write_bytes(bytes(data))
    with pytest.raises(ChunkError, match="index: crc32c mismatch"):
        ChunkReader(path / "latents").read(1)


def test_a_layout_it_does_not_read_is_left_to_zarr(tmp_path):
    arr = zarr.create_array(tmp_path / "plain", shape=(4, 8), chunks=(1, 8), dtype="f2")  # no sharding
    arr[...] = 1
    with pytest.raises(UnsupportedLayout):
        ChunkReader(tmp_path / "plain")


@pytest.fixture(scope="module")
def raw_views(demo, tmp_path_factory):
    """demo/val x 1 view, student-ready views stored losslessly (raw)."""
    root = tmp_path_factory.mktemp("raw_views")
    teacher = make_teacher(root / "teacher.pt")
    spec = write_spec(root / "spec.yaml", views=1, frames="raw")
    build_cache(BuildConfig(teacher, demo / "val", spec, root / "cache", batch_size=4, workers=0))
    return {"cache": root / "cache", "teacher": teacher}


@pytest.fixture(scope="module")
def built_int8(demo, tmp_path_factory):
    """demo/val x 1 view, int8 latents, JPEG student-ready views."""
    root = tmp_path_factory.mktemp("int8")
    teacher = make_teacher(root / "teacher.pt")
    spec = write_spec(root / "spec.yaml", views=1, dtype="int8", frames="jpeg")
    build_cache(BuildConfig(teacher, demo / "val", spec, root / "cache", batch_size=4, workers=0))
    return {"cache": root / "cache", "teacher": teacher}


def test_raw_views_are_the_view_of_the_source_and_what_the_teacher_encoded(raw_views, demo, one_thread):
    reader = CacheReader(raw_views["cache"])
    model, _ = load_encoder(raw_views["teacher"])
    assert reader.has_frames
    n = 0
    for shard in resolve_shards(demo / "val"):
        for key, video, _meta in iter_shard(shard):
            (ref,) = reader.rows(key)
            view = reader.view(ref)
            frames = reader.frames(ref)
            assert torch.equal(frames, view_frames(video, view))  # lossless: the exact rounded view
            with torch.inference_mode():
                want = model(normalize_frames(frames, view.mean, view.std)[None])[0]
            assert torch.equal(reader.read(ref), want.half().float())
            stored, scale = reader.read_stored(ref)
            assert stored.dtype == torch.float16 and scale is None and torch.equal(stored.float(), reader.read(ref))
            n += 1
    assert n == 12
    # Stage 2's join hands the student the stored frames, normalized the teacher's way
    join = CacheJoin(raw_views["cache"], seed=0)
    sample = next(iter(iter_shard(resolve_shards(demo / "val")[0])))
    out = join(Sample(key=sample[0], video=b"not needed", meta=sample[2]), StageContext(epoch=0, train=True))
    (ref,) = reader.rows(sample[0])
    view = reader.view(ref)
    # ... as uint8 with the view's normalization, made float32 on the device (`on_device`), and
    # the latents in their stored dtype
    assert out["clip"].dtype == torch.uint8 and out["latents"].dtype == torch.float16
    ready = on_device(collate([out]), torch.device("cpu"))
    assert torch.equal(ready["clip"][0], normalize_frames(reader.frames(ref), view.mean, view.std))
    assert torch.equal(ready["latents"][0].float(), reader.read(ref))
    assert verify_cache(raw_views["cache"], teacher=raw_views["teacher"], sample=3) == []


def test_frames_that_decode_to_other_pixels_are_refused(raw_views, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(raw_views["cache"], cache)
    store = sorted((cache / "stores").glob("*.zarr"))[0]
    g = zarr.open_group(store, mode="r+")
    crc = np.asarray(g["frames_checksum"][...])
    crc[2] ^= 1  # as if the frames decoded differently from the build's decoder
    g["frames_checksum"][...] = crc
    reader = CacheReader(cache)
    ref = next(r for k in reader.keys() for r in reader.rows(k) if r.store == store.name and r.row == 2)
    with pytest.raises(SaltCacheError, match="other pixels than the teacher encoded"):
        reader.frames(ref)
    lines = [p.line() for p in verify_cache(cache, digest=False)]
    assert any(f"store {store.name} row 2" in ln and "other pixels than the teacher encoded" in ln for ln in lines), lines


def test_int8_rows_with_per_channel_scales_report_their_fidelity(built_int8, demo, one_thread):
    from salt_cache.cache import describe_cache
    from salt_cache.cache.store import dequantize

    reader = CacheReader(built_int8["cache"])
    model, _ = load_encoder(built_int8["teacher"])
    worst = 1.0
    for shard in resolve_shards(demo / "val"):
        for key, _video, _meta in iter_shard(shard):
            (ref,) = reader.rows(key)
            values, scale = reader.read_stored(ref)
            assert values.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (96,)
            got = reader.read(ref)
            assert torch.equal(got, dequantize(values, scale)) and torch.equal(dequantize(values[None], scale[None])[0], got)
            view = reader.view(ref)
            with torch.inference_mode():
                want = model(normalize_frames(reader.frames(ref), view.mean, view.std)[None])[0]
            # the quantization error of each value is at most half a step of its channel
            assert ((got - want).abs() <= scale / 2 + 1e-6).all()
            worst = min(worst, float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)))
    fid = describe_cache(built_int8["cache"], rank_sample=0)["fidelity"]
    assert fid["rows"] == 12 and fid["worst_cosine"] == pytest.approx(worst, abs=1e-5) and fid["worst_cosine"] > 0.999
    assert 0 < fid["worst_relative_error"] < 0.03 and 0 < fid["worst_target_relative_error"] < 0.03
    # a quarter of the float32 bytes, plus 4 bytes of scale per channel (here 32 tokens: 1/32 more)
    store = sorted((built_int8["cache"] / "stores").glob("*.zarr"))[0]
    values, scales = ChunkReader(store / "latents"), ChunkReader(store / "latent_scales")
    assert len(values.encoded(0)) + len(scales.encoded(0)) <= (0.25 + 1 / 32) * 32 * 96 * 4 + 64
    rep = run_verify(VerifyConfig(built_int8["cache"], teacher=built_int8["teacher"], sample=4))
    assert rep.ok, [p.line() for p in rep.problems]
    assert rep.fidelity == fid and len(rep.reencoded) == 4


def test_int8_rows_cross_the_loader_as_int8_with_their_scales_and_dequantize_on_the_device(built_int8, demo):
    from salt_cache.masks import DEFAULT_MASKS
    from salt_cache.train.data import TrainStream

    join = CacheJoin(built_int8["cache"], seed=0)
    stream = TrainStream(resolve_shards(demo / "val"), join, 4, (2, 4, 4), DEFAULT_MASKS, seed=0, rank=0,
                         world_size=1, workers=1, shuffle_buffer=4)
    batch = next(stream.batches(split=0, n_splits=1))
    # a quarter of the float32 bytes cross the worker boundary, plus one float32 scale per channel
    assert batch["latents"].dtype == torch.int8 and batch["latents"].shape == (4, 32, 96)
    assert batch["latent_scale"].dtype == torch.float32 and batch["latent_scale"].shape == (4, 96)
    assert batch["clip"].dtype == torch.uint8
    reader = join.reader
    refs = [reader.rows(k)[0] for k in batch["keys"]]
    ready = on_device(batch, torch.device("cpu"))
    assert "latent_scale" not in ready and ready["latents"].dtype == torch.float32
    assert torch.equal(ready["latents"], torch.stack([reader.read(r) for r in refs]))  # bit for bit
    views = [reader.view(r) for r in refs]
    assert torch.equal(ready["clip"], torch.stack([normalize_frames(reader.frames(r), v.mean, v.std)
                                                   for r, v in zip(refs, views)]))


def test_int8_scales_are_covered_by_the_row_checksum(built_int8, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(built_int8["cache"], cache)
    store = sorted((cache / "stores").glob("*.zarr"))[0]
    g = zarr.open_group(store, mode="r+")
    block = np.asarray(g["latent_scales"][0:4])
    block[1, 5] *= 2  # a consistent chunk (crc32c rewritten by zarr) with a wrong scale
    g["latent_scales"][0:4] = block
    lines = [p.line() for p in verify_cache(cache, digest=False)]
    assert any(f"store {store.name} row 1" in ln and "checksum mismatch" in ln for ln in lines), lines
