"""What a cache of N rows costs its readers and its build's bookkeeping, measured in one run. Prints JSON:

- worker_index_mb:       RSS a fresh reader process (a DataLoader worker: imports done, zarr
                         included, the pickled CacheReader received) adds for the key index after looking up
                         --lookups random keys and reading one row (memory-mapped CACHE/index/)
- worker_first_read_s:   that process's time from unpickling the reader to its first row (rows(key)
                         -> view -> latents)
- index_build_s:         `write_index` over every store (reads each store's key/status/view arrays)
- manifest_update_s:     listing one more finished store in cache.json at --stores stores
                         (`add_store`, from the store's own done record)
- without_index:         the same two worker figures when CACHE/index/ is absent or stale, so the
                         reader builds the arrays itself (an interrupted build), side by side
- manifest_rescan_s:     the same store listed by rescanning the unlisted stores
                         (`refresh_manifest(full=False)`, what every finished store cost before)

The cache is simulated with small rows (1 token x 8 channels, float16): one real store is
written with `StoreWriter`, then copied --stores times, each copy with its own keys (key array
and done record rewritten), so the index and the manifest see N distinct clips of 2 views.

    python benchmarks/scale.py --rows 1000000 [--stores 1000] [--lookups 1000] [--no-compare]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPEC = """\
name: scale-sim
clip: {frames: 2, frame_step: 1, size: 16, crop: center}
views: 2
seed: 0
patch_size: 16
tubelet_size: 2
storage: {dtype: float16, codec: blosc-zstd, level: 1, rows_per_shard: 1024}
"""
DIM = 8

WORKER = r"""
import json, pickle, random, sys, time
import numpy as np
import zarr, zarr.codecs  # a forked DataLoader worker has its parent's imports
from salt_cache.cache.reader import CacheReader

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

blob, keys_file, lookups = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(blob, "rb").read()
keys = open(keys_file).read().split()
before = rss_mb()
t0 = time.perf_counter()
reader = pickle.loads(data)
ref = reader.rows(keys[0])[0]
view = reader.view(ref)
x = reader.read(ref)
first = time.perf_counter() - t0
rng = random.Random(0)
found = sum(len(reader.rows(rng.choice(keys))) for _ in range(lookups))
after = rss_mb()
print(json.dumps({"first_read_s": first, "index_mb": after - before, "rows_found": found, "shape": list(x.shape)}))
"""


def simulate(root: Path, rows: int, stores: int) -> tuple[Path, list[str]]:
    """A cache of `rows` rows (2 views per clip) in `stores` stores; returns (cache, some keys)."""
    import torch
    import zarr

    from salt_cache.cache.manifest import make_header, manifest_entry
    from salt_cache.cache.store import STORES_DIR, StoreWriter, done_path
    from salt_cache.spec import load_spec

    spec_file = root / "spec.yaml"
    spec_file.write_text(SPEC)
    spec = load_spec(spec_file)
    per_store = max(2, rows // stores // 2 * 2)
    clips = per_store // 2
    data = root / "shards"
    data.mkdir()
    shards = []
    for i in range(stores):
        p = data / f"shard-{i:06d}.tar"
        p.write_bytes(b"")
        shards.append(p)
    teacher = root / "teacher.pt"
    teacher.write_bytes(b"")
    header = make_header(spec, teacher, "0" * 64, {"embed_dim": DIM, "patch_size": 16, "tubelet_size": 2}, {},
                         shards, {"device": "cpu", "batch_size": 1})
    cache = root / "cache"
    (cache / STORES_DIR).mkdir(parents=True)
    header = header.write(cache)
    # one real store, written by the build's writer
    template = cache / STORES_DIR / "template.zarr"
    w = StoreWriter(template, per_store, spec.tokens, DIM, spec.storage, {"views": 2})
    view = {"key": "k", "index": 0, "frames": [0, 1], "box": [0, 0, 16, 16], "size": 16,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    for r in range(per_store):
        w.put_ok(r, f"c{r // 2}", r % 2, view, "{}", torch.randn(spec.tokens, DIM))
    record = w.finish()
    entries, sample_keys = {}, []
    for s in header.shards:
        final = cache / STORES_DIR / s.store
        shutil.copytree(template, final)
        keys = np.asarray([f"s{s.index:06d}-c{c:06d}" for c in range(clips) for _ in (0, 1)], dtype=object)
        zarr.open_group(final, mode="r+", zarr_format=3)["key"][...] = keys
        rec = {**record, "store": s.store, "shard": s.name, "shard_index": s.index}
        done_path(final).write_text(json.dumps(rec))
        entries[s.store] = manifest_entry(rec)
        sample_keys.append(str(keys[(s.index * 7919) % len(keys)]))
    shutil.rmtree(template)
    done_path(template).unlink(missing_ok=True)
    header.with_stores(entries).write(cache)
    return cache, sample_keys


def worker(cache: Path, keys: list[str], lookups: int, root: Path) -> dict:
    import pickle

    from salt_cache.cache.reader import CacheReader

    blob, keys_file = root / "reader.pkl", root / "keys.txt"
    blob.write_bytes(pickle.dumps(CacheReader(cache)))
    keys_file.write_text("\n".join(keys))
    r = subprocess.run([sys.executable, "-c", WORKER, str(blob), str(keys_file), str(lookups)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(f"worker failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--stores", type=int, default=1000)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--no-compare", dest="compare", action="store_false",
                    help="skip the figures without an index (they read every store in the worker)")
    ap.add_argument("--keep", type=Path, default=None, help="build the simulated cache here and keep it")
    args = ap.parse_args(argv)

    from salt_cache.cache.header import CacheHeader
    from salt_cache.cache.index import INDEX_DIR, write_index
    from salt_cache.cache.manifest import add_store, manifest_entry, refresh_manifest
    from salt_cache.cache.store import STORES_DIR, read_done

    root = Path(tempfile.mkdtemp(prefix="salt-scale-")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        cache, keys = simulate(root, args.rows, args.stores)
        simulate_s = time.perf_counter() - t
        header = CacheHeader.read(cache)
        t = time.perf_counter()
        write_index(cache, header)
        index_build_s = time.perf_counter() - t
        w = worker(cache, keys, args.lookups, root)

        # one more finished store at --stores stores: the last one, unlisted, then listed again
        last = header.shards[-1].store
        without = header.with_stores({k: v for k, v in header.stores.items() if k != last})
        record = read_done(cache / STORES_DIR / last)
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            add_store(cache, without, last, record)
        manifest_update_s = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            refresh_manifest(cache, without, full=False)
        rescan_s = (time.perf_counter() - t) / reps
        assert CacheHeader.read(cache).complete

        out = {"rows": sum(s["rows"] for s in header.stores.values()),
               "stores": len(header.stores), "simulate_s": round(simulate_s, 2),
               "worker_index_mb": round(w["index_mb"], 2), "worker_first_read_s": round(w["first_read_s"], 4),
               "index_build_s": round(index_build_s, 3), "manifest_update_s": round(manifest_update_s, 4),
               "manifest_rescan_s": round(rescan_s, 4), "lookups": args.lookups,
               "index_bytes": sum(p.stat().st_size for p in (cache / INDEX_DIR).iterdir())}
        if args.compare:
            shutil.rmtree(cache / INDEX_DIR)  # as after an interrupted build
            w2 = worker(cache, keys, args.lookups, root)
            out["without_index"] = {"worker_index_mb": round(w2["index_mb"], 2),
                                    "worker_first_read_s": round(w2["first_read_s"], 4)}
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
