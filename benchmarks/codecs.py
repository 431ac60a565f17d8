"""Benchmark of latent storage codecs, one core, every codec on the same rows in one run. Prints
JSON, one entry per (dtype, codec, level, shuffle):

- ratio:               bytes of a stored row on disk (chunk + crc) / raw bytes of the stored dtype
- bytes_per_row:       on disk, averaged over the rows
- codec_decode_mb_s:   the codec's own decode of the chunk bytes, in memory (numcodecs)
- read_mb_s:           `ChunkReader.read` of a row: pread from the shard index, crc32c, decode
- zarr_read_mb_s:      `zarr` reading the same row (`latents[r]`)
- ms_per_mb_saved:     (read time of the row - read time without a codec) / MB saved per row:
                       what each saved megabyte costs a loader worker (lower is better)
MB/s are of decoded (stored-dtype) bytes. Rows are read in a shuffled order, --passes passes,
the codecs interleaved pass by pass, median per row (best_of: the fastest read, what an idle
core does); the files sit in the page cache (a loader reading from a cold disk or network
gains more from a smaller row than this shows).

Rows: synthetic ViT-L rows (benchmarks/synthetic.py) unless --cache names a cache, whose ok rows
(float32, decoded) are stored again under every codec.

    python benchmarks/codecs.py [--cache CACHE] [--rows 12] [--tokens 1568 --dim 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CANDIDATES = [  # (codec, level, shuffle)
    ("none", 0, "byte"),
    ("blosc-lz4", 5, "byte"), ("blosc-lz4", 9, "byte"), ("blosc-lz4", 5, "bit"),
    ("blosc-zstd", 1, "byte"), ("blosc-zstd", 3, "byte"), ("blosc-zstd", 5, "byte"), ("blosc-zstd", 7, "byte"),
    ("blosc-zstd", 9, "byte"), ("blosc-zstd", 3, "bit"), ("blosc-zstd", 5, "bit"),
    ("zstd", 1, "byte"), ("zstd", 3, "byte"),
]


def write_store(rows: torch.Tensor, dtype: str, codec: str, level: int, shuffle: str, tmp: Path) -> dict:
    """Store `rows` [n, tokens, D] (float32) under one codec; -> what the timing needs."""
    import zarr

    from salt_cache.cache.chunks import ChunkReader
    from salt_cache.cache.store import StoreWriter
    from salt_cache.spec import StorageSpec

    n, tokens, dim = rows.shape
    storage = StorageSpec(dtype=dtype, codec=codec, level=level, shuffle=shuffle, rows_per_shard=n)
    final = tmp / f"{dtype}-{codec}-{level}-{shuffle}.zarr"
    w = StoreWriter(final, n, tokens, dim, storage, {})
    t = time.perf_counter()
    for r in range(n):
        w.put_ok(r, f"k{r}", 0, {"key": f"k{r}", "index": 0}, "{}", rows[r])
    w.finish()
    write_s = time.perf_counter() - t
    chunks = ChunkReader(final / "latents")
    arr = zarr.open_array(final / "latents", mode="r")
    assert np.array_equal(chunks.read(n - 1), arr[n - 1])
    encoded = [bytes(chunks.encoded(r)) for r in range(n)]
    return {"config": (dtype, codec, level, shuffle), "chunks": chunks, "zarr": arr, "encoded": encoded,
            "write_s": write_s, "times": {"decode": [], "read": [], "zarr": []}}


def time_pass(entry: dict, seed: int) -> None:
    """One pass over the rows of one store in a shuffled order: codec alone, reader, zarr."""
    chunks, arr, encoded, times = entry["chunks"], entry["zarr"], entry["encoded"], entry["times"]
    for r in np.random.default_rng(seed).permutation(len(encoded)).tolist():
        for name, fn, arg in (("decode", chunks.decode, encoded[r]), ("read", chunks.read, r), ("zarr", arr.__getitem__, r)):
            t = time.perf_counter()
            fn(arg)
            times[name].append(time.perf_counter() - t)


def summarize(entry: dict) -> dict:
    dtype, codec, level, shuffle = entry["config"]
    chunks, encoded, times = entry["chunks"], entry["encoded"], entry["times"]
    raw, n = chunks.nbytes, len(encoded)
    on_disk = sum(len(e) + 4 for e in encoded) / n

    def rate(name: str, best: bool = False) -> float:
        t = min(times[name]) if best else statistics.median(times[name])
        return round(raw / t / 1e6, 1)
    return {"dtype": dtype, "codec": codec, "level": level if codec != "none" else None,
            "shuffle": shuffle if codec.startswith("blosc") else None,
            "ratio": round(on_disk / raw, 4), "bytes_per_row": round(on_disk),
            "codec_decode_mb_s": rate("decode"), "read_mb_s": rate("read"), "zarr_read_mb_s": rate("zarr"),
            "read_vs_codec": round(rate("read") / rate("decode"), 3),
            "best_of": {"codec_decode_mb_s": rate("decode", True), "read_mb_s": rate("read", True),
                        "zarr_read_mb_s": rate("zarr", True)},
            "read_ms": round(statistics.median(times["read"]) * 1e3, 3),
            "write_mb_s": round(raw * n / entry["write_s"] / 1e6, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", help="Take rows from this cache instead of synthetic ViT-L rows.")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=1568)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--dtype", default="float16", help="Storage dtype (float16, bfloat16, float32).")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.cache:
        from salt_cache.cache import CacheReader

        reader = CacheReader(args.cache)
        refs = [r for k in reader.keys() for r in reader.rows(k)]
        pick = np.linspace(0, len(refs) - 1, min(args.rows, len(refs))).round().astype(int)
        rows = torch.stack([reader.read(refs[i]) for i in pick])
        source = f"cache {args.cache} ({reader.header.teacher.config.get('name') or 'teacher'}, {len(pick)} rows spread over {len(refs)})"
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from synthetic import latent_rows

        rows = latent_rows(args.rows, args.tokens, args.dim)
        source = "synthetic ViT-L rows (benchmarks/synthetic.py)"
    with tempfile.TemporaryDirectory(prefix="salt-codecs-") as tmp:
        entries = [write_store(rows, args.dtype, c, lv, sh, Path(tmp)) for c, lv, sh in CANDIDATES]
        for p in range(args.passes):  # interleaved: a busy machine slows every codec alike
            for e in entries:
                time_pass(e, p)
        results = [summarize(e) for e in entries]
    base = next(r for r in results if r["codec"] == "none")
    for r in results:
        saved = (base["bytes_per_row"] - r["bytes_per_row"]) / 1e6
        extra = r["read_ms"] - base["read_ms"]
        r["mb_saved_per_row"] = round(saved, 4)
        r["ms_per_mb_saved"] = round(extra / saved, 3) if saved > 1e-4 else None
    out = {"benchmark": "codecs", "rows": source, "shape": list(rows.shape[1:]), "dtype": args.dtype,
           "cpus": os.cpu_count(), "results": results}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
