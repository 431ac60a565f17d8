"""Fast reads of one chunk of a sharded Zarr v3 array: byte ranges from the shard index, the
codec chain decoded in the calling process.

Why: `zarr`'s own read of one 3.2 MB latent row runs at 260-310 MB/s on one core (its async
machinery, buffer copies and per-call codec pipeline), while the bytes decode at 1,000+ MB/s and
come from the page cache at 4,000+ MB/s. A Stage 2 DataLoader worker reads one row per sample, so
that overhead is paid per sample.

What a read does, for chunk (r, 0, ...) of an array whose chunks are whole along every axis but
the first (our layout: one row per chunk, `rows_per_shard` rows per shard file):

    shard file  <array>/c/<r // per_shard>/0/...   (chunk key encoding "default", separator "/")
    index       n x (offset uint64, nbytes uint64) little-endian + crc32c, at the end (or start)
                of the file; read once per shard file and kept (2 KB for 64 rows)
    chunk       bytes [offset, offset + nbytes) of the memory-mapped shard file -> crc32c checked
                -> blosc | zstd decoded straight from the mapping into the row's array

Only the codec chains this project writes are read here (bytes or vlen-bytes, then blosc, zstd or
nothing, then crc32c, under `sharding_indexed`); `ChunkReader` refuses anything else at open, and
callers fall back to `zarr`. The store stays a plain Zarr v3 array: this module only reads it.
"""

from __future__ import annotations

import json
import mmap
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

EMPTY = 2 ** 64 - 1  # offset and nbytes of a chunk that was never written
OPEN_SHARDS = 16  # shard files (mappings and their indexes) kept open per array


class UnsupportedLayout(Exception):
    """The array is not laid out as this module reads it (callers fall back to zarr)."""


class ChunkError(Exception):
    """A chunk (or shard index) whose checksum fails, or that is truncated."""


def _crc32c(buf) -> int:
    import google_crc32c

    return google_crc32c.value(np.frombuffer(buf, dtype=np.uint8))  # wants an array, not a memoryview


def _check_crc(buf: memoryview, what: str) -> memoryview:
    if len(buf) < 4:
        raise ChunkError(f"{what}: {len(buf)} bytes, too short for its checksum")
    body = buf[:-4]
    want = int.from_bytes(buf[-4:], "little")
    if _crc32c(body) != want:
        raise ChunkError(f"{what}: crc32c mismatch (damaged bytes)")
    return body


def _decoder(codec: dict, itemsize: int):
    """numcodecs decoder for one bytes-to-bytes codec of zarr's chain, or None for crc32c."""
    name, cfg = codec["name"], codec.get("configuration") or {}
    if name == "blosc":
        from numcodecs import Blosc, blosc

        # one core per DataLoader worker: blosc's own thread pool would only oversubscribe it
        blosc.use_threads = False
        return Blosc()  # blosc frames carry their own typesize, shuffle and compressor
    if name == "zstd":
        from numcodecs import Zstd

        return Zstd(level=int(cfg.get("level", 0)))
    raise UnsupportedLayout(f"codec {name}")


def _close(mapped: mmap.mmap, view: memoryview) -> None:
    try:
        view.release()
        mapped.close()
    except BufferError:  # a caller still holds a slice (encoded()): the mapping goes with it
        pass


def vlen_items(buf) -> list[bytes]:
    """Decode zarr's `vlen-bytes` encoding (numcodecs VLenBytes): uint32 count, then per item a
    uint32 length and its bytes, all little-endian."""
    mv = memoryview(buf)
    n = int.from_bytes(mv[:4], "little")
    out, pos = [], 4
    for _ in range(n):
        size = int.from_bytes(mv[pos:pos + 4], "little")
        pos += 4
        out.append(bytes(mv[pos:pos + size]))
        pos += size
    if pos != len(mv):
        raise ChunkError(f"vlen-bytes chunk: {len(mv) - pos} trailing bytes")
    return out


class ChunkReader:
    """Chunk reads of one sharded Zarr v3 array folder (`<store>/<name>`), one process.

    read(row) -> np.ndarray of the chunk's shape minus its first axis, stored dtype
                 (for a vlen-bytes array: a list of bytes objects)
    encoded(row) -> the chunk's encoded bytes (for benchmarks: the codec's own rate on them)
    decode(encoded) -> what read() returns
    Raises ChunkError for a damaged or missing chunk (a row never written reads as an error here,
    not as the fill value; callers check the row's status first anyway)."""

    def __init__(self, array_dir: Path | str):
        self.dir = Path(array_dir)
        try:
            meta = json.loads((self.dir / "zarr.json").read_text())
        except (OSError, ValueError) as e:
            raise UnsupportedLayout(f"{self.dir}/zarr.json: {e}") from None
        codecs = meta.get("codecs") or []
        if meta.get("zarr_format") != 3 or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            raise UnsupportedLayout("not a sharded Zarr v3 array")
        enc = meta.get("chunk_key_encoding", {})
        if enc.get("name") != "default" or (enc.get("configuration") or {}).get("separator", "/") != "/":
            raise UnsupportedLayout(f"chunk key encoding {enc}")
        self.shape = tuple(meta["shape"])
        shard_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        sh = codecs[0]["configuration"]
        chunk = tuple(sh["chunk_shape"])
        if chunk[0] != 1 or chunk[1:] != shard_shape[1:] or chunk[1:] != self.shape[1:]:
            raise UnsupportedLayout(f"chunks {chunk} in shards {shard_shape} of {self.shape}")
        self.per_shard = shard_shape[0]
        self.row_shape = chunk[1:]
        self.vlen = meta["data_type"] == "variable_length_bytes"
        if not self.vlen:
            try:
                self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            except TypeError:
                raise UnsupportedLayout(f"data type {meta['data_type']}") from None
        inner = list(sh["codecs"])
        first = inner.pop(0)
        if self.vlen:
            if first["name"] != "vlen-bytes":
                raise UnsupportedLayout(f"{first['name']} for variable-length bytes")
        elif first["name"] != "bytes" or (first.get("configuration") or {}).get("endian", "little") != "little":
            raise UnsupportedLayout(f"array-to-bytes codec {first}")
        if not inner or inner[-1]["name"] != "crc32c":
            raise UnsupportedLayout("chunks without a crc32c")
        inner.pop()
        self.decoders = [_decoder(c, 1 if self.vlen else self.dtype.itemsize) for c in inner]
        idx = [c["name"] for c in sh.get("index_codecs", [])]
        if idx not in (["bytes", "crc32c"], ["bytes"]):
            raise UnsupportedLayout(f"index codecs {idx}")
        self.index_crc = idx[-1] == "crc32c"
        self.index_at_end = sh.get("index_location", "end") == "end"
        self.index_bytes = self.per_shard * 16 + (4 if self.index_crc else 0)
        self.nbytes = int(np.prod(self.row_shape)) * (0 if self.vlen else self.dtype.itemsize)
        self._open: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()
        self._pid = os.getpid()

    # ---- shard files: descriptor and index, kept per process ---------------------------------------
    def _shard(self, s: int) -> tuple:
        if self._pid != os.getpid():  # a forked worker maps its own
            self._open = OrderedDict()
            self._pid = os.getpid()
        hit = self._open.get(s)
        if hit is not None:
            self._open.move_to_end(s)
            return hit
        path = self.dir.joinpath("c", str(s), *(["0"] * len(self.row_shape)))
        name = path.relative_to(self.dir.parent)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.index_bytes:
                    raise ChunkError(f"{name}: {size} bytes, shorter than its index")
                # mapped, not read: a chunk is decoded straight from the page cache, no copy
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ChunkError(f"{name}: shard file missing") from None
        view = memoryview(mapped)
        start = size - self.index_bytes if self.index_at_end else 0
        raw = view[start:start + self.index_bytes]
        body = _check_crc(raw, f"{name} index") if self.index_crc else raw
        index = np.frombuffer(body, dtype="<u8").reshape(self.per_shard, 2).copy()
        raw.release()
        if not self.index_crc:
            body.release()
        self._open[s] = (mapped, view, index)
        while len(self._open) > OPEN_SHARDS:
            _close(*self._open.popitem(last=False)[1][:2])
        return self._open[s]

    def close(self) -> None:
        for m, v, _ in self._open.values():
            _close(m, v)
        self._open.clear()

    def __del__(self):
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    # ---- chunks ---------------------------------------------------------------------------------
    def encoded(self, row: int) -> memoryview:
        """The chunk's stored bytes, checksum verified and stripped (what the compressor wrote)."""
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"row {row} outside 0..{self.shape[0] - 1}")
        _, view, index = self._shard(row // self.per_shard)
        offset, size = (int(v) for v in index[row % self.per_shard])
        if offset == EMPTY and size == EMPTY:
            raise ChunkError(f"row {row}: chunk never written")
        if offset + size > len(view):
            raise ChunkError(f"row {row}: chunk truncated (bytes {offset}..{offset + size} of a {len(view)}-byte shard file)")
        return _check_crc(view[offset:offset + size], f"row {row}")

    def decode(self, buf) -> np.ndarray | list[bytes]:
        """Encoded chunk bytes (checksum stripped) -> the row's values."""
        for i, d in enumerate(reversed(self.decoders)):
            last = i == len(self.decoders) - 1
            if last and not self.vlen:
                out = np.empty(self.row_shape, dtype=self.dtype)
                d.decode(buf, out=out)  # straight into the row's own array: no extra copy
                return out
            buf = d.decode(buf)
        if self.vlen:
            return vlen_items(buf)
        if len(buf) != self.nbytes:
            raise ChunkError(f"chunk holds {len(buf)} bytes, expected {self.nbytes}")
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.row_shape).copy()

    def read(self, row: int) -> np.ndarray | list[bytes]:
        return self.decode(self.encoded(row))
