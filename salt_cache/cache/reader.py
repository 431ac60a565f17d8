"""`CacheReader`: the read side of a latent cache, for Stage 2, the probe and tools.

Construction reads `cache.json` only, so a reader is cheap to build and to pickle into DataLoader
workers. Zarr stores are opened lazily in the process that reads them (handles are dropped on
pickling and after a fork), and the key index (key -> store, row, view, status) is the build's
memory-mapped `CACHE/index/` (`salt_cache.cache.index`): a worker opens only the stores it reads
from, and holds no per-row Python objects. Without a current index (an interrupted build) the
same arrays are built in memory on first use.

Only the stores listed in the manifest are visible: an interrupted build is usable, with the
clips of its finished stores.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from salt_cache.cache.chunks import ChunkError, ChunkReader, UnsupportedLayout
from salt_cache.cache.header import CacheHeader
from salt_cache.cache.index import KeyIndex, build_index, open_index
from salt_cache.cache.store import STATUS_NAMES, STATUS_OK, STORES_DIR, from_storage, open_group, stored_to_tensor
from salt_cache.errors import DamagedRow, SaltCacheError
from salt_cache.spec import CacheSpec
from salt_cache.video import View

LRU_STORES = 8  # per-store row arrays (views, status, meta) kept decoded per process


@dataclass(frozen=True)
class RowRef:
    """One cache row: store folder name, row index in that store, view index within its clip."""

    store: str
    row: int
    view_index: int


class CacheReader:
    """Read rows of a latent cache by clip key.

    header: the cache.json record (`CacheHeader`); teacher_dim, grid (T', H', W'), tokens, spec; keys()
    (clips with >= 1 ok row, sorted), rows(key) -> [RowRef] (ok rows), view(ref) -> View,
    read(ref) -> float32 [tokens, D], read_stored(ref) -> the row in its stored dtype,
    meta(key) -> the clip's shard-sample dict, counts().

    A read is: key -> (store, row, view) from the memory-mapped key index -> the row's chunk by
    byte range from the Zarr shard index, decoded in this process (`cache.chunks.ChunkReader`:
    crc32c checked, 3-5x zarr's own read of one row); a store laid out otherwise is read through
    zarr. A chunk that fails its checksum raises `DamagedRow` (Stage 2 skips and counts it)."""

    def __init__(self, cache_dir: Path | str):
        self.root = Path(cache_dir)
        self.header: CacheHeader = CacheHeader.read(self.root)
        h = self.header
        self.spec: CacheSpec = h.spec
        self.teacher_dim: int = h.teacher_dim
        self.grid: tuple[int, int, int] = tuple(h.grid)
        self.tokens: int = h.tokens
        self.dtype: str = h.dtype
        self.stores: list[str] = sorted(h.stores)
        self._index: KeyIndex | None = None
        self._keys: list[str] | None = None
        self._reset_handles()

    def require(self, **expected) -> None:
        """`CacheHeader.require` for this cache: a one-line SaltCacheError naming the first of
        grid, tokens, teacher_dim, patch_size, tubelet_size, frames, size, teacher_sha256 that
        differs from what the caller expects."""
        self.header.require(self.root, **expected)

    # ---- process-local state: never pickled, rebuilt after a fork -------------------------------
    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._groups: dict = {}
        self._strings: OrderedDict = OrderedDict()

    def _local(self) -> None:
        if self._pid != os.getpid():
            self._reset_handles()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_groups", "_strings", "_pid", "_index", "_keys"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index, self._keys = None, None  # re-mapped in the process that reads
        self._reset_handles()

    def _group(self, store: str):
        self._local()
        g = self._groups.get(store)
        if g is None:
            if store not in self.header.stores:
                raise SaltCacheError(f"{self.root}: no finished store {store!r} in the manifest")
            path = self.root / STORES_DIR / store
            grp = open_group(path)
            try:
                g = self._groups[store] = {"group": grp, "latents": grp["latents"]}
            except Exception as e:
                raise SaltCacheError(f"{path}: cannot open store ({type(e).__name__}: {str(e)[:120]})") from None
            try:
                g["chunks"] = ChunkReader(path / "latents")
            except UnsupportedLayout:
                g["chunks"] = None  # not our layout (a foreign or future codec): zarr reads it
            if self.dtype == "int8":
                try:
                    g["scales"] = ChunkReader(path / "latent_scales")
                except UnsupportedLayout as e:
                    raise SaltCacheError(f"{path}: int8 latents without readable latent_scales ({e})") from None
            if self.has_frames:
                try:
                    g["frames"] = ChunkReader(path / "frames")
                    g["frames_checksum"] = np.asarray(grp["frames_checksum"][...])
                except (UnsupportedLayout, KeyError) as e:
                    raise SaltCacheError(f"{path}: student-ready views are missing or unreadable ({e})") from None
        return g

    def _string_array(self, store: str, name: str) -> np.ndarray:
        return self._small_array(store, name, dtype=object)

    def _small_array(self, store: str, name: str, dtype=None) -> np.ndarray:
        """A per-row array of one store (key, view, status, meta, ...), kept for the last few
        stores read in this process."""
        self._local()
        k = (store, name)
        if k in self._strings:
            self._strings.move_to_end(k)
            return self._strings[k]
        a = np.asarray(self._group(store)["group"][name][...], dtype=dtype)
        self._strings[k] = a
        while len(self._strings) > 3 * LRU_STORES:
            self._strings.popitem(last=False)
        return a

    # ---- index ------------------------------------------------------------------------------------
    def _key_index(self) -> KeyIndex:
        if self._index is None:
            self._index = open_index(self.root, self.header) or build_index(self.root, self.header)
        return self._index

    def _refs(self, key: str, ok_only: bool = True) -> list[RowRef]:
        ix = self._key_index()
        lo, hi = ix.span(key)
        return [RowRef(ix.stores[int(ix.store[i])], int(ix.row[i]), int(ix.view[i])) for i in range(lo, hi)
                if not ok_only or ix.status[i] == STATUS_OK]

    def keys(self) -> list[str]:
        """Clip keys with at least one ok row, sorted. Reads every store's key array: for tools,
        not for DataLoader workers (they look keys up with `rows`)."""
        if self._keys is None:
            out = set()
            for store in self.stores:
                g = self._group(store)["group"]
                keys = np.asarray(g["key"][...], dtype=object)
                st = np.asarray(g["status"][...])
                out.update(keys[st == STATUS_OK].tolist())
            self._keys = sorted(out)
        return list(self._keys)

    def __len__(self) -> int:
        return int(self._key_index().counts["clips_ok"])

    def __contains__(self, key: str) -> bool:
        return bool(self._refs(key))

    def has_key(self, key: str) -> bool:
        """True when the cache holds any row for `key`, ok or failed (a failed clip is known and
        skipped; an unknown one is missing from the cache)."""
        lo, hi = self._key_index().span(key)
        return hi > lo

    def rows(self, key: str) -> list[RowRef]:
        """The ok rows of a clip (empty when the clip has none or is unknown)."""
        return self._refs(key)

    def status(self, ref: RowRef) -> str:
        if ref.store not in self.header.stores:
            raise SaltCacheError(f"{self.root}: no finished store {ref.store!r} in the manifest")
        st = self._small_array(ref.store, "status")
        if not 0 <= ref.row < len(st):
            raise SaltCacheError(f"{self.root}: no row {ref.row} in store {ref.store!r}")
        return STATUS_NAMES.get(int(st[ref.row]), "missing")

    def counts(self) -> dict:
        """{"ok", "failed", "missing", "rows", "clips", "clips_ok", "stores"} over the listed stores."""
        return dict(self._key_index().counts)

    # ---- rows -------------------------------------------------------------------------------------
    def view(self, ref: RowRef) -> View:
        """The view stored with a row: frame indices, crop box, size, normalization."""
        raw = self._string_array(ref.store, "view")[ref.row]
        if not raw:
            raise SaltCacheError(f"{ref.store} row {ref.row}: no view recorded (status {self.status(ref)})")
        return View.from_dict(json.loads(raw))

    def view_crc(self, ref: RowRef) -> int | None:
        """CRC-32 of the row's uint8 view as the build decoded it from the source (`video.view_crc`);
        None for a store that does not record it: one written before it existed, or one with
        student-ready views, whose `frames_checksum` covers the view instead (checked by `frames`)."""
        try:
            a = self._small_array(ref.store, "view_crc")
        except KeyError:
            a = self._strings[(ref.store, "view_crc")] = np.zeros(0, dtype=np.uint32)  # remembered: absent
        return int(a[ref.row]) if len(a) else None

    def _require_ok(self, ref: RowRef) -> None:
        s = self.status(ref)
        if s != "ok":
            key = self._string_array(ref.store, "key")[ref.row]
            raise SaltCacheError(f"{ref.store} row {ref.row} ({key}): status {s}, not ok")

    def read_array(self, ref: RowRef) -> tuple[np.ndarray, np.ndarray | None]:
        """The row's stored values as numpy, exactly as stored ([tokens, D]; float16, float32,
        uint16 bfloat16 bits or int8) and, for int8, its per-channel float32 scales [D] (else
        None). Refuses a row whose status is not ok: unwritten chunks read back as zeros
        without any error."""
        self._require_ok(ref)
        g = self._group(ref.store)
        try:
            values = g["chunks"].read(ref.row) if g["chunks"] is not None else g["latents"][ref.row]
            scale = g["scales"].read(ref.row) if "scales" in g else None
        except (ChunkError, OSError, ValueError, RuntimeError) as e:  # a damaged chunk fails its crc32c
            raise DamagedRow(f"{ref.store} row {ref.row}: unreadable latents ({type(e).__name__}: {str(e)[:120]})") from None
        return values, scale

    @property
    def has_frames(self) -> bool:
        """The cache stores student-ready views (`frames(ref)`): Stage 2 need not decode the source."""
        return self.spec.student_views.stored

    def frames(self, ref: RowRef) -> torch.Tensor:
        """The row's student-ready view: uint8 [T, S, S, 3], exactly the pixels its teacher
        encoded (their CRC-32C is checked on every read). Normalize with
        `video.normalize_frames(frames, view.mean, view.std)`, in a worker or on the device."""
        from salt_cache.cache.frames import decode_frames, frames_digest

        if not self.has_frames:
            raise SaltCacheError(f"{self.root}: this cache stores no student-ready views (spec student_views.format is none)")
        self._require_ok(ref)
        g = self._group(ref.store)
        try:
            items = g["frames"].read(ref.row)
        except (ChunkError, OSError, ValueError) as e:  # damaged bytes: one row lost, like latents
            raise DamagedRow(f"{ref.store} row {ref.row}: unreadable stored frames ({type(e).__name__}: {str(e)[:120]})") from None
        sv = self.spec.student_views
        frames = decode_frames(items, sv.format, self.spec.clip.size)
        if frames_digest(frames) != int(g["frames_checksum"][ref.row]):
            raise SaltCacheError(f"{ref.store} row {ref.row}: stored frames decode to other pixels than the teacher encoded "
                                 f"(checksum mismatch: a different {sv.format} decoder than the build's?)")
        return frames

    def read(self, ref: RowRef) -> torch.Tensor:
        """Latents of one row -> float32 [tokens, D] (one chunk read; int8 times its scales)."""
        values, scale = self.read_array(ref)
        return from_storage(values, self.dtype, scale)

    def read_stored(self, ref: RowRef) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents of one row in their stored dtype: (values [tokens, D] float16 | float32 |
        bfloat16 | int8, per-channel float32 scale [D] for int8 else None), no copy beyond the
        decode. What a DataLoader worker should ship (a half or a quarter of the float32 bytes);
        `cache.store.dequantize(values, scale)` upcasts them on the device."""
        values, scale = self.read_array(ref)
        return stored_to_tensor(values, self.dtype), (torch.from_numpy(scale) if scale is not None else None)

    def read_key(self, key: str, view_index: int | None = None) -> tuple[RowRef, torch.Tensor]:
        """Convenience: the row of `key` with `view_index` (default: its first ok row) and its latents."""
        refs = self.rows(key)
        if view_index is not None:
            refs = [r for r in refs if r.view_index == view_index]
        if not refs:
            raise SaltCacheError(f"{self.root}: no ok row for key {key!r}" + (f" view {view_index}" if view_index is not None else ""))
        return refs[0], self.read(refs[0])

    def meta(self, key: str) -> dict:
        """The clip's shard-sample JSON (source, label, frames, fps, ...) as stored by the build."""
        refs = self._refs(key, ok_only=False)
        if not refs:
            raise SaltCacheError(f"{self.root}: unknown key {key!r}")
        raw = self._string_array(refs[0].store, "meta")[refs[0].row]
        return json.loads(raw) if raw else {}
