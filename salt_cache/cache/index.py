"""The compact key index of a cache: clip key -> (store, row, view, status), as numpy arrays.

Layout of `CACHE/index/` (written by `write_index` at the end of every build, on rank 0):

    hash.npy     [rows] uint64  64-bit BLAKE2b of the clip key, sorted ascending
    store.npy    [rows] int32   the store's position in cache.json's data.shards
    row.npy      [rows] uint32  row within that store
    view.npy     [rows] int32   view index within the clip
    status.npy   [rows] uint8   store.STATUS_* (missing, ok, failed)
    index.json   the stores it covers (names, in data order), row and clip counts

Rows are sorted by (hash, store, row), so a clip's rows are one contiguous run found with two
binary searches, and its first row (where its shard record is read) comes first. Readers memory-
map the arrays: a DataLoader worker pays for the pages its lookups touch (about 20 per key), not
for a Python dict of every row, and opens no store until it reads one. An index is used only when
it covers exactly the stores of the manifest; otherwise (an interrupted build, a cache written
before the index existed) the same arrays are built in memory from the stores' key, status and
view_index arrays. Two different keys with one 64-bit hash refuse the index, naming both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from salt_cache.cache.header import CacheHeader
from salt_cache.cache.store import STATUS_FAILED, STATUS_OK, STORES_DIR, open_group
from salt_cache.errors import SaltCacheError

INDEX_DIR = "index"
INDEX_FORMAT = "salt-cache/index"
INDEX_VERSION = 1
COLUMNS = {"hash": np.uint64, "store": np.int32, "row": np.uint32, "view": np.int32, "status": np.uint8}


def key_hash(key: str) -> int:
    """64-bit BLAKE2b of a clip key (little-endian), the index's sort key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def key_hashes(keys) -> np.ndarray:
    return np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))


@dataclass
class KeyIndex:
    """The index arrays (memory-mapped or in memory) and the store names they refer to."""

    hash: np.ndarray
    store: np.ndarray
    row: np.ndarray
    view: np.ndarray
    status: np.ndarray
    stores: list[str]
    counts: dict

    def span(self, key: str) -> tuple[int, int]:
        """[lo, hi) of the key's rows (lo == hi when the cache has none)."""
        h = np.uint64(key_hash(key))
        return int(np.searchsorted(self.hash, h, "left")), int(np.searchsorted(self.hash, h, "right"))


def _counts(status: np.ndarray, hashes: np.ndarray, n_stores: int) -> dict:
    ok = status == STATUS_OK
    n_ok, n_failed = int(ok.sum()), int((status == STATUS_FAILED).sum())
    starts = np.ones(len(hashes), dtype=bool)
    starts[1:] = hashes[1:] != hashes[:-1]
    clip_id = np.cumsum(starts) - 1
    clips_ok = len(np.unique(clip_id[ok])) if n_ok else 0
    return {"ok": n_ok, "failed": n_failed, "missing": int(len(status) - n_ok - n_failed), "rows": int(len(status)),
            "clips": int(starts.sum()), "clips_ok": int(clips_ok), "stores": n_stores}


def build_index(cache: Path, header: CacheHeader, progress=None) -> KeyIndex:
    """The index of the stores listed in `header`, built in memory from each store's key, status
    and view_index arrays. Refuses a key found in two stores, and a hash shared by two keys."""
    cache = Path(cache)
    position = {s.store: s.index for s in header.shards}
    names = [s.store for s in header.shards if s.store in header.stores]
    parts = {c: [] for c in COLUMNS}
    task = progress.add_task("indexing keys", total=len(names)) if progress else None
    for name in names:
        g = open_group(cache / STORES_DIR / name)
        keys = np.asarray(g["key"][...], dtype=object)
        hashes = key_hashes(keys.tolist())
        uk, first = np.unique(keys, return_index=True)
        if len(np.unique(hashes)) != len(uk):
            _collision(cache, dict(zip(uk.tolist(), hashes[first].tolist())))
        n = len(keys)
        parts["hash"].append(hashes)
        parts["store"].append(np.full(n, position[name], dtype=np.int32))
        parts["row"].append(np.arange(n, dtype=np.uint32))
        parts["view"].append(np.asarray(g["view_index"][...], dtype=np.int32))
        parts["status"].append(np.asarray(g["status"][...], dtype=np.uint8))
        if progress:
            progress.advance(task)
    cols = {c: (np.concatenate(parts[c]).astype(t, copy=False) if parts[c] else np.zeros(0, dtype=t))
            for c, t in COLUMNS.items()}
    order = np.lexsort((cols["row"], cols["store"], cols["hash"]))
    cols = {c: np.ascontiguousarray(a[order]) for c, a in cols.items()}
    stores = [s.store for s in header.shards]
    h, st = cols["hash"], cols["store"]
    clash = np.flatnonzero((h[1:] == h[:-1]) & (st[1:] != st[:-1]))
    if len(clash):  # one hash in two stores: the same key twice, or two keys with one hash
        i = int(clash[0])
        found = []
        for j in (i, i + 1):
            g = open_group(cache / STORES_DIR / stores[st[j]])
            found.append((str(g["key"][int(cols["row"][j])]), stores[st[j]]))
        (k1, s1), (k2, s2) = found
        if k1 == k2:
            raise SaltCacheError(f"{cache}: key {k1!r} is in two stores ({s1} and {s2})")
        raise SaltCacheError(f"{cache}: keys {k1!r} and {k2!r} share one 64-bit index hash; rename one")
    return KeyIndex(**cols, stores=stores, counts=_counts(cols["status"], cols["hash"], len(names)))


def _collision(cache: Path, hash_of: dict) -> None:
    by_hash: dict = {}
    for k, h in hash_of.items():
        if h in by_hash:
            raise SaltCacheError(f"{cache}: keys {by_hash[h]!r} and {k!r} share one 64-bit index hash; rename one")
        by_hash[h] = k


def write_index(cache: Path, header: CacheHeader, progress=None) -> KeyIndex:
    """Build the index of `header`'s finished stores and write it to CACHE/index/ (a temporary
    folder renamed into place); returns it."""
    cache = Path(cache)
    index = build_index(cache, header, progress)
    final = cache / INDEX_DIR
    tmp = cache / f".{INDEX_DIR}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for c in COLUMNS:
        np.save(tmp / f"{c}.npy", getattr(index, c))
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "covers": sorted(header.stores),
           "stores": index.stores, "counts": index.counts}
    (tmp / "index.json").write_text(json.dumps(doc) + "\n")
    old = cache / f".{INDEX_DIR}.{os.getpid()}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return index


def open_index(cache: Path, header: CacheHeader) -> KeyIndex | None:
    """The memory-mapped index of CACHE/index/ when it covers exactly the manifest's finished
    stores, else None."""
    folder = Path(cache) / INDEX_DIR
    try:
        doc = json.loads((folder / "index.json").read_text())
        if doc.get("format") != INDEX_FORMAT or doc.get("covers") != sorted(header.stores):
            return None
        if doc.get("stores") != [s.store for s in header.shards]:
            return None
        cols = {c: np.load(folder / f"{c}.npy", mmap_mode="r") for c in COLUMNS}
    except (OSError, ValueError):
        return None
    if any(a.dtype != np.dtype(COLUMNS[c]) or len(a) != len(cols["hash"]) for c, a in cols.items()):
        return None
    return KeyIndex(**cols, stores=list(doc["stores"]), counts=dict(doc["counts"]))


def index_is_current(cache: Path, header: CacheHeader) -> bool:
    return open_index(cache, header) is not None


def ensure_index(cache: Path, header: CacheHeader | None = None) -> bool:
    """Write CACHE/index/ when it is missing or stale (a read-only cache is left as it is: its
    readers build the index in memory). True when a current index is on disk afterwards."""
    header = header or CacheHeader.read(cache)
    if index_is_current(cache, header):
        return True
    try:
        write_index(cache, header)
    except OSError:
        return False
    return True
