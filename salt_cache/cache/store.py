"""One Zarr v3 store per input shard: layout, writing, and the done record.

Layout of `CACHE/stores/<NNNNNN>-<shard stem>.zarr` (a Zarr group):

    latents     [rows, tokens, D]  float16 | float32 | uint16 (bfloat16 bits) | int8 (attribute `dtype`)
                chunks of one row; sharding codec, `rows_per_shard` rows per shard file;
                inner chunks: bytes -> compressor -> crc32c, so a damaged chunk fails to read
    latent_scales [rows, D] float32  int8 only: per-channel scale, value = int8 x scale (sharded
                like the latents, one row per chunk)
    fidelity    [rows, 4] float32  the stored row against the fp32 teacher output: cosine, relative
                L2 error, relative L2 error of the layer-normed target Stage 2 regresses, and the
                smallest per-token cosine (computed in float64; absent in stores written before)
    key         [rows] string      clip key (webdataset `__key__`)
    view_index  [rows] int32       view number within the clip
    view        [rows] string      JSON of `View.to_dict()` ("" when the view could not be planned)
    status      [rows] uint8       0 missing (never written: the fill value), 1 ok, 2 failed
    reason      [rows] string      why a row failed ("" when ok)
    stats       [rows, 3] float32  mean, std (population), L2 norm of the fp32 teacher output
    checksum    [rows] uint32      CRC-32 of the row's stored bytes (little-endian; for int8 the
                                   values' bytes, then the scales')
    meta        [rows] string      the clip's shard-sample JSON (source, label, frames, ...)
    view_crc    [rows] uint32      CRC-32 of the view's uint8 pixels [C, T, H, W] decoded from the
                                   source, what the teacher saw before normalization (absent from
                                   stores of older builds, and from stores with student-ready
                                   views: there `frames_checksum` is the view's one digest)

and, when the spec stores student-ready views (`student_views.format` jpeg or raw, see
`salt_cache.cache.frames`):

    frames          [rows, T] bytes   one encoded frame per item, sharded like the latents (one
                                      row per chunk, crc32c per chunk; raw frames Blosc-lz4)
    frames_checksum [rows] uint32     CRC-32C of the row's decoded uint8 frames [T, S, S, 3]:
                                      what the teacher encoded

and beside it, outside the Zarr hierarchy (zarr warns about foreign files inside one):

`CACHE/stores/<NNNNNN>-<shard stem>.done.json`: the done record: rows, counts, files and sizes,
bytes, digest. It is the commit: a store counts only once its done record exists.

Row r holds view r % views of the shard's sample r // views: a clip's views are consecutive and
row order follows the shard, whatever the batch size or worker count. A store is written under
`<name>.partial` by one writer and renamed when whole, then its done record is written (to a
temporary name, renamed), last; on an object store, where nothing renames, the done record alone
would be the commit. Zarr shards are written whole, once, so no read-modify-write of a shard ever
happens (zarr-python issue 3682).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch

from salt_cache.errors import SaltCacheError
from salt_cache.spec import StorageSpec, StudentViewsSpec

STORE_FORMAT = "salt-cache/store"
STORE_VERSION = 1
STORES_DIR = "stores"
STORE_SUFFIX = ".zarr"
TEMP_SUFFIX = ".partial"
DONE_SUFFIX = ".done.json"
LEGACY_DONE_NAME = "done.json"  # where stores written before the record moved out kept it

STATUS_MISSING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_MISSING: "missing", STATUS_OK: "ok", STATUS_FAILED: "failed"}
ROW_ARRAYS = ("key", "view_index", "view", "status", "reason", "stats", "checksum", "meta")
FRAME_ARRAYS = ("frames", "frames_checksum")  # only in stores with student-ready views
# absent from older stores, other dtypes, or (view_crc) stores whose frames_checksum covers the view
OPTIONAL_ARRAYS = ("fidelity", "latent_scales", "view_crc") + FRAME_ARRAYS

# unit roundoff of each storage dtype: the largest relative error of one stored value (int8: half
# a step of a channel whose largest value is 127 steps, relative to that value)
ROUNDOFF = {"float32": 0.0, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "int8": 1.0 / 254}
FIDELITY = ("cosine", "relative_error", "target_relative_error", "min_token_cosine")


def store_name(index: int, shard: Path) -> str:
    """Store folder name from the shard's position in the data list and its file name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(shard).name.split(".")[0]) or "shard"
    return f"{index:06d}-{stem}{STORE_SUFFIX}"


def stored_dtype(dtype: str) -> np.dtype:
    """Zarr dtype that holds latents of spec dtype `dtype` (bfloat16 travels as its uint16 bits)."""
    return np.dtype({"float16": "<f2", "float32": "<f4", "bfloat16": "<u2", "int8": "i1"}[dtype])


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 row [tokens, D] -> (int8 [tokens, D], float32 scale [D]): symmetric, one scale per
    channel (its largest magnitude over the row / 127). Per channel, not per token: trained ViTs
    have a few channels far larger than the rest, and a per-token scale spends the 8 bits on them
    (benchmarks/loader.py reports both)."""
    scale = (x.abs().amax(dim=-2) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    return (x / scale).round_().clamp_(-127, 127).to(torch.int8), scale


def to_storage(x: torch.Tensor, dtype: str) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """fp32 latents [..., D] -> numpy array in the stored representation; for int8 the pair
    (int8 values, float32 per-channel scales)."""
    x = x.detach().to("cpu", torch.float32)
    if dtype == "int8":
        q, scale = quantize_int8(x)
        return q.numpy(), scale.numpy()
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.to(torch.float16 if dtype == "float16" else torch.float32).numpy()


def from_storage(a: np.ndarray, dtype: str, scale: np.ndarray | None = None) -> torch.Tensor:
    """Stored representation (and, for int8, its per-channel scales) -> float32 tensor of the same
    shape. `stored_to_tensor` keeps the stored dtype instead (what the loader ships)."""
    a = np.ascontiguousarray(a)
    if dtype == "int8":
        if scale is None:
            raise ValueError("int8 latents need their scales")
        return dequantize(torch.from_numpy(a), torch.from_numpy(np.asarray(scale, dtype=np.float32)))
    if dtype == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).float()
    return torch.from_numpy(a.astype(np.float32))


def dequantize(values: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Stored-dtype latents (as `CacheReader.read_stored` returns them, batched or not, on any
    device) -> float32: an upcast, times the per-channel scale [..., D] for int8."""
    x = values.float()
    return x * scale.to(x.device, torch.float32).unsqueeze(-2) if scale is not None else x


def fidelity(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, float]:
    """Stored row y against the fp32 teacher output x [tokens, D], in float64: (cosine, relative L2
    error, relative L2 error of layer_norm(.) -- Stage 2's target --, smallest per-token cosine)."""
    import torch.nn.functional as F

    x, y = x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)
    cos = float(F.cosine_similarity(x.flatten(), y.flatten(), dim=0))
    rel = float((y - x).norm() / x.norm().clamp_min(1e-30))
    lx, ly = F.layer_norm(x, x.shape[-1:]), F.layer_norm(y, y.shape[-1:])
    trel = float((ly - lx).norm() / lx.norm().clamp_min(1e-30))
    tok = float(F.cosine_similarity(x, y, dim=-1).min())
    return cos, rel, trel, tok


def fidelity_summary(values: np.ndarray) -> dict | None:
    """Per-row fidelity [n, 4] (ok rows) -> worst and mean over the rows, or None when empty."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v).all(axis=1)] if v.size else v
    if not len(v):
        return None
    worst = [v[:, 0].min(), v[:, 1].max(), v[:, 2].max(), v[:, 3].min()]
    return {"rows": int(len(v)), **{f"worst_{k}": float(w) for k, w in zip(FIDELITY, worst)},
            **{f"mean_{k}": float(m) for k, m in zip(FIDELITY, v.mean(axis=0))}}


def stored_to_tensor(a: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored representation -> tensor in the stored dtype (bfloat16 bits viewed as bfloat16),
    sharing memory with `a` when it is writable and contiguous."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    if dtype == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def merge_fidelity(summaries) -> dict | None:
    """Fidelity summaries of several stores -> one: worst of the worst, row-weighted means; None
    when none was recorded (stores written before it was measured)."""
    fs = [f for f in summaries if f]
    if not fs:
        return None
    n = sum(f["rows"] for f in fs)
    out = {"rows": n}
    for k in FIDELITY:
        pick = min if "cosine" in k else max
        out[f"worst_{k}"] = pick(f[f"worst_{k}"] for f in fs)
        out[f"mean_{k}"] = sum(f[f"mean_{k}"] * f["rows"] for f in fs) / n
    return out


def row_checksum(stored_row: np.ndarray, scale: np.ndarray | None = None) -> int:
    """CRC-32 of one row's stored bytes, little-endian (int8: the values, then the scales)."""
    crc = 0
    for a in (stored_row,) if scale is None else (stored_row, scale):
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(), crc)
    return crc & 0xFFFFFFFF


def row_stats(x: torch.Tensor) -> tuple[float, float, float]:
    """(mean, population std, L2 norm) of one row [tokens, D], computed in float64."""
    d = x.detach().to("cpu", torch.float64)
    return float(d.mean()), float(d.std(unbiased=False)), float(d.norm())


def stats_problem(recorded, values: torch.Tensor, dtype: str) -> str | None:
    """Compare recorded (mean, std, L2) of the fp32 output with stats recomputed from the stored
    values; a stored value is off by at most the dtype's roundoff, so the stats can drift by
    about that much relative to the row's scale. Returns a description, or None when they agree."""
    mean, std, l2 = (float(v) for v in recorded)
    m2, s2, n2 = row_stats(values)
    tol = 2 * ROUNDOFF[dtype] + 1e-6
    rms = n2 / max(values.numel(), 1) ** 0.5
    if not all(np.isfinite([mean, std, l2])):
        return f"recorded stats are not finite ({mean}, {std}, {l2})"
    if abs(l2 - n2) > tol * max(n2, 1e-12) or abs(std - s2) > tol * rms + 1e-9 or abs(mean - m2) > tol * rms + 1e-9:
        return f"stats mismatch: recorded mean/std/L2 {mean:.6g}/{std:.6g}/{l2:.6g}, stored values give {m2:.6g}/{s2:.6g}/{n2:.6g}"
    return None


BLOSC_SHUFFLE = {"byte": "shuffle", "bit": "bitshuffle", "none": "noshuffle"}  # spec name -> zarr's


def compressors(storage: StorageSpec, itemsize: int) -> list:
    """Bytes-to-bytes codecs of one latent chunk: the compressor, then a CRC-32C so that a damaged
    chunk raises on read instead of decoding to plausible numbers."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if storage.codec.startswith("blosc-"):
        first = [BloscCodec(cname=storage.codec.removeprefix("blosc-"), clevel=storage.level,
                            shuffle=BLOSC_SHUFFLE[storage.shuffle], typesize=itemsize)]
    elif storage.codec == "zstd":
        first = [ZstdCodec(level=storage.level)]
    else:
        first = []
    return first + [Crc32cCodec()]


def codecs_description(storage: StorageSpec) -> list[dict]:
    """The latent array's codec chain as plain data, for the fingerprint."""
    chain = [{"name": "bytes", "endian": "little"}]
    if storage.codec.startswith("blosc-"):
        chain.append({"name": "blosc", "cname": storage.codec.removeprefix("blosc-"), "clevel": storage.level,
                      "shuffle": BLOSC_SHUFFLE[storage.shuffle]})
    elif storage.codec == "zstd":
        chain.append({"name": "zstd", "level": storage.level})
    chain.append({"name": "crc32c"})
    return [{"name": "sharding_indexed", "chunk_rows": 1, "rows_per_shard": storage.rows_per_shard,
             "codecs": chain, "index_codecs": [{"name": "bytes"}, {"name": "crc32c"}]}]


def store_files(path: Path) -> dict[str, int]:
    """Relative path -> size of every file of a store (a legacy in-store done record excepted), sorted."""
    path = Path(path)
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            rel = p.relative_to(path).as_posix()
            if rel != LEGACY_DONE_NAME:
                out[rel] = p.stat().st_size
    return out


def store_digest(path: Path, files: dict[str, int] | None = None) -> str:
    """sha256 over (relative path, size, content) of every file of the store, in sorted order."""
    path = Path(path)
    files = store_files(path) if files is None else files
    h = hashlib.sha256()
    for rel, size in sorted(files.items()):
        h.update(rel.encode() + b"\0" + int(size).to_bytes(8, "little"))
        with open(path / rel, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return "sha256:" + h.hexdigest()


def done_path(final: Path) -> Path:
    """Where the done record of store folder `final` lives: beside it, `<name>.done.json`."""
    final = Path(final)
    return final.with_name(final.name.removesuffix(STORE_SUFFIX) + DONE_SUFFIX)


def _load_record(p: Path) -> dict | None:
    try:
        rec = json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == STORE_FORMAT else None


def is_done_record(p: Path) -> bool:
    return _load_record(p) is not None


def read_done(path: Path) -> dict | None:
    """The done record of store folder `path`, or None when the store is not finished: no folder,
    no record (or an unreadable one). Stores written before the record moved out of the Zarr
    hierarchy keep it inside, as done.json, and still read."""
    path = Path(path)
    if not path.is_dir():
        return None
    return _load_record(done_path(path)) or _load_record(path / LEGACY_DONE_NAME)


def _remove(path: Path) -> bool:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    else:
        return False
    return True


def clear_partial(final: Path) -> bool:
    """Remove a store's temporary folder and temporary done record, and the final folder and
    done record unless the store is finished. Returns True when something was removed."""
    final, record = Path(final), done_path(final)
    removed = _remove(final.with_name(final.name + TEMP_SUFFIX)) | _remove(record.with_name(record.name + TEMP_SUFFIX))
    if read_done(final) is None:
        removed = _remove(final) | _remove(record) | removed
    return removed


class StoreWriter:
    """Writes one store under `<name>.partial`, then renames it to `<name>` with its done record.

    Rows may arrive in any order (`put_ok` / `put_failed`); each Zarr shard is written in one call
    as soon as all of its rows are in, so memory holds at most the open shards."""

    def __init__(self, final: Path, rows: int, tokens: int, dim: int, storage: StorageSpec, attrs: dict,
                 student_views: StudentViewsSpec | None = None, frames: int = 0):
        import zarr
        from zarr.codecs import Crc32cCodec

        self.final = Path(final)
        self.tmp = self.final.with_name(self.final.name + TEMP_SUFFIX)
        self.rows, self.tokens, self.dim, self.storage = rows, tokens, dim, storage
        self.dtype = storage.dtype
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.attrs = {"format": STORE_FORMAT, "version": STORE_VERSION, **attrs}
        self.group = zarr.open_group(self.tmp, mode="w", zarr_format=3, attributes=self.attrs)
        sdt = stored_dtype(self.dtype)
        self.per_shard = storage.rows_per_shard
        self.latents = self.group.create_array(
            "latents", shape=(rows, tokens, dim), dtype=sdt, chunks=(1, tokens, dim),
            shards=(self.per_shard, tokens, dim), compressors=compressors(storage, sdt.itemsize),
            fill_value=0, dimension_names=("row", "token", "channel"),
            attributes={"dtype": self.dtype, "token_order": "t,h,w",
                        **({"bits": "uint16 holding bfloat16 bit patterns"} if self.dtype == "bfloat16" else {})},
        )
        self.scales = None
        if self.dtype == "int8":
            self.scales = self.group.create_array(
                "latent_scales", shape=(rows, dim), dtype=np.float32, chunks=(1, dim), shards=(self.per_shard, dim),
                compressors=[Crc32cCodec()], fill_value=0.0, dimension_names=("row", "channel"),
                attributes={"meaning": "latents[r, t, c] = int8 value x latent_scales[r, c]"})
            self._scale_blocks: dict[int, np.ndarray] = {}
        self.fidelity = np.full((rows, len(FIDELITY)), np.nan, dtype=np.float32)
        self.views = student_views if student_views is not None and student_views.stored else None
        self.frames = None
        if self.views is not None:
            self.frames = _create_frames_array(self.group, rows, frames, self.per_shard, self.views)
            self.frames_checksum = np.zeros(rows, dtype=np.uint32)
            self._frame_blocks: dict[int, np.ndarray] = {}
        self.key = np.full(rows, "", dtype=object)
        self.view_index = np.full(rows, -1, dtype=np.int32)
        self.view = np.full(rows, "", dtype=object)
        self.status = np.zeros(rows, dtype=np.uint8)
        self.reason = np.full(rows, "", dtype=object)
        self.stats = np.full((rows, 3), np.nan, dtype=np.float32)
        self.checksum = np.zeros(rows, dtype=np.uint32)
        self.meta = np.full(rows, "", dtype=object)
        self.view_crc = np.zeros(rows, dtype=np.uint32)
        self._blocks: dict[int, np.ndarray] = {}
        self._filled: dict[int, int] = {}
        self._written: set[int] = set()
        self.failures: list[dict] = []

    def _shard_bounds(self, s: int) -> tuple[int, int]:
        return s * self.per_shard, min((s + 1) * self.per_shard, self.rows)

    def _place(self, row: int, stored: np.ndarray | None, frames: list[bytes] | None = None,
               scale: np.ndarray | None = None) -> None:
        s = row // self.per_shard
        a, b = self._shard_bounds(s)
        block = self._blocks.get(s)
        if block is None:
            block = self._blocks[s] = np.zeros((b - a, self.tokens, self.dim), dtype=stored_dtype(self.dtype))
        if stored is not None:
            block[row - a] = stored
        if self.scales is not None:
            sb = self._scale_blocks.setdefault(s, np.zeros((b - a, self.dim), dtype=np.float32))
            if scale is not None:
                sb[row - a] = scale
        if self.frames is not None:
            fb = self._frame_blocks.get(s)
            if fb is None:
                fb = self._frame_blocks[s] = np.full((b - a, self.frames.shape[1]), b"", dtype=object)
            if frames is not None:
                if len(frames) != self.frames.shape[1]:
                    raise ValueError(f"row {row}: {len(frames)} stored frames, expected {self.frames.shape[1]}")
                fb[row - a] = frames
        self._filled[s] = self._filled.get(s, 0) + 1
        if self._filled[s] == b - a:
            # the whole shard in one call: zarr encodes and writes the shard file once
            self.latents[a:b] = self._blocks.pop(s)
            if self.scales is not None:
                self.scales[a:b] = self._scale_blocks.pop(s)
            if self.frames is not None:
                self.frames[a:b] = self._frame_blocks.pop(s)
            self._written.add(s)

    def _record(self, row: int, key: str, view_index: int, view: dict | None, meta: str) -> None:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} outside 0..{self.rows - 1}")
        if self.status[row] != STATUS_MISSING:
            raise ValueError(f"row {row} written twice")
        self.key[row] = key
        self.view_index[row] = view_index
        self.view[row] = json.dumps(view, separators=(",", ":")) if view else ""
        self.meta[row] = meta

    def put_ok(self, row: int, key: str, view_index: int, view: dict, meta: str, out: torch.Tensor,
               frames: list[bytes] | None = None, frames_digest: int | None = None, crc: int = 0) -> None:
        """Store the fp32 teacher output `out` [tokens, D] of one view; with student-ready views
        also the view's encoded frames and the digest of their decoded uint8 pixels (which cover
        the view), else `crc`: `view_crc` of the view's uint8 pixels decoded from the source."""
        if tuple(out.shape) != (self.tokens, self.dim):
            raise ValueError(f"row {row}: teacher output {tuple(out.shape)}, expected {(self.tokens, self.dim)}")
        if (self.frames is not None) != (frames is not None and frames_digest is not None):
            raise ValueError(f"row {row}: stored frames {'missing' if self.frames is not None else 'given'} "
                             f"for a store {'with' if self.frames is not None else 'without'} student-ready views")
        stored, scale = to_storage(out, self.dtype), None
        if self.dtype == "int8":
            stored, scale = stored
        self._record(row, key, view_index, view, meta)
        self.stats[row] = row_stats(out)
        self.checksum[row] = row_checksum(stored, scale)
        self.fidelity[row] = fidelity(out, from_storage(stored, self.dtype, scale))
        if frames is not None:
            self.frames_checksum[row] = frames_digest
        else:
            self.view_crc[row] = crc
        self._place(row, stored, frames, scale)
        self.status[row] = STATUS_OK

    def put_failed(self, row: int, key: str, view_index: int, view: dict | None, meta: str, reason: str) -> None:
        """Record a row that could not be encoded; its latents stay the fill value."""
        self._record(row, key, view_index, view, meta)
        self.reason[row] = reason or "unknown failure"
        self._place(row, None)
        self.status[row] = STATUS_FAILED
        self.failures.append({"row": row, "key": key, "view": view_index, "reason": self.reason[row]})

    def finish(self, extra: dict | None = None) -> dict:
        """Write the per-row arrays, rename the store to its final name, then write its done
        record (the commit); returns the done record. Refuses when a row was never written."""
        missing = int((self.status == STATUS_MISSING).sum())
        if missing:
            raise SaltCacheError(f"{self.final.name}: {missing} rows were never written; not finishing the store")
        n = self.rows
        one = (max(n, 1),)

        def small(name, data, dtype, shape=None, fill=None):
            arr = self.group.create_array(name, shape=data.shape if shape is None else shape, dtype=dtype,
                                          chunks=one + data.shape[1:], fill_value=fill)
            if n:
                arr[...] = data
        small("key", self.key, str, fill="")
        small("view_index", self.view_index, np.int32, fill=-1)
        small("view", self.view, str, fill="")
        small("status", self.status, np.uint8, fill=STATUS_MISSING)
        small("reason", self.reason, str, fill="")
        small("stats", self.stats, np.float32, fill=float("nan"))
        small("checksum", self.checksum, np.uint32, fill=0)
        small("meta", self.meta, str, fill="")
        small("fidelity", self.fidelity, np.float32, fill=float("nan"))
        self.group["fidelity"].attrs["columns"] = list(FIDELITY)
        if self.frames is not None:  # one digest per view: the stored frames' covers it
            small("frames_checksum", self.frames_checksum, np.uint32, fill=0)
        else:
            small("view_crc", self.view_crc, np.uint32, fill=0)
        self.group.attrs["status_names"] = {str(k): v for k, v in STATUS_NAMES.items()}
        files = store_files(self.tmp)
        ok = int((self.status == STATUS_OK).sum())
        record = {
            "format": STORE_FORMAT, "version": STORE_VERSION, "store": self.final.name,
            **{k: self.attrs[k] for k in ("shard", "shard_index") if k in self.attrs},
            "rows": n, "ok": ok, "failed": n - ok,
            "clips": len(set(self.key.tolist())) if n else 0,
            "files": files, "bytes": int(sum(files.values())),
            "digest": store_digest(self.tmp, files), "failures": self.failures,
            "fidelity": fidelity_summary(self.fidelity[self.status == STATUS_OK]), **(extra or {}),
        }
        done = done_path(self.final)
        done.unlink(missing_ok=True)  # a record without its store (a store deleted by hand) goes first
        if self.final.exists():  # a leftover without a done record: never complete, safe to drop
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        tmp = done.with_name(done.name + TEMP_SUFFIX)
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, done)  # last: from here on the store counts as finished
        return record


def _create_frames_array(group, rows: int, frames: int, per_shard: int, views: StudentViewsSpec):
    """The `frames [rows, T]` array of encoded frames (variable-length bytes)."""
    import warnings

    from zarr.codecs import BloscCodec, Crc32cCodec

    # raw uint8 frames get a fast lossless compressor; JPEG bytes do not compress further
    first = [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=1)] if views.format == "raw" else []
    with warnings.catch_warnings():  # zarr-python's variable-length bytes have no Zarr v3 extension spec yet
        warnings.simplefilter("ignore")
        from zarr.core.dtype import VariableLengthBytes

        return group.create_array(
            "frames", shape=(rows, frames), dtype=VariableLengthBytes(), chunks=(1, frames),
            shards=(per_shard, frames), compressors=first + [Crc32cCodec()], fill_value=b"",
            dimension_names=("row", "frame"),
            attributes={"format": views.format, "quality": views.quality if views.format == "jpeg" else None,
                        "layout": "uint8 [T, S, S, 3] per row, RGB", "checksum": "frames_checksum: crc32c of the decoded uint8 frames"},
        )


def open_group(path: Path):
    """Open a finished store read-only."""
    import zarr

    try:
        return zarr.open_group(Path(path), mode="r", zarr_format=3)
    except Exception as e:  # missing or broken zarr.json
        raise SaltCacheError(f"{path}: not a readable Zarr store ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
