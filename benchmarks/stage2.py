"""Benchmark of Stage 2: a step with the latent cache vs a step with the online teacher. One run,
one machine, the same student/predictor/teacher weights, the same batches (same clips, same
stored views, same masks) and the same AdamW. Prints JSON:

- model_only:   `engine.train_step` on pre-fetched batches (the first warmup + steps batches of
                the real pipeline, already on the device): cached step, online step and the bare
                teacher forward (no_grad, same autocast), interleaved batch by batch so that a
                busy machine slows all three alike. speedup = online / cached; ideal speedup =
                t_online / (t_online - t_teacher_forward); teacher_forward_share = that forward /
                t_online.
- end_to_end:   the same step fed by the real `TrainData` DataLoader with --workers workers
                (cached: read the shard, decode the clip at the row's stored view, read the row
                from Zarr; online: the same join without the latents, then the teacher forward in
                the step). data_wait_frac = time `TrainData.next()` blocked / step time. One
                loader at a time, in blocks cached, online, online, cached (fresh loader and
                warm-up per block); its speedup is noisier than model_only's on a shared machine.
- loader_costs: one sample's decode and latent read and one batch's masks, timed in this process:
                what a worker spends per batch, to say where the time goes.
- where_the_time_goes: one line computed from the numbers above.

Warm-up steps (DataLoader start, first allocations, AdamW state) are excluded; times are medians
over --steps steps. On CPU the step runs with cores - workers torch threads (as `train-student`
sets them), recorded as `threads`.

Defaults run in one to two minutes on a 2-core CPU: 16 demo clips (64 px, 24 frames, generated
in a temporary folder when --data is not given), the `demo` spec (2 views, 8 x 64 x 64 -> 4 x 8 x 8
= 256 tokens), a random `small` teacher, a `micro` student, a 4 x 384 predictor (the paper's
width; its 12 blocks are too slow for a CPU default), batches of 2. On a GPU, try e.g.
--teacher-model large --student-model large --predictor-depth 12 --batch-size 32 --workers 8.

    python benchmarks/stage2.py [--data SHARDS] [--spec demo] [--teacher-model small | --teacher CKPT]
                                [--student-model micro] [--predictor-depth 4] [--batch-size 2]
                                [--steps 6] [--warmup 2] [--workers 1] [--device auto] [--no-bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

LOADER_BOUND_WAIT = 0.10  # a cached step that waits on data this much of its time is loader-bound


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="Train shards (folder, brace pattern or comma list); default: demo clips made here.")
    ap.add_argument("--spec", default="demo", help="Cache spec file or name in cache_specs/.")
    ap.add_argument("--teacher-model", default="small", help="Size of a random teacher (ignored with --teacher).")
    ap.add_argument("--teacher", help="Encoder checkpoint to use as the teacher instead of a random one.")
    ap.add_argument("--student-model", default="micro")
    ap.add_argument("--predictor-depth", type=int, default=4)
    ap.add_argument("--predictor-dim", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="Measured steps per mode (after --warmup).")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (also used by the cache build).")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="No bf16 autocast on CUDA.")
    ap.add_argument("--clips", type=int, default=16, help="Demo clips to generate when --data is not given.")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be >= 1, --warmup >= 0")

    from salt_cache.cache import BuildConfig, build_cache
    from salt_cache.checkpoint import load_encoder, save_encoder
    from salt_cache.masks import multiblock_masks
    from salt_cache.models import build_encoder, param_count
    from salt_cache.shards import resolve_shards
    from salt_cache.spec import load_spec
    from salt_cache import dist
    from salt_cache.train.config import load_run_config
    from salt_cache.shards import read_samples
    from salt_cache.train.data import TrainData, on_device
    from salt_cache.train.engine import autocast, train_step
    from salt_cache.train.optim import make_optimizer, set_schedule
    from salt_cache.train.student import CacheJoin, StudentConfig, build_model, check_cache
    from salt_cache.video import decode_view

    load_start = os.getloadavg()
    t_run = time.perf_counter()
    spec = load_spec(args.spec)
    device = dist.resolve_device(args.device)
    n_batches = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="salt-bench-stage2-") as tmp:
        tmp = Path(tmp)
        if args.data:
            data = args.data
        else:
            from salt_cache.demo import DemoConfig, make_demo_data

            # enough shards for every worker to own one; the maker keeps >= 4 clips for val (unused)
            shard_size = max(1, args.clips // max(4, args.workers))
            make_demo_data(DemoConfig(tmp / "demo", clips=max(args.clips, 4) + 4, size=64, frames=24, seed=0,
                           val_fraction=0.0, shard_size=shard_size, workers=1))
            data = str(tmp / "demo" / "train")
        if args.teacher:
            teacher_path = Path(args.teacher)
        else:
            torch.manual_seed(0)
            teacher_path = tmp / "teacher.pt"
            save_encoder(teacher_path, build_encoder(args.teacher_model, patch_size=spec.patch_size,
                                                     tubelet_size=spec.tubelet_size))
        shards = resolve_shards(data)
        cache = tmp / "cache"
        t = time.perf_counter()
        build = build_cache(BuildConfig(teacher_path, shards, spec, cache, batch_size=8, workers=args.workers, device=str(device)))
        build_s = time.perf_counter() - t

        config = load_run_config(StudentConfig, flags={
            "cache": str(cache), "data.train": data, "model.name": args.student_model,
            "model.patch_size": spec.patch_size, "model.tubelet_size": spec.tubelet_size,
            "clip.frames": spec.clip.frames, "clip.size": spec.clip.size,
            "predictor.depth": args.predictor_depth, "predictor.embed_dim": args.predictor_dim,
            "batch_size": args.batch_size, "workers": args.workers, "device": str(device), "bf16": args.bf16,
            "steps": 2 * n_batches})
        fingerprint = check_cache(config, shards, None)  # the trainer's refusals, on the cache just built
        env = dist.setup(config.device, config.workers)  # CPU: cores - workers torch threads
        try:
            threads = torch.get_num_threads()
            teacher, tckpt = load_encoder(teacher_path, env.device)
            torch.manual_seed(config.seed)
            cached_model = build_model(config, fingerprint["teacher_dim"]).to(env.device)
            online_model = build_model(config, fingerprint["teacher_dim"], teacher).to(env.device)
            online_model.student.load_state_dict(cached_model.student.state_dict())
            online_model.predictor.load_state_dict(cached_model.predictor.state_dict())
            modes = {
                "cached": {"model": cached_model, "stage": CacheJoin(cache, config.seed, latents=True)},
                "online": {"model": online_model, "stage": CacheJoin(cache, config.seed, latents=False)},
            }
            for m in modes.values():
                m["optimizer"] = make_optimizer(m["model"], config.optim, env.device)
                m["params"] = [p for p in m["model"].parameters() if p.requires_grad]

            def loader(stage) -> TrainData:
                return TrainData(shards, stage, batch_size=args.batch_size, grid=config.grid,
                                 mask_sets=tuple(config.masks), seed=config.seed, rank=0, world_size=1,
                                 workers=config.workers, shuffle_buffer=config.data.shuffle_buffer,
                                 pin_memory=env.device.type == "cuda")

            def step(mode: str, fetch, i: int):
                m = modes[mode]
                set_schedule(m["optimizer"], i, config.optim, config.steps)
                t0 = time.perf_counter()
                r = train_step(m["model"], m["optimizer"], fetch, accum=1, params=m["params"],
                               clip_grad=config.optim.clip_grad, env=env, bf16=config.bf16, step=i)
                return time.perf_counter() - t0, r  # train_step reads the loss back: synchronized

            # (a) model only: the pipeline's first batches, pre-fetched onto the device
            data_c = loader(modes["cached"]["stage"])
            batches = [on_device(data_c.next(), env.device) for _ in range(n_batches)]
            data_c.close()
            del data_c
            tokens = {name: {"context": ctx.shape[1], "target": tgt.shape[1]}
                      for (name, (ctx, tgt)) in zip((s.name for s in config.masks), batches[0]["masks"])}
            times = {"cached": [], "online": [], "teacher_forward": []}
            first_loss = {}

            def teacher_forward(batch: dict) -> float:
                _sync(env.device)
                t0 = time.perf_counter()
                with torch.no_grad(), autocast(env.device, config.bf16):
                    teacher(batch["clip"])
                _sync(env.device)
                return time.perf_counter() - t0

            for i, batch in enumerate(batches):
                online_batch = {k: v for k, v in batch.items() if k != "latents"}
                runs = [("cached", lambda: step("cached", lambda: batch, i)),
                        ("online", lambda: step("online", lambda: online_batch, i)),
                        ("teacher_forward", lambda: (teacher_forward(batch), None))]
                for name, fn in runs if i % 2 == 0 else runs[::-1]:  # alternate the order: no position bias
                    dt, r = fn()
                    if i == 0 and r is not None:
                        first_loss[name] = r.loss
                    if i >= args.warmup:
                        times[name].append(dt)
            del batches
            c, o, tf = (_med(times[k]) for k in ("cached", "online", "teacher_forward"))
            model_only = {
                "steps": args.steps, "cached_step_s": _r(c), "online_step_s": _r(o), "teacher_forward_s": _r(tf),
                "speedup": _r(o / c, 3), "teacher_forward_share": _r(tf / o, 3),
                "ideal_speedup": _r(o / (o - tf), 3) if o > tf else None,
                "first_step_loss": {k: _r(v, 6) for k, v in first_loss.items()},
                "steps_s": {k: [_r(x) for x in v] for k, v in times.items()},
            }

            # (b) end to end: the same steps fed by the real DataLoader. One loader at a time (two
            # alive at once would hand each worker two steps per batch and hide a slow loader), in
            # blocks ordered cached, online, online, cached so that a drifting machine load cancels.
            # Each block starts a fresh loader (the same first batches) and drops its warm-up steps.
            half = (args.steps + 1) // 2
            blocks = [("cached", half), ("online", half), ("online", args.steps - half), ("cached", args.steps - half)]
            step_s = {"cached": [], "online": []}
            wait_s = {"cached": [], "online": []}
            for mode, k in blocks:
                if not k:
                    continue
                feed = loader(modes[mode]["stage"])
                for i in range(args.warmup + k):
                    dt, _ = step(mode, lambda: on_device(feed.next(), env.device, non_blocking=True), n_batches + i)
                    wait, _skipped = feed.take_stats()
                    if i >= args.warmup:
                        step_s[mode].append(dt)
                        wait_s[mode].append(wait)
                feed.close()  # stops its workers before the next block starts
            end_to_end = {"steps": args.steps, "blocks": [f"{m} x {k}" for m, k in blocks if k]}
            for mode in ("cached", "online"):
                ts, ws = step_s[mode], wait_s[mode]
                end_to_end[mode] = {"step_s": _r(_med(ts)), "data_wait_s": _r(_med(ws)),
                                    "data_wait_frac": _r(sum(ws) / sum(ts), 3),
                                    "samples_per_s": _r(args.batch_size / _med(ts), 2),
                                    "steps_s": [_r(x) for x in ts]}
            ec, eo = end_to_end["cached"]["step_s"], end_to_end["online"]["step_s"]
            end_to_end["speedup"] = _r(eo / ec, 3)
            end_to_end["ideal_speedup"] = _r(eo / (eo - tf), 3) if eo > tf else None

            # what a DataLoader worker spends on one batch (this process, one sample at a time)
            join = CacheJoin(cache, config.seed)
            samples = [s for s, _ in zip(read_samples(shards), range(2 * args.batch_size + 1))]
            decode_s, read_s = [], []
            for j, s in enumerate(samples):
                ref = join.reader.rows(s.key)[0]
                view = join.reader.view(ref)
                t0 = time.perf_counter()
                decode_view(s.video, view)
                t1 = time.perf_counter()
                join.reader.read(ref)
                t2 = time.perf_counter()
                if j:  # the first opens the stores and builds the key index
                    decode_s.append(t1 - t0)
                    read_s.append(t2 - t1)
            mask_s = []
            for j in range(5):
                t0 = time.perf_counter()
                multiblock_masks(args.batch_size, config.grid, tuple(config.masks), seed=j)
                mask_s.append(time.perf_counter() - t0)
            d, rd, mk = _med(decode_s), _med(read_s), _med(mask_s)
            batch_cached = args.batch_size * (d + rd) + mk
            batch_online = args.batch_size * d + mk
            loader_costs = {"decode_per_sample_s": _r(d, 5), "latent_read_per_sample_s": _r(rd, 5),
                            "masks_per_batch_s": _r(mk, 5), "worker_s_per_batch_cached": _r(batch_cached),
                            "worker_s_per_batch_online": _r(batch_online), "samples_timed": len(decode_s)}
        finally:
            dist.teardown(env)

    wc = end_to_end["cached"]["data_wait_frac"]
    per_step = batch_cached / max(1, args.workers)  # worker time per step when workers share the work
    if wc >= LOADER_BOUND_WAIT:
        where = (f"loader-bound: the cached step waits {wc:.0%} of its {ec:.3f} s on the DataLoader; a batch costs a "
                 f"worker {batch_cached:.3f} s ({args.batch_size} x (decode {d * 1e3:.1f} ms + latent read "
                 f"{rd * 1e3:.1f} ms) + masks {mk * 1e3:.1f} ms; decode is {args.batch_size * d / batch_cached:.0%}), "
                 f"{per_step:.3f} s per step with {args.workers} worker(s) sharing {os.cpu_count()} cores with "
                 f"{threads} torch thread(s), vs {c:.3f} s of model compute")
    else:
        where = (f"model-bound: the cached step waits {wc:.0%} on data; its {ec:.3f} s is student + predictor "
                 f"forward/backward + AdamW ({c:.3f} s on pre-fetched batches); the loader needs {per_step:.3f} s "
                 f"of worker time per step ({args.batch_size} x (decode {d * 1e3:.1f} ms + latent read "
                 f"{rd * 1e3:.1f} ms) + masks {mk * 1e3:.1f} ms), {c / per_step:.1f}x headroom")
        gap = ec - c - end_to_end["cached"]["data_wait_s"]
        if gap > 0.1 * c:
            where += (f"; the other {gap:.3f} s of the end-to-end step is not data wait (likely CPU contention: "
                      f"{args.workers} worker(s), {threads} torch thread(s) and other processes on {os.cpu_count()} "
                      f"cores, load {os.getloadavg()[0]:.1f})")

    result = {
        "benchmark": "stage2",
        "device": str(env.device), "torch": torch.__version__, "threads": threads, "workers": args.workers,
        "bf16_autocast": bool(config.bf16 and env.device.type == "cuda"),
        "spec": spec.name, "grid": list(config.grid), "tokens": spec.tokens, "views": spec.views,
        "storage_dtype": fingerprint["dtype"], "mask_tokens": tokens,
        "teacher": {"model": tckpt["config"].get("name") or str(teacher_path), "dim": fingerprint["teacher_dim"],
                    "params_m": _r(param_count(teacher) / 1e6, 2)},
        "student": {"model": args.student_model, "dim": cached_model.student.embed_dim,
                    "params_m": _r(param_count(cached_model.student) / 1e6, 2)},
        "predictor": {"embed_dim": args.predictor_dim, "depth": args.predictor_depth,
                      "num_heads": config.predictor.num_heads,
                      "params_m": _r(param_count(cached_model.predictor) / 1e6, 2)},
        "batch_size": args.batch_size, "warmup_steps": args.warmup, "steps": args.steps,
        "speedup": model_only["speedup"], "ideal_speedup": model_only["ideal_speedup"],
        "teacher_forward_share": model_only["teacher_forward_share"],
        "data_wait_frac": {m: end_to_end[m]["data_wait_frac"] for m in ("cached", "online")},
        "model_only": model_only, "end_to_end": end_to_end, "loader_costs": loader_costs,
        "where_the_time_goes": where,
        "cache_build": {"clips": build.clips_built, "rows": build.rows_built, "build_s": _r(build_s, 2)},
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "loadavg_start": [round(x, 2) for x in load_start],
                 "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                 "cuda": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None},
        "wall_s": _r(time.perf_counter() - t_run, 1),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
