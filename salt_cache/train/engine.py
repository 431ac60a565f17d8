"""One optimizer step, one evaluation, and the running averages behind log rows.

A stage's model is an `nn.Module` whose `forward(batch) -> (loss, per_set)` takes a batch dict
(see `salt_cache.train.data`) already on the device and returns the scalar loss and a 1-D
tensor of per-mask-set losses, and whose `encode(clip [B, C, T, H, W]) -> tokens [B, N, D]` runs
the network the stage trains on the whole, unmasked clip (validation logs RankMe and effective
rank of those tokens, see `salt_cache.diagnostics`). The engine never looks further inside it,
so Stage 1 and Stage 2 share everything here.

A stage's `train()` (teacher.py is the reference) keeps this order; the comments say why:
  1. env = dist.setup(config.device, config.workers); dist.teardown(env) in a finally.
  2. inputs = check_inputs(...): shards, the per-rank micro-batch, workers; the stage's own
     refusals; check_memory (CPU) -- all before `Run(...)`, so a run that cannot start writes
     nothing.
  3. run = Run(out, config, env, STAGE, interval.columns(), val_columns, resume).
  4. torch.manual_seed(config.seed); build the modules; make_optimizer; run.restore(modules,
     optimizer); interval.load_state(run.state["interval"]) when resuming.
  5. TrainData(..., state=run.data_state()) and ValSet with the stage's sample stage.
  6. compile in place (module.compile keeps state-dict keys), then dist.wrap.
  7. run.restore_rng() LAST: building models and loaders must not shift a resumed RNG.
  8. fit(Stage(...), run): per step set_schedule -> train_step -> on_step (e.g. the EMA target
     update, every rank) -> interval.add / run.log -> evaluate(bare model) ->
     run.save on EVERY rank (it gathers RNG and data positions) -> on_checkpoint (pictures) on
     rank 0 in eval mode (nothing periodic may draw random numbers, or resume stops being exact).
  9. Export the encoder on rank 0 (`checkpoint.save_encoder`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from salt_cache.errors import SaltCacheError
from salt_cache import dist
from salt_cache.train.data import ValSet, on_device
from salt_cache.train.optim import clip_gradients


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; full precision on CPU (exact, reproducible)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class StepResult:
    loss: float
    per_set: list[float]
    grad_norm: float


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, fetch: Callable[[], dict], *, accum: int,
               params: list[nn.Parameter], clip_grad: float | None, env: dist.DistEnv, bf16: bool,
               step: int) -> StepResult:
    """Forward/backward `accum` micro-batches (from `fetch()`, on the device), clip, step.

    Under DDP, gradients are synchronized on the last micro-batch only. The returned losses are
    the mean over micro-batches and ranks; the gradient norm is measured before clipping."""
    model.train()
    total = None
    for i in range(accum):
        batch = fetch()
        sync = i == accum - 1
        no_sync = model.no_sync() if env.distributed and not sync and hasattr(model, "no_sync") else contextlib.nullcontext()
        with no_sync:
            with autocast(env.device, bf16):
                loss, per_set = model(batch)
            (loss / accum).backward()
        values = torch.cat((loss.detach().float().reshape(1), per_set.detach().float().reshape(-1))).cpu()
        total = values if total is None else total + values
    grad_norm = clip_gradients(params, clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total = dist.all_reduce_sum(total / accum, env).double() / env.world_size
    if not math.isfinite(float(total[0])):
        raise SaltCacheError(f"step {step + 1}: the loss is {float(total[0])}; lower optim.lr or check the data")
    return StepResult(loss=float(total[0]), per_set=[float(v) for v in total[1:]], grad_norm=grad_norm)


@dataclass
class ValResult:
    loss: float
    per_set: list[float]
    ranks: dict[str, float] | None = None  # diagnostics.RANK_KEYS, on rank 0 only


@torch.no_grad()
def evaluate(model: nn.Module, val: ValSet, env: dist.DistEnv, bf16: bool, rank_rows: int = 0) -> ValResult | None:
    """Sample-weighted mean loss (and per-set losses) over the fixed validation set, and with
    `rank_rows` > 0 the RankMe / effective rank of `model.encode` tokens of the val clips (token
    rows capped at `rank_rows`).

    Batch i runs on rank i % world_size and the sums are reduced, so the number does not depend
    on the number of processes; the rank diagnostics' clip means and token samples are keyed by
    each clip's place in the val set and gathered on rank 0, so they do not either. Eval mode, no
    random numbers drawn: validation never moves a run's RNG. Pass the bare model (not the DDP
    wrapper)."""
    from salt_cache.diagnostics import RankSample

    was_training = model.training
    model.eval()
    sums = None
    sample = RankSample(len(val.samples), rank_rows) if rank_rows > 0 else None
    for i in range(env.rank, len(val), env.world_size):
        batch = val.batch(i)
        if batch is None:
            continue
        n = len(batch["keys"])
        batch = on_device(batch, env.device)
        with autocast(env.device, bf16):
            loss, per_set = model(batch)
            if sample is not None:
                sample.add(model.encode(batch["clip"]), i * val.batch_size)
        values = torch.cat((loss.float().reshape(1), per_set.float().reshape(-1), torch.ones(1, device=loss.device))).cpu().double() * n
        sums = values if sums is None else sums + values
    if sums is None:
        sums = torch.zeros(2 + len(val.mask_sets), dtype=torch.float64)
    sums = dist.all_reduce_sum(sums, env).double()
    ranks = None
    if sample is not None:
        gathered = dist.gather_objects(sample.parts, env)
        if gathered is not None:
            for parts in gathered:
                sample.merge(parts)
            ranks = sample.ranks()
    model.train(was_training)
    if float(sums[-1]) == 0:
        return None
    mean = sums[:-1] / sums[-1]
    return ValResult(float(mean[0]), [float(v) for v in mean[1:]], ranks)


class Interval:
    """Averages between two log rows. The sums are part of the run state, so a run resumed
    between two rows writes the same next row as a run that never stopped."""

    def __init__(self, set_names: list[str]):
        self.set_names = list(set_names)
        self.reset()
        self.restart_clock()

    def reset(self) -> None:
        self.n, self.loss, self.grad_norm = 0, 0.0, 0.0
        self.per_set = [0.0] * len(self.set_names)

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()
        self.samples, self.wait_s, self.skipped = 0, 0.0, 0

    def add(self, r: StepResult, samples: int) -> None:
        self.n += 1
        self.loss += r.loss
        self.grad_norm += r.grad_norm
        self.per_set = [a + b for a, b in zip(self.per_set, r.per_set)]
        self.samples += samples

    def row(self, step: int, lr: float, wd: float, wait_s: float, skipped: int) -> dict:
        """The log row for `step`; resets the averages and the clock."""
        self.wait_s += wait_s
        self.skipped += skipped
        wall = max(time.perf_counter() - self.t0, 1e-9)
        n = max(self.n, 1)
        row = {"step": step, "loss": self.loss / n}
        row.update({f"loss_{name}": v / n for name, v in zip(self.set_names, self.per_set)})
        row.update({"lr": lr, "wd": wd, "grad_norm": self.grad_norm / n, "samples_per_s": self.samples / wall,
                    "data_wait_frac": min(1.0, self.wait_s / wall), "skipped": self.skipped})
        self.reset()
        self.restart_clock()
        return row

    def state(self) -> dict:
        return {"n": self.n, "loss": self.loss, "grad_norm": self.grad_norm, "per_set": list(self.per_set)}

    def load_state(self, s: dict) -> None:
        self.n, self.loss, self.grad_norm = int(s["n"]), float(s["loss"]), float(s["grad_norm"])
        self.per_set = [float(v) for v in s["per_set"]]

    def columns(self) -> list[str]:
        return (["step", "loss"] + [f"loss_{n}" for n in self.set_names]
                + ["lr", "wd", "grad_norm", "samples_per_s", "data_wait_frac", "skipped"])


@dataclass(frozen=True)
class Inputs:
    """What a run trains on, checked before anything is written: train shards, val shards (or
    None), the per-rank micro-batch and the DataLoader workers per rank (config.workers, or
    fewer when the shards cannot give each worker a split of its own)."""

    shards: list
    val_shards: list | None
    per_rank: int
    workers: int


def check_inputs(config, env: dist.DistEnv, stop_at: int | None) -> Inputs:
    """Validate what a run needs before anything is written (see `Inputs`)."""
    from salt_cache.console import console
    from salt_cache.shards import resolve_shards
    from salt_cache.train.data import check_splits

    if not config.data.train:
        raise SaltCacheError("data.train: no training shards given (--data)")
    shards = resolve_shards(config.data.train)
    val_shards = resolve_shards(config.data.val) if config.data.val else None
    per_rank, rest = divmod(config.batch_size, env.world_size * config.grad_accum)
    if rest or per_rank < 1:
        raise SaltCacheError(f"batch_size: {config.batch_size} does not split into {env.world_size} process(es) "
                             f"x grad_accum {config.grad_accum} equal micro-batches")
    # every worker of every rank streams shards of its own: more workers than that would idle
    workers = min(config.workers, max(1, len(shards) // env.world_size))
    check_splits(len(shards), env.world_size, workers)
    if workers < config.workers and env.is_main:
        console.print(f"[yellow]note:[/] {len(shards)} train shards feed {workers} DataLoader worker(s) per process, "
                      f"not {config.workers} (each worker needs a shard of its own; more, smaller shards allow more)",
                      highlight=False, soft_wrap=True)
    if stop_at is not None and stop_at < 1:
        raise SaltCacheError(f"--stop-at: expected a step >= 1, got {stop_at}")
    return Inputs(shards, val_shards, per_rank, workers)


def check_memory(config, inputs: Inputs, env: dist.DistEnv) -> None:
    """On CPU, refuse a run whose step would not fit in memory (`memory.check_cpu_memory`):
    after the stage's own refusals, before `Run(...)` writes anything."""
    import os

    from salt_cache.train.memory import check_cpu_memory

    if env.device.type == "cpu":
        check_cpu_memory(config, inputs.per_rank, int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)))


def make_loaders(config, samples, inputs: Inputs, env: dist.DistEnv, run, missing_val: str) -> tuple:
    """(TrainData for this rank, at the run's data position; ValSet or None), both with the
    per-sample stage `samples`. `missing_val` says what a run without validation shards goes
    without."""
    from salt_cache.console import console
    from salt_cache.train.data import TrainData

    data = TrainData(inputs.shards, samples, batch_size=inputs.per_rank, grid=config.grid,
                     mask_sets=tuple(config.masks), seed=config.seed, rank=env.rank, world_size=env.world_size,
                     workers=inputs.workers, shuffle_buffer=config.data.shuffle_buffer,
                     pin_memory=env.device.type == "cuda", state=run.data_state(),
                     timeout_s=config.data.loader_timeout_s, decode_timeout_s=config.data.decode_timeout_s,
                     max_damaged=config.data.max_damaged_rows)
    val = None
    if inputs.val_shards and config.val_batches:
        val = ValSet(inputs.val_shards, samples, config.data.val_batch_size, config.val_batches, config.grid,
                     tuple(config.masks), config.seed)
    elif env.is_main:
        console.print(f"[yellow]no validation shards (data.val / --val): {missing_val}")
    return data, val


def val_columns(set_names: list[str], ranks: bool = True) -> list[str]:
    """val.csv's columns; `ranks`: the RankMe / effective-rank columns (TrainConfig.val_rank_rows > 0)."""
    from salt_cache.diagnostics import RANK_KEYS

    return ["step", "val_loss"] + [f"val_loss_{n}" for n in set_names] + (list(RANK_KEYS) if ranks else [])


@dataclass
class Stage:
    """What `fit` trains, in one object. `model.forward(batch) -> (loss, per_set)` is the loss
    (module docstring); `config` (a TrainConfig) holds the schedule (steps, optim, grad_accum,
    bf16, log / val / checkpoint cadence).

    model: the bare module (evaluation); net: what steps (the DDP wrapper under torchrun, else
    model); modules: what run checkpoints hold; data / val: the loaders; interval: the log
    averages (restored by the stage when resuming); model_configs, meta: stored with every
    checkpoint. Hooks, neither of which may draw random numbers: on_step(step) on every rank
    right after optimizer step `step` (0-based; e.g. the EMA target update); on_checkpoint(step,
    last batch) on rank 0 after each checkpoint (e.g. pictures)."""

    title: str
    config: object
    model: nn.Module
    net: nn.Module
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    data: object
    val: ValSet | None
    interval: Interval
    model_configs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    on_step: Callable[[int], None] | None = None
    on_checkpoint: Callable[[int, dict | None], None] | None = None


def fit(stage: Stage, run, stop_at: int | None = None, show_progress: bool = True) -> dict:
    """The step loop both stages share: schedule -> step -> log row -> validation -> checkpoint,
    from the run's step (0, or where a resumed run stopped) to `stop_at` or the last step.
    Returns {"end_step", "loss", "val_loss", "data_wait_frac"}."""
    from salt_cache.console import progress
    from salt_cache.train.optim import set_schedule

    config, env, data, val, interval = stage.config, run.env, stage.data, stage.val, stage.interval
    names = interval.set_names
    params = [p for p in stage.model.parameters() if p.requires_grad]
    end = min(config.steps, stop_at) if stop_at else config.steps
    if end <= run.step and run.step < config.steps:
        raise SaltCacheError(f"--stop-at {stop_at}: the run is already at step {run.step}")
    prior = run.state["meta"] if run.state is not None else {}
    loss, val_loss = prior.get("loss"), prior.get("val_loss")
    wait_total, step_total = 0.0, 0.0
    last_batch: dict | None = None

    def fetch() -> dict:
        nonlocal last_batch
        last_batch = on_device(data.next(), env.device, non_blocking=True)
        return last_batch

    bar = progress("steps") if env.is_main and show_progress else None
    task = bar.add_task(stage.title, total=end, completed=run.step) if bar else None
    if bar:
        bar.start()
    try:
        for step in range(run.step, end):
            t_step = time.perf_counter()
            lr, wd = set_schedule(stage.optimizer, step, config.optim, config.steps)
            result = train_step(stage.net, stage.optimizer, fetch, accum=config.grad_accum, params=params,
                                clip_grad=config.optim.clip_grad, env=env, bf16=config.bf16, step=step)
            if stage.on_step is not None:
                stage.on_step(step)
            step_total += time.perf_counter() - t_step
            done = step + 1
            loss = result.loss
            interval.add(result, config.batch_size)
            if done % config.log_every == 0 or done == config.steps:
                wait_s, skipped = data.take_stats()
                wait_total += wait_s
                run.log(interval.row(done, lr, wd, wait_s, skipped))
            if val is not None and (done % config.val_every == 0 or done == config.steps):
                v = evaluate(stage.model, val, env, config.bf16, config.val_rank_rows)
                if v is not None:
                    val_loss = v.loss
                    run.log_val({"step": done, "val_loss": v.loss, **{f"val_loss_{n}": x for n, x in zip(names, v.per_set)},
                                 **(v.ranks or {})})
            if done % config.ckpt_every == 0 or done == end:
                run.save(done, stage.modules, stage.optimizer, data.state(), interval.state(),
                         model_configs=stage.model_configs, meta={**stage.meta, "loss": loss, "val_loss": val_loss})
                if env.is_main and stage.on_checkpoint is not None:
                    stage.on_checkpoint(done, last_batch)
            if bar:
                bar.update(task, completed=done, description=f"{stage.title} loss {loss:.4f}")
    finally:
        if bar:
            bar.stop()
        data.close()
    return {"end_step": end, "loss": loss, "val_loss": val_loss,
            "data_wait_frac": wait_total / step_total if step_total else None}
