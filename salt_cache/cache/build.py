"""`build_cache`: encode every view of every clip with a frozen teacher into Zarr stores.

Flow per process: resolve shards -> load and check the teacher -> write or check cache.json ->
for each of this rank's shards (index % world_size == rank) not already done: clear leftovers,
decode views in DataLoader workers (in order, overlapping the teacher forward), run the teacher
(eval, inference mode, bf16 autocast on CUDA) on batches that never cross a store, hand each
batch's rows to a writer thread (storage dtype, stats, checksums, compression: `RowWriter`, so
the teacher never waits on the CPU), write the store whole under a temporary name, rename it,
list it in the manifest (rank 0), and at the end write the key index (`cache.index`).

Batches are formed from a store's rows in row order, so a store's bytes do not depend on the
worker count, on how many stores were skipped, or on the rank that built it: a resumed or
distributed build equals an uninterrupted one-process build with the same batch size and device.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import torch

from salt_cache import dist
from salt_cache.cache.config import BuildConfig
from salt_cache.cache.header import CACHE_JSON, CacheHeader
from salt_cache.cache.index import write_index
from salt_cache.cache.manifest import add_store, compatibility_problem, make_header, refresh_manifest
from salt_cache.cache.source import ClipDataset, ClipItem
from salt_cache.cache.store import STORES_DIR, StoreWriter, clear_partial, merge_fidelity, read_done, store_name
from salt_cache.checkpoint import file_sha256, load_encoder
from salt_cache.errors import SaltCacheError
from salt_cache.shards import index_shard, resolve_shards
from salt_cache.spec import CacheSpec, load_spec

# rank 0 lists its own stores as they finish (O(1) each) and picks up the other ranks' finished
# stores with a scan at most this often, so cache.json stays usable if the build is interrupted
RESCAN_S = 60.0

# a DataLoader that yields nothing for this long is treated as a hung decoder (decord can hang on
# files that over-report their frame count); the build stops with an error and can be resumed
DECODE_TIMEOUT_S = 600.0


@dataclass
class BuildSummary:
    """What a build did. Totals (clips, rows, ok, failed, bytes) cover every finished store of the
    cache; `*_built` cover this run. bytes_per_row is on disk; fp32_bytes_per_row = tokens * D * 4.
    wall_s includes start-up (teacher, shard index, checks); encode_s and clips_per_s measure the
    encoding alone, over the same interval as the progress bar."""

    out: str
    complete: bool
    stores: int
    stores_done: int
    stores_built: int
    stores_skipped: int
    partial_cleared: int
    clips: int
    rows: int
    ok: int
    failed: int
    failures: list = field(default_factory=list)  # [{store, row, key, view, reason}]
    bytes: int = 0
    bytes_per_row: float = 0.0
    fp32_bytes_per_row: int = 0
    clips_built: int = 0
    rows_built: int = 0
    wall_s: float = 0.0
    encode_s: float = 0.0  # from the first clip asked of the decoders to the last store written (rank 0)
    clips_per_s: float = 0.0  # clips_built / encode_s: the rate the progress bar shows
    fidelity: dict | None = None  # stored latents vs the fp32 teacher output (`store.merge_fidelity`)
    rank: int = 0
    world_size: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def _check_teacher(spec: CacheSpec, teacher: Path, config: dict, meta: dict | None = None) -> None:
    """Refuse a spec the teacher cannot encode as it was trained to, naming the field: patch and
    tubelet always; for a teacher trained here, the clip normalization it was trained with; for
    an imported teacher (meta["input"]) also the clip normalization and, when
    its positions are tied to the training grid (VideoMAE's 1-D table), clip.size and clip.frames."""
    p, t, c = config.get("patch_size"), config.get("tubelet_size"), config.get("in_chans", 3)
    if (p, t) != (spec.patch_size, spec.tubelet_size):
        raise SaltCacheError(
            f"{teacher}: teacher has patch_size {p} and tubelet_size {t}, but spec {spec.name!r} asks for "
            f"patch_size {spec.patch_size} and tubelet_size {spec.tubelet_size}: make the teacher with "
            f"init-model --patch-size {spec.patch_size} --tubelet-size {spec.tubelet_size} (train-teacher: --set "
            f"model.patch_size={spec.patch_size}), or pass --set patch_size={p} --set tubelet_size={t} to build")
    if c != 3:
        raise SaltCacheError(f"{teacher}: teacher expects {c} input channels, clips have 3")
    want = (meta or {}).get("input")
    trained = (meta or {}).get("clip") if (meta or {}).get("origin") == "train-teacher" else None
    if not isinstance(want, dict) and isinstance(trained, dict):
        # a teacher of ours: any geometry, but the pixel normalization it was trained with
        for name in ("mean", "std"):
            have, had = list(getattr(spec.clip, name)), list(trained.get(name) or [])
            if had and (len(have) != len(had) or any(abs(a - b) > 1e-6 for a, b in zip(have, had))):
                raise SaltCacheError(
                    f"{teacher}: clip.{name}: spec {spec.name!r} normalizes with {name} {have}, but the teacher was "
                    f"trained with {had} (train-teacher clip.{name}); set clip.{name} in the spec to match")
        return
    if not isinstance(want, dict):
        return  # a teacher of ours without a recorded training clip: any spec
    for name in ("mean", "std"):
        have = list(getattr(spec.clip, name))
        if len(have) != len(want[name]) or any(abs(a - b) > 1e-6 for a, b in zip(have, want[name])):
            raise SaltCacheError(
                f"{teacher}: clip.{name}: spec {spec.name!r} normalizes with {name} {have}, but the teacher expects "
                f"{list(want[name])} ({want.get('normalization_from', 'recorded at import')})")
    if want.get("fixed_grid"):
        for name, unit in (("size", "px"), ("frames", "frames")):
            if getattr(spec.clip, name) != want[name]:
                raise SaltCacheError(
                    f"{teacher}: clip.{name}: spec {spec.name!r} asks for {getattr(spec.clip, name)} {unit}, but this "
                    f"teacher's fixed position table only fits the {want[name]} {unit} it was trained on")


def _lock(out: Path, rank: int):
    """An exclusive advisory lock per rank (every build has a rank 0), so that two builds never
    write the same stores: the second one is refused. A POSIX record lock: released when the
    process dies and, unlike flock, not held on by forked DataLoader workers outliving it."""
    import fcntl

    f = open(out / f".build-rank{rank}.lock", "a")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise SaltCacheError(f"{out}: another build is writing into this cache (rank {rank} lock is held)") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _leftover(p: Path) -> bool:
    """What a build killed before its first store can leave: an empty stores/ folder or a
    half-written cache.json temporary file."""
    if p.name == STORES_DIR and p.is_dir():
        return not any(p.iterdir())
    return (p.name.startswith(f".{CACHE_JSON}.") and p.name.endswith(".tmp")) or \
        (p.name.startswith(".build-rank") and p.name.endswith(".lock"))


def _prepare_out(out: Path, header: CacheHeader, rank: int) -> CacheHeader | None:
    """The existing cache.json when resuming (checked against `header`), None for a new cache.
    Every rank checks compatibility (so all refuse alike); rank 0 alone judges a folder without
    cache.json, which other ranks may see while rank 0 is creating it."""
    if out.exists() and not out.is_dir():
        raise SaltCacheError(f"{out}: exists and is not a folder")
    if (out / CACHE_JSON).is_file():
        existing = CacheHeader.read(out)
        why = compatibility_problem(existing, header)
        if why:
            raise SaltCacheError(f"{out}: cannot resume: {why}; use a new --out or delete it")
        return existing
    if rank == 0 and out.is_dir() and any(not _leftover(p) for p in out.iterdir()):
        raise SaltCacheError(f"{out}: folder is not empty and holds no {CACHE_JSON}; refusing to build into it")
    return None


def _encode(model, xs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Frozen teacher forward on a list of clips [C, T, S, S] -> fp32 final-norm tokens [B, N, D] on CPU."""
    x = torch.stack(xs).to(device, non_blocking=True)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        y = model(x)
    return y.float().cpu()


def build_cache(config: BuildConfig, progress=None) -> BuildSummary:
    """Encode every view of every clip of `config.data` with the encoder checkpoint
    `config.teacher` into `config.out` (a cache folder). Resumes a previous build of the same
    spec, teacher and data; refuses anything else.

    Under torchrun, rank r builds the stores of shards i with i % world_size == r and rank 0
    writes the manifest. `progress` is an optional rich Progress (rank 0 only shows it).
    Returns a BuildSummary (totals over the whole cache on rank 0)."""
    t0 = time.time()
    spec, data, batch_size, workers, device = config.spec, config.data, config.batch_size, config.workers, config.device
    spec = spec if isinstance(spec, CacheSpec) else load_spec(spec, config.overrides)
    teacher, out = Path(config.teacher), Path(config.out)
    if batch_size < 1:
        raise SaltCacheError(f"--batch-size: expected >= 1, got {batch_size}")
    if workers < 0:
        raise SaltCacheError(f"--workers: expected >= 0, got {workers}")
    if not teacher.is_file():
        raise SaltCacheError(f"{teacher}: teacher checkpoint not found")
    shards = resolve_shards(data)
    # ranks can finish their stores hours apart: a long timeout for the final barrier
    env = dist.setup(device, workers, timeout=timedelta(hours=24))
    lock = None
    try:
        model, ckpt = load_encoder(teacher, env.device)
        _check_teacher(spec, teacher, ckpt["config"], ckpt.get("meta"))
        build_info = {"device": env.device.type, "autocast": "bfloat16" if env.device.type == "cuda" else None,
                      "batch_size": batch_size, "workers": workers, "world_size": env.world_size}
        header = make_header(spec, teacher, file_sha256(teacher), ckpt["config"], ckpt.get("meta", {}),
                             shards, build_info)
        existing = _prepare_out(out, header, env.rank)
        if env.is_main:
            (out / STORES_DIR).mkdir(parents=True, exist_ok=True)
            lock = _lock(out, env.rank)
            for p in out.glob(f".{CACHE_JSON}.*.tmp"):  # from a process killed while writing cache.json
                p.unlink(missing_ok=True)
            doc = header if existing is None else replace(existing, build=build_info, versions=header.versions)
            refresh_manifest(out, replace(doc, summary=None))
        dist.barrier(env)
        if not env.is_main:
            lock = _lock(out, env.rank)
        return _run(model, spec, shards, out, header, batch_size, workers, env, progress, t0)
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock (so does the death of the process)
        dist.teardown(env)


def _run(model, spec: CacheSpec, shards: list[Path], out: Path, header: CacheHeader, batch_size: int,
         workers: int, env: dist.DistEnv, progress, t0: float) -> BuildSummary:
    root = out / STORES_DIR
    mine = [i for i in range(len(shards)) if i % env.world_size == env.rank]
    pending, skipped, cleared = [], 0, 0
    for i in mine:
        final = root / store_name(i, shards[i])
        if read_done(final) is not None:
            skipped += 1
            continue
        cleared += clear_partial(final)
        pending.append(i)
    samples = {i: index_shard(shards[i]) for i in pending}
    items = [ClipItem(store=pos, sample=j, shard=str(shards[i]), tar=s)
             for pos, i in enumerate(pending) for j, s in enumerate(samples[i])]
    show = progress if env.is_main else None
    t_encode = time.monotonic()  # the bar's clock (rich uses time.monotonic) starts here too
    task = show.add_task("encoding" + (f" (rank 0 of {env.world_size})" if env.distributed else ""),
                         total=len(items)) if show else None

    views, dim = spec.views, header.teacher_dim
    # (writer, row, key, view index, view, meta, encoded frames | None, frames digest | None,
    #  view CRC | None, teacher input)
    batch: list[tuple[StoreWriter, int, str, int, dict, str, list | None, int | None, int | None, torch.Tensor]] = []
    doc = CacheHeader.read(out) if env.is_main else None

    def put_batch(rows: list, y: torch.Tensor) -> None:
        for (w, row, key, v, view, meta, frames, digest, crc, _), latents in zip(rows, y):
            w.put_ok(row, key, v, view, meta, latents, frames=frames, frames_digest=digest, crc=crc or 0)

    def flush() -> None:
        if batch:
            y = _encode(model, [b[-1] for b in batch], env.device)
            writer.submit(put_batch, list(batch), y)  # the teacher moves on to the next batch
            batch.clear()

    from torch.utils.data import DataLoader

    loader = DataLoader(
        ClipDataset(items, spec.clip, views, spec.seed, spec.student_views), batch_size=None, shuffle=False,
        num_workers=workers, prefetch_factor=4 if workers else None, timeout=DECODE_TIMEOUT_S if workers else 0,
    )
    it = iter(loader)
    writer = RowWriter()
    try:
        k, rows_built, last_scan = 0, 0, time.monotonic()
        for pos, i in enumerate(pending):
            t_store = time.time()
            # nothing machine- or path-specific: a store's bytes depend only on data, spec, teacher
            attrs = {"shard": shards[i].name, "shard_index": i, "cache_id": header.cache_id,
                     "views": views, "grid": list(spec.grid),
                     "tokens": spec.tokens, "dim": dim, "dtype": spec.storage.dtype}
            w = StoreWriter(root / store_name(i, shards[i]), len(samples[i]) * views, spec.tokens, dim,
                            spec.storage, attrs, spec.student_views, spec.clip.frames)
            for _ in samples[i]:
                item = items[k]
                k += 1
                try:
                    res = next(it)
                except RuntimeError as e:
                    raise SaltCacheError(f"decoding failed near clip {item.tar.key} of {shards[i].name}: "
                                         f"{str(e).splitlines()[0][:200]} (re-run the same command to resume)") from None
                for v in range(views):
                    row = item.sample * views + v
                    if res["x"][v] is None:
                        writer.submit(w.put_failed, row, item.tar.key, v, res["views"][v], res["meta"], res["reasons"][v])
                    else:
                        batch.append((w, row, item.tar.key, v, res["views"][v], res["meta"], res["frames"][v],
                                      res["digests"][v], res["crc"][v], res["x"][v]))
                        if len(batch) == batch_size:
                            flush()
                if show:
                    show.advance(task)
            flush()  # batches never cross a store: its bytes must not depend on its neighbours
            writer.drain()  # every row of the store is in
            record = w.finish({"seconds": round(time.time() - t_store, 3), "rank": env.rank,
                               **{key: header.build[key] for key in ("device", "autocast", "batch_size")}})
            rows_built += w.rows
            if doc is not None:
                doc = add_store(out, doc, w.final.name, record)
                if env.distributed and time.monotonic() - last_scan > RESCAN_S:
                    doc, last_scan = refresh_manifest(out, doc, full=False), time.monotonic()
    finally:
        writer.close()
    del it, loader
    encode_s = time.monotonic() - t_encode
    if show:
        show.stop_task(task)  # the bar's rate: clips over the same interval as encode_s

    clips_built, rows_all = (round(v) for v in dist.all_reduce_sum(torch.tensor([len(items), rows_built]), env).tolist())
    dist.barrier(env)
    if env.is_main:
        doc = refresh_manifest(out, CacheHeader.read(out))
        write_index(out, doc)  # the compact key index every reader memory-maps
    dist.barrier(env)
    doc = doc if env.is_main else CacheHeader.read(out)
    summary = _summarize(out, doc, skipped, cleared, len(pending), clips_built, rows_all, env, t0, encode_s)
    if env.is_main:
        replace(doc, summary=summary.to_dict()).write(out)
    return summary


class RowWriter:
    """One thread doing the per-row CPU work of a build (storage dtype, stats, checksums,
    compression, Zarr shard writes: `StoreWriter.put_ok` / `put_failed`) in submission order,
    beside the teacher, so that on a GPU the next forward never waits on the CPU. At most
    `depth` batches wait; an error in the thread is raised by the next `submit` or `drain`."""

    def __init__(self, depth: int = 4):
        import queue
        import threading

        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="salt-cache-row-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    fn, args = job
                    fn(*args)
            except BaseException as e:  # handed to the main thread
                self.error = e
            finally:
                self.q.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            e, self.error = self.error, None
            raise e

    def submit(self, fn, *args) -> None:
        self._raise()
        self.q.put((fn, args))

    def drain(self) -> None:
        """Wait until every submitted job ran; raise the first error."""
        self.q.join()
        self._raise()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


def _summarize(out: Path, doc: CacheHeader, skipped: int, cleared: int, built: int,
               clips_built: int, rows_built: int, env: dist.DistEnv, t0: float, encode_s: float) -> BuildSummary:
    stores = doc.stores
    total = len(doc.shards)
    rows = sum(s["rows"] for s in stores.values())
    failures = [{"store": name, **f} for name, s in sorted(stores.items()) for f in s.get("failures", [])]
    nbytes = sum(s["bytes"] for s in stores.values())
    wall = time.time() - t0
    return BuildSummary(
        out=str(out), complete=len(stores) == total, stores=total, stores_done=len(stores),
        stores_built=built, stores_skipped=skipped, partial_cleared=cleared,
        clips=sum(s["clips"] for s in stores.values()), rows=rows, ok=sum(s["ok"] for s in stores.values()),
        failed=sum(s["failed"] for s in stores.values()), failures=failures, bytes=nbytes,
        bytes_per_row=nbytes / rows if rows else 0.0, fp32_bytes_per_row=doc.tokens * doc.teacher_dim * 4,
        clips_built=clips_built, rows_built=rows_built, wall_s=round(wall, 3), encode_s=round(encode_s, 3),
        clips_per_s=round(clips_built / encode_s, 3) if encode_s > 0 else 0.0, rank=env.rank, world_size=env.world_size,
        fidelity=merge_fidelity(s.get("fidelity") for s in stores.values()),
    )
