"""Benchmark of `salt-cache build`, measured in one run on the same clips. Prints JSON:

- build_clips_per_s:   `build_cache` end to end (decode workers + teacher + Zarr writes),
                       timed from the call (includes teacher load and sha256, DataLoader start)
- forward_clips_per_s: bare teacher forward on pre-decoded tensors (all views of a clip, in
                       batches of --batch-size), the ceiling the build could reach
- decode_clips_per_s:  decoding only (read, probe, plan, decode every view) through the same
                       DataLoader and workers as the build
- bytes_per_row / fp32_bytes_per_row: on disk (all store files) vs raw fp32 latents
- read_rows_per_s:     `CacheReader.read` of every row in random order, one process (what a
                       Stage 2 DataLoader worker gets per process)

Defaults run in about a minute on a CPU: 48 demo clips (generated into a temporary folder when
--data is not given), the `demo` spec (2 views, 8 x 64 x 64 -> 256 tokens) and a randomly
initialized `tiny` teacher.

    python benchmarks/build.py [--data SHARDS] [--spec demo] [--model tiny | --teacher CKPT]
                               [--device cpu] [--batch-size 8] [--workers 2] [--clips 48]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="Shards (folder, brace pattern or comma list); default: demo clips made here.")
    ap.add_argument("--spec", default="demo", help="Cache spec file or name in cache_specs/.")
    ap.add_argument("--model", default="tiny", help="Model size for a random teacher (ignored with --teacher).")
    ap.add_argument("--teacher", help="Encoder checkpoint to use instead of a random --model.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clips", type=int, default=48, help="Demo clips to generate when --data is not given.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Spec override, e.g. storage.dtype=bfloat16.")
    ap.add_argument("--keep", help="Keep the built cache in this folder instead of a temporary one.")
    args = ap.parse_args(argv)

    from torch.utils.data import DataLoader

    from salt_cache.cache import BuildConfig, CacheReader, build_cache, describe_cache
    from salt_cache.cache.build import _encode
    from salt_cache.dist import resolve_device
    from salt_cache.cache.source import ClipDataset, ClipItem
    from salt_cache.shards import index_shard
    from salt_cache.checkpoint import load_encoder, save_encoder
    from salt_cache.models import build_encoder, param_count
    from salt_cache.shards import resolve_shards
    from salt_cache.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    device = resolve_device(args.device, 0)
    with tempfile.TemporaryDirectory(prefix="salt-bench-") as tmp:
        tmp = Path(tmp)
        if args.data:
            data = args.data
        else:
            from salt_cache.demo import DemoConfig, make_demo_data

            # the demo maker always keeps >= 4 clips for val: ask for 4 more, use train only
            make_demo_data(DemoConfig(tmp / "demo", clips=max(args.clips, 4) + 4, size=64, frames=24, seed=0,
                           val_fraction=0.0, shard_size=16))
            data = str(tmp / "demo" / "train")
        if args.teacher:
            teacher = Path(args.teacher)
        else:
            torch.manual_seed(0)
            teacher = tmp / "teacher.pt"
            save_encoder(teacher, build_encoder(args.model, patch_size=spec.patch_size, tubelet_size=spec.tubelet_size))
        shards = resolve_shards(data)
        out = Path(args.keep) if args.keep else tmp / "cache"

        # 1. the build, end to end
        t = time.perf_counter()
        summary = build_cache(BuildConfig(teacher, shards, spec, out, batch_size=args.batch_size, workers=args.workers,
                              device=args.device))
        build_s = time.perf_counter() - t
        clips = summary.clips_built
        report = describe_cache(out)

        # 2. decoding only, same dataset and DataLoader settings as the build
        items = [ClipItem(store=pos, sample=j, shard=str(p), tar=s)
                 for pos, p in enumerate(shards) for j, s in enumerate(index_shard(p))]
        loader = DataLoader(ClipDataset(items, spec.clip, spec.views, spec.seed), batch_size=None,
                            num_workers=args.workers, prefetch_factor=4 if args.workers else None)
        decoded: list[torch.Tensor] = []
        t = time.perf_counter()
        for res in loader:
            decoded.extend(x for x in res["x"] if x is not None)
        decode_s = time.perf_counter() - t

        # 3. bare teacher forward on the pre-decoded views (threads as the build sets them on CPU)
        model, ckpt = load_encoder(teacher, device)
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))
        _encode(model, decoded[: args.batch_size], device)  # warm-up
        _sync(device)
        t = time.perf_counter()
        for i in range(0, len(decoded), args.batch_size):
            _encode(model, decoded[i:i + args.batch_size], device)
        _sync(device)
        forward_s = time.perf_counter() - t
        views_per_clip = spec.views

        # 4. random single-row reads through the reader
        reader = CacheReader(out)
        refs = [r for k in reader.keys() for r in reader.rows(k)]
        order = torch.randperm(len(refs), generator=torch.Generator().manual_seed(0)).tolist()
        reader.read(refs[0])  # opens the store handles
        t = time.perf_counter()
        for i in order:
            reader.read(refs[i])
        read_s = time.perf_counter() - t

    result = {
        "benchmark": "build",
        "spec": spec.name, "grid": list(spec.grid), "tokens": spec.tokens, "views": spec.views,
        "dtype": spec.storage.dtype, "codec": spec.storage.codec,
        "teacher": ckpt["config"].get("name") or str(teacher), "teacher_dim": ckpt["config"]["embed_dim"],
        "teacher_params_m": round(param_count(model) / 1e6, 2),
        "device": str(device), "batch_size": args.batch_size, "workers": args.workers,
        "clips": clips, "rows": summary.rows_built, "failed_rows": summary.failed,
        "build_s": round(build_s, 3), "build_clips_per_s": round(clips / build_s, 2),
        "forward_s": round(forward_s, 3), "forward_clips_per_s": round(len(decoded) / views_per_clip / forward_s, 2),
        "decode_s": round(decode_s, 3), "decode_clips_per_s": round(len(items) / decode_s, 2),
        "read_rows_per_s": round(len(refs) / read_s, 1),
        "bytes_on_disk": report["bytes"]["on_disk"], "bytes_per_row": round(report["bytes"]["bytes_per_row"], 1),
        "fp32_bytes_per_row": report["bytes"]["fp32_bytes_per_row"],
        "ratio_vs_fp32": round(report["bytes"]["ratio_vs_fp32"], 4),
        "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                 "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
