"""Every sample once per epoch across ranks x workers: splits balanced by sample counts, one
global epoch, exact resume inside a shard. Shards here hold tiny fake video bytes: nothing is
decoded by the split streams."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from salt_cache.shards import INDEX_NAME, resolve_shards
from salt_cache.shards.read import shard_sample_counts
from salt_cache.train.data import epoch_ranges, split_samples, split_sizes

SIZES = [7, 3, 11, 1, 5, 9, 2, 6]  # 44 samples, uneven, in 8 shards


def write_shards(folder: Path, sizes: list[int], index: bool = True) -> list[Path]:
    import webdataset as wds

    folder.mkdir(parents=True)
    entries = []
    for i, n in enumerate(sizes):
        name = f"shard-{i:06d}.tar"
        with wds.TarWriter(str(folder / name)) as w:
            for j in range(n):
                w.write({"__key__": f"s{i}_{j}", "mp4": b"not a video", "json": {"label": i}})
        entries.append({"name": name, "samples": n})
    if index:
        (folder / INDEX_NAME).write_text(json.dumps({"shards": entries, "samples": sum(sizes)}))
    return resolve_shards(folder)


def epoch_keys(shards, split, n_splits, epoch, counts=None):
    keys = []
    for e, _, sample in split_samples(shards, seed=5, split=split, n_splits=n_splits, buffer=4, epoch=epoch, counts=counts):
        if e != epoch:
            break
        keys.append(sample.key)
    return keys


@pytest.mark.parametrize("n_splits", [3, 5, 7, 12])
def test_one_epoch_over_all_splits_is_exactly_the_key_set(tmp_path, n_splits):
    shards = write_shards(tmp_path / "d", SIZES)
    every = sorted(f"s{i}_{j}" for i, n in enumerate(SIZES) for j in range(n))
    for epoch in (0, 1, 2):
        parts = [epoch_keys(shards, s, n_splits, epoch) for s in range(n_splits)]
        got = Counter(k for p in parts for k in p)
        assert sorted(got) == every and max(got.values()) == 1  # complete, no duplicates
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced by samples, not shards


def test_counts_come_from_index_json_or_the_tar_headers(tmp_path):
    with_index = write_shards(tmp_path / "a", SIZES)
    foreign = write_shards(tmp_path / "b", SIZES, index=False)
    assert shard_sample_counts(with_index) == SIZES == shard_sample_counts(foreign)


def test_no_split_runs_ahead_over_many_epochs():
    # 3600 shards of 90 to 110 samples over 640 splits: the case, shards not dividing
    total, n = 3600 * 100 + 17, 640
    seen = [0] * n
    for epoch in range(50):
        seen = [a + b for a, b in zip(seen, split_sizes(total, n, epoch))]
        ideal = total * (epoch + 1) / n
        assert all(abs(s - ideal) < 1 for s in seen)


def test_ranges_cut_shards_at_sample_boundaries():
    counts = [7, 3, 11, 1, 5, 9, 2, 6]
    ranges = [epoch_ranges(counts, 0, 1, s, 5) for s in range(5)]
    covered = Counter((i, j) for r in ranges for i, a, b in r for j in range(a, b))
    assert len(covered) == sum(counts) and max(covered.values()) == 1
    assert any(0 < a or b < counts[i] for r in ranges for i, a, b in r)  # some split starts or ends inside a shard


def test_a_resumed_split_continues_exactly_inside_a_shard(tmp_path):
    shards = write_shards(tmp_path / "d", SIZES)
    full = [(e, n, s.key) for (e, n, s), _ in zip(split_samples(shards, 5, 2, 5, 4), range(30))]
    for cut in (3, 8, 9, 17):  # mid-epoch and right at an epoch's end (a split holds 8 or 9)
        e, n, _ = full[cut - 1]
        resumed = split_samples(shards, 5, 2, 5, 4, epoch=e, consumed=n)
        assert [(a, b, s.key) for (a, b, s), _ in zip(resumed, range(30 - cut))] == full[cut:]


class Slow:
    """A stage that hangs on one clip (as decord can), returns a tiny clip otherwise."""

    def __init__(self, key: str, seconds: float):
        self.key, self.seconds = key, seconds

    def __call__(self, sample, ctx):
        import time

        import torch

        if sample.key == self.key:
            time.sleep(self.seconds)
        return {"clip": torch.zeros(1)}


MASKS = (__import__("salt_cache.masks", fromlist=["MaskSet"]).MaskSet("one", 1, (0.25, 0.25)),)


def test_a_decode_past_its_time_bound_is_skipped_and_counted(tmp_path):
    from salt_cache.train.data import TrainStream

    shards = write_shards(tmp_path / "d", [3, 2])
    stream = TrainStream(shards, Slow("s0_1", 30), 2, (1, 2, 2), MASKS, seed=0, rank=0, world_size=1, workers=1,
                         shuffle_buffer=2, decode_timeout_s=0.2)
    batches = stream.batches(split=0, n_splits=1)
    got = [next(batches) for _ in range(3)]  # epoch 0's 4 good clips, then the first of epoch 1
    keys = [k for b in got[:2] for k in b["keys"]]
    assert sorted(keys) == ["s0_0", "s0_2", "s1_0", "s1_1"] and sum(b["skipped"] for b in got) >= 1


def test_a_hung_loader_stops_the_run_with_one_line(tmp_path):
    from salt_cache.errors import SaltCacheError
    from salt_cache.train.data import TrainData

    shards = write_shards(tmp_path / "d", [3, 2])
    data = TrainData(shards, Slow("s0_0", 30), batch_size=5, grid=(1, 2, 2), mask_sets=MASKS, seed=0, rank=0,
                     world_size=1, workers=1, shuffle_buffer=2, timeout_s=1.0)
    with pytest.raises(SaltCacheError, match=r"^data.loader_timeout_s: the DataLoader produced no batch for 1 s"):
        data.next()
    data.close()
