"""The `salt-cache` command line. It parses arguments and calls library functions; no logic
lives here. A `SaltCacheError` becomes one red line on stderr and exit code 1."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from salt_cache import __version__
from salt_cache.console import console, progress
from salt_cache.cache.config import BuildConfig, VerifyConfig
from salt_cache.checkpoint import InitConfig
from salt_cache.demo import DemoConfig
from salt_cache.errors import SaltCacheError
from salt_cache.eval.config import ProbeConfig
from salt_cache.shards.pack import ShardsConfig

app = typer.Typer(
    name="salt-cache",
    help="SALT video self-supervised learning with an offline teacher-latent cache.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def user_errors(fn):
    """Turn user mistakes into a one-line error and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaltCacheError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"salt-cache {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
):
    """SALT: train a video teacher by pixel reconstruction, cache its latents once, then train a
    student to predict them at masked positions, with no teacher forward in Stage 2."""


@app.command()
@user_errors
def shards(
    src: Path = typer.Argument(..., help="A folder of videos (searched recursively) or a CSV/JSONL manifest with 'path' and optional 'label'."),
    out: Path = typer.Argument(..., help="Output folder for shard-NNNNNN.tar, index.json, rejected.jsonl."),
    shard_size: int = typer.Option(ShardsConfig.shard_size, help="Samples per shard."),
    workers: int = typer.Option(ShardsConfig.workers, help="Processes probing videos."),
    overwrite: bool = typer.Option(ShardsConfig.overwrite, help="Replace a non-empty OUT."),
    seed: int = typer.Option(ShardsConfig.seed, help="Seed of the packing order (recorded in index.json)."),
    shuffle: bool = typer.Option(ShardsConfig.shuffle, help="Pack in a seeded random order (--no-shuffle: sorted)."),
):
    """Pack videos into webdataset tar shards (original bytes + probed metadata)."""
    from salt_cache.shards import write_shards

    with progress("files") as bar:
        summary = write_shards(ShardsConfig(src, out, shard_size=shard_size, workers=workers, overwrite=overwrite,
                                                seed=seed, shuffle=shuffle), bar)
    table = Table(title=f"shards in {out}")
    for col in ("shards", "packed", "rejected"):
        table.add_column(col, justify="right")
    table.add_row(str(len(summary.shards)), str(summary.packed), str(len(summary.rejected)))
    console.print(table)
    if summary.rejected:
        rej = Table(title="rejected (also in rejected.jsonl)")
        rej.add_column("path")
        rej.add_column("reason")
        for r in summary.rejected[:20]:
            rej.add_row(r["path"], r["reason"])
        console.print(rej)
        if len(summary.rejected) > 20:
            console.print(f"... and {len(summary.rejected) - 20} more")


@app.command("demo-data")
@user_errors
def demo_data(
    out: Path = typer.Argument(Path("demo"), help="Output folder: train/ and val/ shards, videos/, manifests."),
    task: str = typer.Option(DemoConfig.task, help="time (direction of time) or shape (object shape)."),
    clips: int = typer.Option(DemoConfig.clips, help="Clips in all (balanced over the four classes)."),
    val_clips: int = typer.Option(None, help="Val clips (default: a quarter of --clips)."),
    size: int = typer.Option(DemoConfig.size, help="Frame side in pixels (multiple of 16)."),
    frames: int = typer.Option(DemoConfig.frames, help="Frames per video."),
    seed: int = typer.Option(DemoConfig.seed, help="Seed: the same seed gives the same videos."),
    overwrite: bool = typer.Option(DemoConfig.overwrite, help="Replace a non-empty OUT."),
):
    """Write an embedded demo dataset: four classes that differ only by the direction of time
    (--task time) or only by the object's shape (--task shape)."""
    from salt_cache.demo import make_demo_data

    config = DemoConfig(out, task=task, clips=clips, val_clips=val_clips, size=size, frames=frames, seed=seed,
                        overwrite=overwrite)
    with progress("clips") as bar:
        summary = make_demo_data(config, bar)
    table = Table(title=f"demo data in {out} ({summary['task']})")
    table.add_column("split")
    table.add_column("clips", justify="right")
    table.add_column("shards", justify="right")
    for split, s in summary["splits"].items():
        table.add_row(split, str(s["clips"]), str(s["shards"]))
    console.print(table)
    console.print("classes: " + ", ".join(summary["classes"]))


@app.command("init-model")
@user_errors
def init_model(
    model: str = typer.Option(..., help="Registered size: micro, tiny, small, base, large, huge, giant."),
    out: Path = typer.Option(..., help="Checkpoint file to write."),
    patch_size: int = typer.Option(InitConfig.patch_size, help="Spatial patch size (the demo specs use 8)."),
    tubelet_size: int = typer.Option(InitConfig.tubelet_size, help="Frames per tubelet."),
    pos_embed: str = typer.Option(InitConfig.pos_embed, help="Position encoding: rope or sincos."),
    seed: int = typer.Option(InitConfig.seed, help="Initialization seed."),
    frames: Optional[int] = typer.Option(None, help="Clip frames to record as the encoder's clip (with --frame-step and --size): probe then reads it on that geometry."),
    frame_step: Optional[int] = typer.Option(None, help="Source frames between clip frames (the recorded clip)."),
    size: Optional[int] = typer.Option(None, help="Clip side in pixels (the recorded clip)."),
):
    """Write a randomly initialized encoder checkpoint (a test teacher or a baseline)."""
    from salt_cache.checkpoint import init_encoder
    from salt_cache.models import param_count

    path, enc = init_encoder(InitConfig(out, model, patch_size=patch_size, tubelet_size=tubelet_size,
                                        pos_embed=pos_embed, seed=seed, frames=frames, frame_step=frame_step, size=size))
    clip = f", clip {frames} frames every {frame_step}, {size} px" if frames else ""
    console.print(f"wrote {path}: {model} encoder, {param_count(enc) / 1e6:.2f} M parameters{clip}")


@app.command("import-teacher")
@user_errors
def import_teacher(
    src: Path = typer.Argument(..., help="A local Hugging Face model folder (config.json + model.safetensors), a .safetensors file, or an original VideoMAE .pth / V-JEPA 2 .pt checkpoint."),
    out: Path = typer.Option(..., help="Teacher checkpoint to write (give it to build --teacher)."),
    format_: str = typer.Option("auto", "--format", help="auto, hf, videomae or vjepa2."),
    num_heads: Optional[int] = typer.Option(None, help="Attention heads, for original-repo files (default: the family's named size for that width)."),
    size: Optional[int] = typer.Option(None, help="Clip side the teacher was trained on, for original-repo files (default: VideoMAE 224, V-JEPA 2 256)."),
    frames: Optional[int] = typer.Option(None, help="Frames the teacher was trained on, for original-repo files (default 16)."),
    checkpoint_key: Optional[str] = typer.Option(None, help="Entry of an original checkpoint that holds the encoder (default: the first of target_encoder, encoder, model, module, state_dict)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the summary as JSON on stdout."),
):
    """Import a VideoMAE / VideoMAEv2 or V-JEPA 2 teacher (Hugging Face or original-repo
    checkpoint) as an encoder checkpoint that [bold]build[/] takes like any teacher."""
    import json

    from salt_cache.models.imports import import_teacher as run_import

    s = run_import(src, out, fmt=format_, num_heads=num_heads, size=size, frames=frames, checkpoint_key=checkpoint_key)
    c, i = s.config, s.input
    table = Table(title=f"imported {s.family} teacher ({s.format}) -> {s.out}")
    table.add_column("field")
    table.add_column("value")
    for k, v in (("source", s.source), ("sha256", s.sha256[:16] + "..."), ("checkpoint key", s.checkpoint_key or "-"),
                 ("encoder", f"{c['embed_dim']} wide, {c['depth']} deep, {c['num_heads']} heads, {s.params / 1e6:.2f} M parameters"),
                 ("positions", c["pos_embed"] + (f" ({c['rope_layout']} layout)" if c["pos_embed"] == "rope" else "")),
                 ("output", "after the final norm" if c["final_norm"] else "last block (no final norm)"),
                 ("patch x tubelet", f"{i['patch_size']} x {i['tubelet_size']}"),
                 ("trained on", f"{i['frames']} frames x {i['size']} px" + (" (fixed: build refuses other sizes)" if i["fixed_grid"] else "")),
                 ("mean / std", f"{i['mean']} / {i['std']} ({i['normalization_from']})"),
                 ("dropped", ", ".join(f"{k} ({n})" for k, n in s.dropped.items()) or "-")):
        table.add_row(k, str(v))
    console.print(table)
    if json_out:
        typer.echo(json.dumps(s.to_dict(), indent=2))


@app.command("inspect-video")
@user_errors
def inspect_video(file: Path = typer.Argument(..., help="A video file.")):
    """Print what decord sees in a video: frames, fps, size, duration."""
    from salt_cache.video import probe_video

    if not file.is_file():
        raise SaltCacheError(f"{file}: no such file")
    info = probe_video(file.read_bytes(), key=str(file))
    table = Table(title=str(file))
    for col in ("frames", "fps", "height", "width", "duration (s)"):
        table.add_column(col, justify="right")
    table.add_row(str(info.frames), f"{info.fps:.3f}", str(info.height), str(info.width), f"{info.duration:.2f}")
    console.print(table)


@app.command()
@user_errors
def build(
    teacher: Path = typer.Option(..., help="Encoder checkpoint of the frozen teacher."),
    data: list[str] = typer.Option(..., help="Shards: a folder, a brace pattern or a comma list (repeatable)."),
    spec: str = typer.Option(..., help="Cache spec: a YAML file or a bundled name (salt-cache specs: demo, vitl-16x224, ...)."),
    out: Path = typer.Option(..., help="Cache folder (created; an interrupted build of the same spec, teacher and data resumes)."),
    batch_size: int = typer.Option(BuildConfig.batch_size, help="Views per teacher forward."),
    workers: int = typer.Option(BuildConfig.workers, help="DataLoader processes decoding clips (0: decode in the main process)."),
    device: str = typer.Option(BuildConfig.device, help="auto, cpu, cuda or cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a spec field, e.g. storage.dtype=bfloat16 (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the summary as JSON on stdout."),
):
    """Encode every view of every clip with the frozen teacher into a latent cache (Zarr v3).
    Under [bold]torchrun[/], ranks split the stores by shard index."""
    import json

    from salt_cache.cache import build_cache
    from salt_cache.cache.tables import build_tables

    config = BuildConfig(teacher, list(data), spec, out, batch_size=batch_size, workers=workers, device=device,
                         overrides=list(set_ or []))
    with progress("clips") as bar:
        summary = build_cache(config, bar)
    if summary.rank != 0:
        return
    if summary.partial_cleared:
        console.print(f"cleared {summary.partial_cleared} partial store(s) of an interrupted build")
    for table in build_tables(summary):
        console.print(table)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=2))


@app.command()
@user_errors
def verify(
    cache: Path = typer.Argument(..., help="Cache folder."),
    data: Optional[list[str]] = typer.Option(None, help="Shards whose clips must be exactly the cache's keys (repeatable)."),
    teacher: Optional[Path] = typer.Option(None, help="Teacher checkpoint: its sha256 must match; --sample rows are re-encoded."),
    sample: int = typer.Option(VerifyConfig.sample, help="Rows re-encoded with --teacher."),
    seed: int = typer.Option(VerifyConfig.seed, help="Seed picking the re-encoded rows."),
    device: str = typer.Option(VerifyConfig.device, help="Device for re-encoding."),
    digest: bool = typer.Option(VerifyConfig.digest, help="Recompute each store's digest (reads every byte)."),
    rows: bool = typer.Option(VerifyConfig.rows, help="Check every row's checksum, finiteness and stats (reads every row)."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable report on stdout."),
):
    """Check a cache, cheapest checks first. Exit 0 when sound; exit 1 with one line per problem."""
    import json

    from salt_cache.cache import run_verify

    config = VerifyConfig(cache, data=list(data) if data else None, teacher=teacher, sample=sample, seed=seed,
                          device=device, digest=digest, rows=rows)
    with progress("rows") as bar:
        rep = run_verify(config, bar)
    if json_out:
        typer.echo(json.dumps(rep.to_dict(), indent=2, default=str))
    else:
        for p in rep.problems:
            typer.echo(p.line())
        if rep.fidelity is not None:
            from salt_cache.cache.tables import fidelity_line

            console.print(fidelity_line(rep.fidelity))
        status = "[green]ok[/]" if rep.ok else f"[red]{len(rep.problems)} problem(s)[/]"
        console.print(f"{cache}: {status} ({rep.stores} stores, {rep.rows_checked} rows checked, "
                      f"{len(rep.reencoded)} re-encoded; checks: {', '.join(rep.checks)})")
    if not rep.ok:
        raise typer.Exit(1)


@app.command("inspect")
@user_errors
def inspect_cache(
    cache: Path = typer.Argument(..., help="Cache folder."),
    rank_sample: int = typer.Option(256, help="Rows read (spread evenly over the stores) for the latents' RankMe / effective rank; 0 to skip."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
):
    """Show a cache: spec, fingerprint, row and view counts, failed rows, bytes vs fp32, stores,
    and the RankMe / effective rank of a sample of its latents (judge a teacher before Stage 2)."""
    import json

    from salt_cache.cache import describe_cache
    from salt_cache.cache.tables import describe_tables

    rep = describe_cache(cache, rank_sample=rank_sample)
    if json_out:
        typer.echo(json.dumps(rep, indent=2, default=str))
        return
    for table in describe_tables(rep):
        console.print(table)
    if rep["stray"]:
        console.print(f"[yellow]stray entries in stores/:[/] {', '.join(rep['stray'])}")


def parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    """'1e-3,3e-4' -> (0.001, 0.0003); None stays None; errors name the option."""
    if value is None:
        return None
    out = []
    for item in value.split(","):
        if not item.strip():
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise SaltCacheError(f"{option}: expected comma-separated numbers, got {item!r}") from None
    if not out:
        raise SaltCacheError(f"{option}: expected at least one number")
    return tuple(out)


def _probe_config(**given) -> ProbeConfig:
    """A ProbeConfig from the probe flags that were given (None: the config's default)."""
    given["lrs"], given["wds"] = parse_floats(given.get("lrs"), "--lrs"), parse_floats(given.get("wds"), "--wds")
    return ProbeConfig(**{k: v for k, v in given.items() if v is not None})


PROBE = ProbeConfig()  # the defaults the probe flags show


@app.command()
@user_errors
def probe(
    encoder: Path = typer.Option(..., help="Encoder checkpoint to evaluate (a teacher.pt, a student's encoder, init-model output)."),
    train: list[str] = typer.Option(..., help="Labelled train shards: a folder, a brace pattern or a comma list (repeatable)."),
    val: list[str] = typer.Option(..., help="Labelled validation shards (repeatable)."),
    spec: Optional[str] = typer.Option(None, help="Cache spec for the probe's clips (YAML file or a bundled name: salt-cache specs); default: the encoder's training clip from its checkpoint (frames, step or fps, size, mean/std), centre crop, 1 view."),
    epochs: int = typer.Option(PROBE.epochs, help="Probe epochs over the cached features."),
    batch_size: int = typer.Option(PROBE.batch_size, help="Probe batch size."),
    lrs: Optional[str] = typer.Option(None, help=f"Learning rates, comma-separated (default {','.join(f'{v:g}' for v in PROBE.lrs)}; the paper's: 5e-3,3e-3,1e-3,3e-4,1e-4)."),
    wds: Optional[str] = typer.Option(None, help=f"Weight decays, comma-separated; one head per (lr, wd) (default {','.join(f'{v:g}' for v in PROBE.wds)}; the paper's: 0.8,0.4,0.1,0.01)."),
    depth: int = typer.Option(PROBE.depth, help="Probe blocks: 1 = one cross-attention pooler; 4 = V-JEPA 2 (3 self-attention + 1 cross-attention)."),
    device: str = typer.Option(PROBE.device, help="cpu, cuda or cuda:N (encoding and probe training)."),
    workdir: Optional[Path] = typer.Option(None, help="Folder for the feature caches, reused by later runs (default: a temporary folder)."),
    out: Optional[Path] = typer.Option(None, help="Write the report as JSON: a .json file, or a folder (gets probe.json)."),
    encode_batch_size: int = typer.Option(PROBE.encode_batch_size, help="Clips per encoder forward while caching features."),
    workers: int = typer.Option(PROBE.workers, help="DataLoader processes decoding clips (0: decode in the main process)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the report as JSON on stdout."),
):
    """Frozen evaluation: an attentive probe on the encoder's cached tokens.

    The encoder runs once per clip and view (features are cached) on clips of its own training
    geometry unless --spec says otherwise; several (lr, wd) heads train side by side and the best
    head on val (as V-JEPA 2) is reported with its standard error, per-class accuracy and the
    features' RankMe / effective rank."""
    import json

    from salt_cache.eval.probe import probe_encoder
    from salt_cache.eval.tables import print_report

    config = _probe_config(spec=spec, epochs=epochs, batch_size=batch_size, lrs=lrs, wds=wds, depth=depth,
                           device=device, encode_batch_size=encode_batch_size, workers=workers)
    with progress("items") as bar:
        report = probe_encoder(encoder, train, val, config, workdir=workdir, out=out, progress=bar)
    print_report(report)
    if out is not None:
        console.print(f"report: {out}")
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))


@app.command("train-teacher")
@user_errors
def train_teacher(
    out: Path = typer.Option(..., help="Run folder: config.yaml, log.csv, val.csv, checkpoints/, pictures/, teacher.pt."),
    data: Optional[list[str]] = typer.Option(None, help="Training shards: a folder, a brace pattern or a comma list (repeatable)."),
    val: Optional[list[str]] = typer.Option(None, help="Held-out shards for the validation loss and the pictures (repeatable)."),
    config: Optional[Path] = typer.Option(None, help="Run config YAML (sections: model, clip, masks, optim, data, decoder, ...)."),
    model: Optional[str] = typer.Option(None, help="Encoder size: micro, tiny, small, base, large, huge, giant."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in all."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (split over processes and grad_accum)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)."),
    workers: Optional[int] = typer.Option(None, help="DataLoader processes decoding clips, per process."),
    seed: Optional[int] = typer.Option(None, help="Seed of the model init, views, masks and data order."),
    resume: bool = typer.Option(False, help="Continue the run in OUT from checkpoints/last.pt (its config.yaml unless --config)."),
    stop_at: Optional[int] = typer.Option(None, help="End this session after this step, with a checkpoint (resume later)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any config field, e.g. optim.lr=1e-3 (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the summary as JSON on stdout."),
):
    """Stage 1 (V-Pixel): train a video ViT teacher by pixel reconstruction under multi-block
    masks; writes OUT/teacher.pt. Under [bold]torchrun[/], trains with DDP."""
    from salt_cache.train import teacher as stage

    flags = {"data.train": _shard_flag(data), "data.val": _shard_flag(val), "model.name": model, "steps": steps,
             "batch_size": batch_size, "device": device, "workers": workers, "seed": seed}
    _run_training(stage, stage.TeacherConfig, out, config, resume, stop_at, flags, set_, json_out)


def _shard_flag(values):
    return None if not values else (values[0] if len(values) == 1 else list(values))


def _run_training(stage, config_cls, out, config, resume, stop_at, flags, sets, json_out) -> None:
    """What train-teacher and train-student share: resolve the config, train, print on rank 0."""
    import json

    from salt_cache.train.runs import resolve_config

    cfg = resolve_config(config_cls, out, config, resume, flags=flags, sets=sets or [])
    summary = stage.train(cfg, out, resume=resume, stop_at=stop_at)
    if summary.get("rank", 0) != 0:
        return
    stage.print_summary(summary)
    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("train-student")
@user_errors
def train_student(
    out: Path = typer.Option(..., help="Run folder: config.yaml, log.csv, val.csv, checkpoints/, student.pt."),
    cache: Optional[Path] = typer.Option(None, help="Teacher-latent cache built by `salt-cache build`."),
    data: Optional[list[str]] = typer.Option(None, help="Training shards (their clips must be in the cache; repeatable)."),
    val: Optional[list[str]] = typer.Option(None, help="Held-out shards for the validation distillation loss (repeatable)."),
    online_teacher: Optional[Path] = typer.Option(None, help="Compute targets with this teacher instead of reading them (baseline / oracle)."),
    ema: bool = typer.Option(False, "--ema", help="The V-JEPA baseline: no teacher, no cache; targets from an EMA of the student (config section ema: momentum). Writes student.pt (the EMA target encoder) and online.pt."),
    config: Optional[Path] = typer.Option(None, help="Run config YAML (sections: model, clip, masks, optim, data, predictor, ...)."),
    model: Optional[str] = typer.Option(None, help="Student size: micro, tiny, small, base, large, huge, giant."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in all."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (split over processes and grad_accum)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)."),
    workers: Optional[int] = typer.Option(None, help="DataLoader processes decoding clips, per process."),
    seed: Optional[int] = typer.Option(None, help="Seed of the model init, view picks, masks and data order."),
    resume: bool = typer.Option(False, help="Continue the run in OUT from checkpoints/last.pt (its config.yaml unless --config)."),
    stop_at: Optional[int] = typer.Option(None, help="End this session after this step, with a checkpoint (resume later)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any config field, e.g. predictor.depth=6 (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Also print the summary as JSON on stdout."),
):
    """Stage 2 (SALT): train a student and predictor on the cached teacher latents, streaming the
    videos alongside the cache; writes OUT/student.pt. With --ema, the V-JEPA baseline in the
    same trainer. Under [bold]torchrun[/], trains with DDP."""
    from salt_cache.train import student as stage

    flags = {"cache": cache, "online_teacher": online_teacher, "ema.enabled": True if ema else None,
             "data.train": _shard_flag(data),
             "data.val": _shard_flag(val), "model.name": model, "steps": steps, "batch_size": batch_size,
             "device": device, "workers": workers, "seed": seed}
    _run_training(stage, stage.StudentConfig, out, config, resume, stop_at, flags, set_, json_out)


@app.command("run")
@user_errors
def run_recipe(
    file: str = typer.Argument(..., help="A pipeline YAML (see pipelines/), or the name of a bundled one."),
    workdir: Optional[Path] = typer.Option(None, help="Where the stages write (default: the file's workdir)."),
    var: Optional[list[str]] = typer.Option(None, help="Set a ${name} of the pipeline: name=value (repeatable)."),
    only: Optional[list[str]] = typer.Option(None, help="Run only these stages (repeatable)."),
):
    """Run an end-to-end recipe, skipping every stage whose output is already complete."""
    from salt_cache.pipeline import run_pipeline

    variables = {}
    for item in var or []:
        if "=" not in item:
            raise SaltCacheError(f"--var {item!r}: expected name=value")
        k, v = item.split("=", 1)
        variables[k] = v
    run_pipeline(file, workdir=workdir, variables=variables, only=only)


@app.command()
@user_errors
def quickstart(
    workdir: Path = typer.Option(Path("quickstart"), help="Where the demo data, runs, cache and report go."),
):
    """The whole method on the embedded demo data, no input needed: demo data, Stage 1 teacher,
    cache build, verify, Stage 2 student, probe of teacher and student, report (~10 min on 2 CPU cores)."""
    from salt_cache.pipeline import run_pipeline

    run_pipeline("quickstart", workdir=workdir)


@app.command("select")
@user_errors
def select(
    run: Path = typer.Option(..., help="A Stage 2 run folder (log.csv, checkpoints/step-*.pt)."),
    train: list[str] = typer.Option(..., help="Labelled shards to train the probes on (repeatable)."),
    val: list[str] = typer.Option(..., help="Labelled shards to measure top-1 on (repeatable)."),
    out: Optional[Path] = typer.Option(None, help="Folder for selection.json and selection.png (default: RUN/selection)."),
    steps: Optional[list[int]] = typer.Option(None, help="Only these checkpoint steps (repeatable; default all)."),
    epochs: int = typer.Option(PROBE.epochs, help="Probe epochs."),
    device: str = typer.Option(PROBE.device, help="Device for encoding and probing."),
    workers: int = typer.Option(PROBE.workers, help="DataLoader workers decoding clips."),
):
    """Model selection: probe every saved checkpoint of a Stage 2 run and report the student's
    training loss against probe accuracy, with the R^2 of a linear fit (the paper's Figure 3)."""
    from salt_cache.eval.selection import select_checkpoints
    from salt_cache.eval.tables import print_selection

    config = _probe_config(epochs=epochs, device=device, workers=workers)
    with progress("it") as bar:
        result = select_checkpoints(run, list(train), list(val), config, out=out or run / "selection", steps=steps,
                                    progress=bar)
    print_selection(result)
