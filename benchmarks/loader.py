"""Benchmark of what one Stage 2 DataLoader worker spends per sample, at ViT-L size, on one core:
the paper's view (16 frames, step 4, 224 px) of a real video, and latent rows [1568, 1024]. One
run, everything measured side by side on the same views and rows. Prints JSON with:

- source_decode_ms:     `decode_view` of one view from the source video (what Stage 2 paid
                        before student-ready views, every epoch)
- view_decode_ms:       `CacheReader.frames` of one stored view (--format, default jpeg): read,
                        decode, CRC-32C of the pixels; view_decode_ms_by_format for jpeg and raw
- latent_read_ms, latent_read_mb_s: `CacheReader.read_stored` of one row (shard index, pread,
                        crc32c, codec) in MB/s of the stored dtype
- codec_decode_mb_s:    the codec's own decode of the same chunk bytes in memory, and
                        zarr_read_mb_s: zarr reading the same row, for comparison
- loader_ms_per_sample: one sample as a worker makes it, `CacheJoin` to tensors ready to
                        collate (rows of the key, pick a view, stored frames as a uint8 clip
                        with its mean/std, latents in their stored dtype, int8 with scales,
                        and 1/batch of the batch's masks), the way contract 9 ships them;
                        loader_ms_per_sample_float32: the same with the clip normalized and the
                        latents upcast in the worker (the join before contract 9), for comparison
- cores_per_gpu_at_300: loader_ms_per_sample x 300 / 1000 (an H100 trains a ViT-L student on
                        cached targets at roughly 300 clips/s)
- bytes_per_row:        on-disk bytes of a latent row per storage dtype (int8: values + scales),
                        and bytes_per_view of the stored frames per format
- fidelity_vs_fp32:     int8 with per-channel scales (what the cache stores), int8 per token and
                        fp8 e4m3 per token (not offered), float16: worst cosine, per-token
                        cosine, relative error, relative error of the layer-normed target

The cache is real (cache.json, Zarr stores, done records), written through the library's own
`StoreWriter`, with one row per planned view of the video (same bytes under --views keys). Rows
are synthetic ViT-L latents (benchmarks/synthetic.py) unless --teacher gives an encoder
checkpoint (its forward on CPU at ViT-L size takes tens of seconds per view). The video is
--video, or a 640 x 272 H.264 clip made from a photograph when none is given (the JSON says
which). Times are medians over --passes passes in shuffled order, files in the page cache.

    python benchmarks/loader.py [--video FILE] [--views 12] [--passes 3] [--format jpeg]
                                [--codec blosc-zstd --level 3 --shuffle byte] [--teacher CKPT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

GPU_SAMPLES_PER_S = 300
BATCH = 24  # vjepa2's ViT-L batch per GPU: the masks of one batch are shared by its samples


def _times(fn, items, passes: int) -> list[float]:
    out = []
    for p in range(passes):
        for i in np.random.default_rng(p).permutation(len(items)):
            t = time.perf_counter()
            fn(items[i])
            out.append(time.perf_counter() - t)
    return out


def _ms(ts: list[float]) -> float:
    return round(statistics.median(ts) * 1e3, 3)


def write_cache(out: Path, spec, video: bytes, info, keys: list[str], rows_of, shard: Path, teacher_dim: int) -> None:
    """A real cache of one store: one row per key (view 0 of each key), built with the library's
    writer, header and manifest (no teacher forward: `rows_of(i, frames)` gives row i's fp32 latents)."""
    from salt_cache.cache.frames import round_trip
    from salt_cache.cache.manifest import make_header, refresh_manifest
    from salt_cache.cache.store import STORES_DIR, StoreWriter, store_name
    from salt_cache.video import normalize_frames, plan_view, view_frames

    header = make_header(spec, shard, "synthetic", {"name": "synthetic", "embed_dim": teacher_dim,
                                                    "patch_size": spec.patch_size, "tubelet_size": spec.tubelet_size},
                         {}, [shard], {"device": "cpu"})
    out.mkdir(parents=True)
    header.write(out)
    sv = spec.student_views
    w = StoreWriter(out / STORES_DIR / store_name(0, shard), len(keys), spec.tokens, teacher_dim, spec.storage,
                    {"shard": shard.name, "shard_index": 0}, sv, spec.clip.frames)
    meta = json.dumps({"frames": info.frames, "fps": info.fps, "height": info.height, "width": info.width})
    for i, key in enumerate(keys):
        view = plan_view(key, 0, spec.seed, info, spec.clip)
        items, digest = None, None
        x = None
        if sv.stored:
            items, frames, digest = round_trip(view_frames(video, view), sv.format, sv.quality)
            x = normalize_frames(frames, view.mean, view.std)
        w.put_ok(i, key, 0, view.to_dict(), meta, rows_of(i, x), frames=items, frames_digest=digest)
    w.finish()
    refresh_manifest(out, header)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", help="A video file (default: a 640 x 272 H.264 clip made here, see synthetic.py).")
    ap.add_argument("--spec", default="vitl-16x224", help="Cache spec (clip and grid).")
    ap.add_argument("--views", type=int, default=12, help="Rows (one planned view per key) in the cache.")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--format", default="jpeg", choices=["jpeg", "raw"], help="Stored-view format for the headline numbers.")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--dtype", default="float16", help="Latent storage dtype for the headline numbers.")
    ap.add_argument("--codec", default=None, help="Latent codec (default: the spec's).")
    ap.add_argument("--level", type=int, default=None)
    ap.add_argument("--shuffle", default=None)
    ap.add_argument("--teacher", help="Encoder checkpoint: real latents instead of synthetic rows (slow on CPU).")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    import webdataset as wds
    import zarr

    from salt_cache.cache import CacheReader
    from salt_cache.cache.chunks import ChunkReader
    from salt_cache.cache.store import STORES_DIR, dequantize
    from salt_cache.masks import DEFAULT_MASKS, multiblock_masks
    from salt_cache.shards import read_samples
    from salt_cache.spec import StudentViewsSpec, load_spec
    from salt_cache.train.data import StageContext
    from salt_cache.train.student import CacheJoin
    from salt_cache.video import decode_view, normalize_clip, plan_view, probe_video, view_frames
    from synthetic import latent_rows, sample_video

    base = load_spec(args.spec)
    storage = replace(base.storage, dtype=args.dtype, **{k: v for k, v in (("codec", args.codec), ("level", args.level),
                                                                           ("shuffle", args.shuffle)) if v is not None})
    with tempfile.TemporaryDirectory(prefix="salt-bench-loader-") as tmp:
        tmp = Path(tmp)
        video_path = Path(args.video) if args.video else sample_video(tmp / "sample-640x272.mp4")
        video = video_path.read_bytes()
        info = probe_video(video, video_path.name)
        keys = [f"clip-{i:04d}" for i in range(args.views)]
        shard = tmp / "shard-000000.tar"
        meta = {"frames": info.frames, "fps": info.fps, "height": info.height, "width": info.width}
        with wds.TarWriter(str(shard)) as tw:
            for k in keys:
                tw.write({"__key__": k, "mp4": video, "json": meta})

        if args.teacher:
            from salt_cache.checkpoint import load_encoder

            model, ckpt = load_encoder(Path(args.teacher), torch.device("cpu"))
            dim = int(ckpt["config"]["embed_dim"])
            memo: dict[int, torch.Tensor] = {}

            def rows_of(i, x):
                if i not in memo:
                    with torch.inference_mode():
                        memo[i] = model(x[None])[0].float()
                return memo[i]
            latents = f"teacher {args.teacher}"
        else:
            dim = 1024
            synth = latent_rows(args.views, base.tokens, dim)

            def rows_of(i, x):
                return synth[i]
            latents = "synthetic ViT-L rows (benchmarks/synthetic.py)"

        # 1. the source decode, on the planned views of the cache's keys
        views = [plan_view(k, 0, base.seed, info, base.clip) for k in keys]
        source_ts = _times(lambda v: decode_view(video, v), views, args.passes)

        # 2. caches: the headline one, the other frame format, and the other storage dtypes
        caches = {}
        for fmt in ("jpeg", "raw"):
            spec = replace(base, storage=storage, student_views=StudentViewsSpec(format=fmt, quality=args.quality))
            if args.teacher and fmt != args.format:
                continue  # a real teacher encodes each stored view: only the headline format
            write_cache(tmp / f"cache-{fmt}", spec, video, info, keys, rows_of, shard, dim)
            caches[fmt] = tmp / f"cache-{fmt}"
        sizes = {}
        for dt in ("float32", "float16", "bfloat16", "int8"):
            spec = replace(base, storage=replace(storage, dtype=dt), student_views=StudentViewsSpec())
            n = min(4, args.views)
            path = tmp / f"cache-{dt}"
            write_cache(path, spec, video, info, keys[:n], rows_of, shard, dim)
            store = next((path / STORES_DIR).glob("*.zarr"))
            parts = [ChunkReader(store / "latents")] + ([ChunkReader(store / "latent_scales")] if dt == "int8" else [])
            sizes[dt] = round(sum(len(c.encoded(r)) + 4 for c in parts for r in range(n)) / n)
            if dt == "int8":
                int8_cache = path

        reader = CacheReader(caches[args.format])
        refs = [reader.rows(k)[0] for k in keys]
        view_ts = _times(reader.frames, refs, args.passes)
        per_format = {}
        for fmt, path in caches.items():
            r = CacheReader(path)
            rr = [r.rows(k)[0] for k in keys]
            store = next((path / STORES_DIR).glob("*.zarr"))
            fr = ChunkReader(store / "frames")
            per_format[fmt] = {"view_decode_ms": _ms(_times(r.frames, rr, args.passes)),
                               "bytes_per_view": round(np.mean([sum(len(b) for b in fr.read(x.row)) for x in rr]))}

        # 3. latent rows: the reader's byte-range read vs the codec alone vs zarr, on the same rows
        store = next((caches[args.format] / STORES_DIR).glob("*.zarr"))
        chunks = ChunkReader(store / "latents")
        encoded = [bytes(chunks.encoded(r.row)) for r in refs]
        read_ts = _times(reader.read_stored, refs, args.passes)
        codec_ts = _times(chunks.decode, encoded, args.passes)
        arr = zarr.open_array(store / "latents", mode="r")
        zarr_ts = _times(lambda r: arr[r.row], refs, args.passes)
        values, _ = reader.read_stored(refs[0])
        row_bytes = values.numel() * values.element_size()
        r8 = CacheReader(int8_cache)
        refs8 = [r8.rows(k)[0] for k in keys[:4]]
        int8_read_ms = _ms(_times(r8.read_stored, refs8, args.passes))

        # int8 (and fp8) fidelity against the fp32 rows, and the per-token scale alternative
        fid = {}
        if not args.teacher:
            from salt_cache.cache.store import fidelity, quantize_int8

            def per_token_int8(x):
                s = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-30)
                return (x / s).round().clamp(-127, 127) * s

            def fp8_per_token(x):
                s = (x.abs().amax(-1, keepdim=True) / 448).clamp_min(1e-30)
                return (x / s).to(torch.float8_e4m3fn).float() * s
            quant = {"float16": lambda x: x.half().float(), "int8_per_channel": lambda x: (lambda q, s: q.float() * s)(*quantize_int8(x)),
                     "int8_per_token": per_token_int8}
            if hasattr(torch, "float8_e4m3fn"):
                quant["fp8_e4m3_per_token"] = fp8_per_token
            for name, q in quant.items():
                vals = np.array([fidelity(synth[i], q(synth[i])) for i in range(min(4, args.views))])
                fid[name] = {"worst_cosine": round(float(vals[:, 0].min()), 6), "worst_min_token_cosine": round(float(vals[:, 3].min()), 6),
                             "worst_relative_error": round(float(vals[:, 1].max()), 5),
                             "worst_target_relative_error": round(float(vals[:, 2].max()), 5)}

        # 4. one sample as a worker makes it: `CacheJoin`'s compact tensors (contract 9), then the
        #    same with the clip normalized and the latents upcast in the worker, as before it
        masks_ts = _times(lambda s: multiblock_masks(BATCH, base.grid, DEFAULT_MASKS, seed=s), list(range(5)), 1)
        mask_ms = _ms(masks_ts) / BATCH
        ctx = StageContext(epoch=0, train=True)
        samples = list(read_samples([shard]))

        join = CacheJoin(caches[args.format], seed=0)

        def in_float32(sample):  # what the join did before contract 9: normalize and upcast in the worker
            out = join(sample, ctx)
            out["clip"] = normalize_clip(out["clip"], out["norm"][0], out["norm"][1])
            out["latents"] = dequantize(out["latents"], out.pop("latent_scale", None))
            return out
        join(samples[0], ctx)  # opens stores, maps the key index
        sample_ts = _times(lambda s: join(s, ctx), samples, args.passes)
        join_ts = _times(in_float32, samples, args.passes)
        loader_ms = _ms(sample_ts) + mask_ms

        # the build's side: the uint8 view it now decodes (vs decode_view) and what it stores
        build_ts = _times(lambda v: view_frames(video, v), views[: max(2, len(views) // 3)], 1)

    src_ms, view_ms = _ms(source_ts), _ms(view_ts)
    read_ms, codec_ms = _ms(read_ts), _ms(codec_ts)
    result = {
        "benchmark": "loader",
        "video": {"file": str(video_path) if args.video else "synthetic 640x272 H.264 (benchmarks/synthetic.py)",
                  "frames": info.frames, "fps": info.fps, "width": info.width, "height": info.height,
                  "bytes": len(video)},
        "view": {"frames": base.clip.frames, "frame_step": base.clip.frame_step, "size": base.clip.size},
        "latents": {"rows": latents, "shape": [base.tokens, dim], "dtype": storage.dtype, "codec": storage.codec,
                    "level": storage.level, "shuffle": storage.shuffle},
        "stored_view_format": args.format, "jpeg_quality": args.quality,
        "source_decode_ms": src_ms,
        "view_decode_ms": view_ms,
        "view_vs_source": round(view_ms / src_ms, 4),
        "view_decode_ms_by_format": {f: v["view_decode_ms"] for f, v in per_format.items()},
        "bytes_per_view": {f: v["bytes_per_view"] for f, v in per_format.items()},
        "latent_read_ms": read_ms,
        "latent_read_mb_s": round(row_bytes / read_ms / 1e3, 1),
        "codec_decode_mb_s": round(row_bytes / codec_ms / 1e3, 1),
        "zarr_read_mb_s": round(row_bytes / _ms(zarr_ts) / 1e3, 1),
        "read_vs_codec": round(codec_ms / read_ms, 3),
        "masks_ms_per_sample": round(mask_ms, 3),
        "loader_ms_per_sample": round(loader_ms, 3),
        "loader_ms_per_sample_float32": round(_ms(join_ts) + mask_ms, 3),
        "cores_per_gpu_at_300": round(loader_ms * GPU_SAMPLES_PER_S / 1000, 2),
        "cores_per_gpu_at_300_source_decode": round((src_ms + read_ms + mask_ms) * GPU_SAMPLES_PER_S / 1000, 2),
        "int8_latent_read_ms": int8_read_ms,
        "bytes_per_row": sizes,
        "bytes_per_row_vs_fp32": {k: round(v / (base.tokens * dim * 4), 4) for k, v in sizes.items()},
        "fidelity_vs_fp32": fid,
        "fp32_bytes_per_row": base.tokens * dim * 4,
        "build_view_frames_ms": _ms(build_ts),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                 "threads": torch.get_num_threads(), "loadavg": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
