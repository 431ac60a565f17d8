"""The training data pipeline, shared by both stages; only the per-sample stage differs.

Pipeline of one data *split* (one DataLoader worker of one rank), a pure function of
(seed, split, number of splits):

    shards --permute per epoch (seed, epoch), read as one sequence of samples, cut into n_splits
             contiguous runs balanced by samples (sizes differ by at most one; `epoch_ranges`)
           --read this split's run (webdataset)      Sample(key, video bytes, meta), no decode
           --shuffle buffer (seed, split, epoch)     holds compressed bytes only
           --skip what a resumed run already consumed (cheap: nothing is decoded)
           --per-sample stage (pluggable)            dict of tensors, or None to skip
           --batch + multi-block masks               seed = mask_seed(seed, split, batch index)

`split = rank * workers + worker`, `n_splits = world_size * workers`: samples are split by node
and by worker at once, by sample counts (index.json, else the tar headers), so over one epoch
the splits together take every sample exactly once, and with one global epoch: a split's epoch e
is its run of the global epoch e, and no split runs ahead by more than one sample. Epochs never mix: the buffer drains at the end of an epoch and a batch may
span two epochs. Because the streams depend on the split id only, 1 process x 2 workers x
grad_accum 2 sees exactly the batches of 2 processes x 1 worker x grad_accum 1.

Per-sample stage (the plug-in point)
------------------------------------
    stage(sample: Sample, ctx: StageContext) -> dict | None

`ctx.epoch` is the global epoch (0 in validation); `ctx.train` is False for
validation, where the stage must be deterministic (fixed view). The returned dict must hold
"clip": uint8 [C, T, H, W] (`decode_view_uint8`) and "norm": float32 [2, 3] (the view's mean
and std), and may add any field:
tensors are stacked along a new batch dimension, anything else is collected in a list. Return
None to skip the sample (counted, reported in the batch as "skipped"). Stages are copied into
every DataLoader worker: open files or stores lazily on first call, not in `__init__`.
Stage 1 plugs `PlanAndDecode`; Stage 2 plugs a cache join (rows by key -> pick a view ->
decode at that row's view -> latents).

Batch dict (what `TrainData.next()` and `ValSet.batch(i)` return)
-----------------------------------------------------------------
    "clip":     uint8 [B, C, T, H, W] from the loader; `on_device` moves the batch and makes it
                float32, normalized with "norm" [B, 2, 3] by `normalize_clip`, the arithmetic the
                teacher's input went through (the loader ships 1 byte per pixel, not 4)
    "keys":     list[str] of B clip keys
    "masks":    [(context_idx int64 [B, Nc], target_idx int64 [B, Nt]) per mask set]
    "skipped":  int, samples the stage skipped while this batch was built (failed or timed-out
                decodes, damaged cache rows, clips without a cache row)
    "damaged":  int, of those, cache rows that failed their checksum
    "position": {"split", "epoch", "consumed", "batches"} of the split after this batch
    + every field the stage added, e.g. "view": list[dict], "latents": [B, N, D] in the cache's
      stored dtype (float16 / bfloat16 / float32), upcast where they are used, on the device;
      int8 latents come with "latent_scale" float32 [B, D], and `on_device` dequantizes them

Exact resume: the trainer records, per split, the position carried by the last batch it
consumed (batches prefetched but not consumed are simply produced again), plus how many batches
it consumed in all, which fixes the worker rotation of the DataLoader's round-robin.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from salt_cache.errors import DamagedRow, DecodeError, SaltCacheError
from salt_cache.masks import MaskSet, mask_seed, multiblock_masks
from salt_cache.shards.read import Sample, read_range, read_samples, shard_sample_counts
from salt_cache.video import ClipSpec, clip_info, decode_view_uint8, normalize_clip, plan_view

VAL_SPLIT = -1  # mask seeds of validation batches: mask_seed(seed, VAL_SPLIT, batch index)


@dataclass(frozen=True)
class StageContext:
    epoch: int
    train: bool


class SampleStage(Protocol):
    def __call__(self, sample: Sample, ctx: StageContext) -> dict | None: ...


class PlanAndDecode:
    """Stage 1's sample stage: plan a view and decode it.

    Training: view index = epoch, so every pass over the data draws a new (deterministic) crop
    and start frame. Validation: view 0 with a center crop."""

    def __init__(self, clip: ClipSpec, seed: int):
        self.clip = clip
        self.val_clip = replace(clip, crop="center")
        self.seed = seed

    def __call__(self, sample: Sample, ctx: StageContext) -> dict | None:
        try:
            info = clip_info(sample.meta, sample.video, sample.key)
            spec = self.clip if ctx.train else self.val_clip
            view = plan_view(sample.key, ctx.epoch if ctx.train else 0, self.seed, info, spec)
            clip = decode_view_uint8(sample.video, view)
        except DecodeError:
            return None  # counted by the batcher; shards were probed, so this is rare
        return {"clip": clip, "norm": view_norm(view), "view": view.to_dict()}


def view_norm(view) -> torch.Tensor:
    """A view's normalization as float32 [2, 3] (mean; std), shipped beside its uint8 clip."""
    return torch.tensor([list(view.mean), list(view.std)], dtype=torch.float32)


# ---------------------------------------------------------------- the per-split sample stream

def split_sizes(total: int, n_splits: int, epoch: int) -> list[int]:
    """Samples of each split in `epoch`: total // n_splits, and one more for total % n_splits of
    them, the extra one rotating with the epoch (split s gets it when (s - epoch * r) mod n < r).
    Every split's running total stays within one sample of total * epochs / n_splits, so the
    splits' epochs stay aligned: one global epoch, whatever the counts."""
    q, r = divmod(total, n_splits)
    return [q + (1 if (s - epoch * r) % n_splits < r else 0) for s in range(n_splits)]


def epoch_ranges(counts: list[int], seed: int, epoch: int, split: int, n_splits: int) -> list[tuple[int, int, int]]:
    """This split's part of `epoch` as (shard index, first sample, end sample) in reading order.

    The shards are permuted by (seed, epoch) and read as one sequence of samples; the sequence is
    cut into `n_splits` contiguous runs by `split_sizes`, so the splits partition the epoch's
    samples (each sample exactly once over all ranks and workers) and are balanced by samples,
    not by shards: a split may start or end inside a shard."""
    order = np.random.default_rng([seed, epoch, 0x5A]).permutation(len(counts))
    sizes = split_sizes(int(sum(counts)), n_splits, epoch)
    lo = sum(sizes[:split])
    hi = lo + sizes[split]
    out, pos = [], 0
    for i in order.tolist():
        n = int(counts[i])
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            out.append((i, a - pos, b - pos))
        pos += n
        if pos >= hi:
            break
    return out


def shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Reservoir-style shuffle holding at most `size` items; drains fully at the end."""
    buf = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        i = int(rng.integers(size))
        yield buf[i]
        buf[i] = x
    for i in rng.permutation(len(buf)):
        yield buf[i]


def _read_ranges(shards: list[Path], counts: list[int], ranges) -> Iterator[Sample]:
    for i, a, b in ranges:
        yield from read_range(shards[i], a, b, counts[i])


def split_samples(shards: list[Path], seed: int, split: int, n_splits: int, buffer: int,
                  epoch: int = 0, consumed: int = 0, counts: list[int] | None = None) -> Iterator[tuple[int, int, Sample]]:
    """(epoch, samples consumed in that epoch, sample), forever, starting after `consumed`
    samples of `epoch`. The skipped samples are read but never decoded. `counts`: samples per
    shard (`shard_sample_counts`, looked up when not given)."""
    counts = shard_sample_counts(shards) if counts is None else list(counts)
    if len(counts) != len(shards):
        raise ValueError(f"{len(counts)} sample counts for {len(shards)} shards")
    if sum(counts) < n_splits:
        raise SaltCacheError(f"{sum(counts)} train samples cannot feed {n_splits} data splits")
    while True:
        rng = np.random.default_rng([seed, split, epoch, 0xB0])
        ranges = epoch_ranges(counts, seed, epoch, split, n_splits)
        stream = shuffle_buffer(_read_ranges(shards, counts, ranges), buffer, rng)
        n = 0
        for n, sample in enumerate(stream, start=1):
            if n > consumed:
                yield epoch, n, sample
        if n == 0:
            raise SaltCacheError(f"data split {split}: its shards hold no samples")
        epoch, consumed = epoch + 1, 0


@contextlib.contextmanager
def time_bound(seconds: float | None, key: str):
    """Raise DecodeError(key, "timed out") in this block after `seconds` (SIGALRM; only in a
    process's main thread, as in a DataLoader worker, else no bound). A decoder stuck inside C
    code that never returns to Python is not interrupted: the DataLoader timeout is the backstop."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise DecodeError(key, f"decode timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def collate(items: list[dict]) -> dict:
    """Stage outputs -> batch: tensors stacked on a new dim 0, anything else listed."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


class TrainStream(IterableDataset):
    """The batches of every split this process's DataLoader workers serve (see module doc)."""

    def __init__(self, shards: list[Path], stage: SampleStage, batch_size: int, grid, mask_sets: tuple[MaskSet, ...],
                 seed: int, rank: int, world_size: int, workers: int, shuffle_buffer: int,
                 positions: dict[int, dict] | None = None, rotation: int = 0, counts: list[int] | None = None,
                 decode_timeout_s: float | None = None):
        super().__init__()
        self.decode_timeout_s = decode_timeout_s
        self.shards, self.stage, self.batch_size, self.grid = list(shards), stage, batch_size, tuple(grid)
        # looked up once here, in the main process, not in every worker
        self.counts = shard_sample_counts(self.shards) if counts is None else list(counts)
        self.mask_sets, self.seed, self.rank, self.world_size = tuple(mask_sets), seed, rank, world_size
        self.workers, self.buffer = max(1, workers), shuffle_buffer
        self.positions, self.rotation = dict(positions or {}), rotation

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        split = self.rank * self.workers + (worker + self.rotation) % self.workers
        return self.batches(split, self.world_size * self.workers)

    def batches(self, split: int, n_splits: int) -> Iterator[dict]:
        pos = {"epoch": 0, "consumed": 0, "batches": 0, **self.positions.get(split, {})}
        items, keys, skipped, damaged, last_ok_epoch = [], [], 0, 0, pos["epoch"]
        for epoch, consumed, sample in split_samples(self.shards, self.seed, split, n_splits, self.buffer,
                                                     pos["epoch"], pos["consumed"], self.counts):
            try:
                with time_bound(self.decode_timeout_s, sample.key):
                    out = self.stage(sample, StageContext(epoch=epoch, train=True))
            except DecodeError:
                out = None  # a decode past its time bound, or raised outside the stage's own catch
            except DamagedRow:
                out, damaged = None, damaged + 1  # a cache row failing its checksum: skip, count
            if out is None:
                skipped += 1
                if epoch > last_ok_epoch + 1:
                    raise SaltCacheError(f"data split {split}: the sample stage skipped every sample of a whole epoch")
                continue
            last_ok_epoch = epoch
            items.append(out)
            keys.append(sample.key)
            if len(items) < self.batch_size:
                continue
            batch = collate(items)
            batch["keys"] = keys
            batch["masks"] = multiblock_masks(self.batch_size, self.grid, self.mask_sets,
                                              seed=mask_seed(self.seed, split, pos["batches"]))
            pos = {"epoch": epoch, "consumed": consumed, "batches": pos["batches"] + 1}
            batch["skipped"] = skipped
            batch["damaged"] = damaged
            batch["position"] = {"split": split, **pos}
            yield batch
            items, keys, skipped, damaged = [], [], 0, 0


def check_splits(n_shards: int, world_size: int, workers: int) -> None:
    """Every data split (rank x worker) needs at least one shard of its own."""
    n_splits = world_size * max(1, workers)
    if n_shards < n_splits:
        raise SaltCacheError(
            f"{n_shards} train shards cannot feed {n_splits} data splits (world size {world_size} x "
            f"{max(1, workers)} workers); use fewer workers or more, smaller shards")


class TrainData:
    """This rank's training batches: DataLoader over `TrainStream`, data-wait timing, skip
    counts and the data position for checkpoints.

    state: what `state()` returned in the checkpoint being resumed (None for a fresh run)."""

    def __init__(self, shards: list[Path], stage: SampleStage, *, batch_size: int, grid, mask_sets, seed: int,
                 rank: int, world_size: int, workers: int, shuffle_buffer: int, pin_memory: bool = False,
                 state: dict | None = None, timeout_s: float = 0.0, decode_timeout_s: float | None = None,
                 max_damaged: int | None = None):
        check_splits(len(shards), world_size, workers)
        self.timeout_s, self.max_damaged = (timeout_s if workers else 0.0), max_damaged
        self.damaged = int((state or {}).get("damaged", 0))
        state = state or {}
        self.workers = workers
        self.consumed_batches = int(state.get("consumed_batches", 0))
        self.positions = {int(k): dict(v) for k, v in state.get("splits", {}).items()}
        stream = TrainStream(shards, stage, batch_size, grid, mask_sets, seed, rank, world_size, workers,
                             shuffle_buffer, positions=self.positions,
                             rotation=self.consumed_batches % max(1, workers), decode_timeout_s=decode_timeout_s)
        # own generator: creating the loader must not draw from the global torch RNG (exact resume);
        # a timeout, so that one hung worker cannot hang every rank
        self.loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                 generator=torch.Generator(), timeout=self.timeout_s)
        self._it = iter(self.loader)
        self.wait_s = 0.0
        self.skipped = 0

    def next(self) -> dict:
        t0 = time.perf_counter()
        try:
            batch = next(self._it)
        except SaltCacheError as e:
            raise SaltCacheError(worker_error_line(str(e))) from None
        except RuntimeError as e:
            if "timed out" not in str(e):
                raise
            raise SaltCacheError(f"data.loader_timeout_s: the DataLoader produced no batch for {self.timeout_s:g} s "
                                 f"(a hung decoder?); resume the run from its last checkpoint") from None
        self.wait_s += time.perf_counter() - t0
        self.damaged += int(batch.get("damaged", 0))
        if self.max_damaged is not None and self.damaged > self.max_damaged:
            raise SaltCacheError(f"data.max_damaged_rows: {self.damaged} cache rows failed their checksum on this "
                                 f"rank (limit {self.max_damaged}); run salt-cache verify on the cache")
        self.consumed_batches += 1
        p = batch["position"]
        self.positions[int(p["split"])] = {k: int(p[k]) for k in ("epoch", "consumed", "batches")}
        self.skipped += int(batch["skipped"])
        return batch

    def take_stats(self) -> tuple[float, int]:
        """(seconds waited on the loader, samples skipped) since the last call."""
        out = (self.wait_s, self.skipped)
        self.wait_s, self.skipped = 0.0, 0
        return out

    def state(self) -> dict:
        """Plain record of this rank's data position (stored per rank in run checkpoints)."""
        return {"workers": self.workers, "consumed_batches": self.consumed_batches, "damaged": self.damaged,
                "splits": {str(k): dict(v) for k, v in sorted(self.positions.items())}}

    def close(self) -> None:
        self._it = None
        self.loader = None


def worker_error_line(text: str) -> str:
    """A SaltCacheError re-raised by a DataLoader worker carries the worker's traceback; keep the
    one line the user needs."""
    prefix = "SaltCacheError: "
    for line in reversed(text.strip().splitlines()):
        if prefix in line:
            return line.split(prefix, 1)[1]
    return text.strip().splitlines()[-1] if text.strip() else text


# ---------------------------------------------------------------- validation

class ValSet:
    """A fixed held-out set: the first `batches x batch_size` samples of the val shards, in shard
    order, kept compressed; batch i is decoded on demand with the stage in validation mode and
    masks seeded by (seed, VAL_SPLIT, i), so every evaluation sees identical inputs."""

    def __init__(self, shards: list[Path], stage: SampleStage, batch_size: int, batches: int, grid,
                 mask_sets: tuple[MaskSet, ...], seed: int):
        self.stage, self.batch_size, self.grid = stage, batch_size, tuple(grid)
        self.mask_sets, self.seed = tuple(mask_sets), seed
        want = batch_size * batches
        self.samples: list[Sample] = []
        for s in read_samples(shards):
            if len(self.samples) >= want:
                break
            self.samples.append(s)
        if not self.samples and batches:
            raise SaltCacheError(f"validation shards {', '.join(p.name for p in shards)} hold no samples")

    def __len__(self) -> int:
        return (len(self.samples) + self.batch_size - 1) // self.batch_size

    def batch(self, i: int) -> dict | None:
        """Validation batch i (None if the stage skipped all of its samples)."""
        chunk = self.samples[i * self.batch_size:(i + 1) * self.batch_size]
        ctx = StageContext(epoch=0, train=False)
        pairs = [(s.key, self.stage(s, ctx)) for s in chunk]
        pairs = [(k, o) for k, o in pairs if o is not None]
        if not pairs:
            return None
        batch = collate([o for _, o in pairs])
        batch["keys"] = [k for k, _ in pairs]
        batch["masks"] = multiblock_masks(len(pairs), self.grid, self.mask_sets, seed=mask_seed(self.seed, VAL_SPLIT, i))
        batch["skipped"] = len(chunk) - len(pairs)
        return batch


def on_device(batch: dict, device: torch.device, non_blocking: bool = False) -> dict:
    """A loader batch on `device`, its uint8 clip normalized there to float32 (`normalize_clip`)
    and int8 latents dequantized there to float32 with their per-channel "latent_scale" [B, D]
    (`cache.store.dequantize`); other latents stay in their stored dtype."""
    batch = to_device(batch, device, non_blocking)
    if batch["clip"].dtype == torch.uint8:
        norm = batch["norm"]
        batch["clip"] = normalize_clip(batch["clip"], norm[:, 0], norm[:, 1])
    if "latent_scale" in batch:
        from salt_cache.cache.store import dequantize

        batch["latents"] = dequantize(batch["latents"], batch.pop("latent_scale"))
    return batch


def to_device(obj, device: torch.device, non_blocking: bool = False):
    """Move every tensor inside a batch (dicts, lists, tuples) to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj

