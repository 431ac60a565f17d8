"""End-to-end recipes: a YAML list of stages run in order, each skipped when its output is
already complete, so a re-run after a crash (or with more stages added) continues where it was.

    name: quickstart
    vars: {data: data}                       # ${data} in any string below; --var data=... overrides
    stages:
      - {name: data,    kind: demo-data,     out: data, clips: 320}
      - {name: teacher, kind: train-teacher, out: teacher, train: data/train, val: data/val, config: {...}}
      - {name: cache,   kind: build,         teacher: teacher/teacher.pt, data: [data/train, data/val], spec: demo, out: cache}
      - ...

Relative paths are taken from the work dir. A training stage whose run folder holds a
checkpoint but no exported encoder resumes it. Wall times and results go to WORKDIR/pipeline.json.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from salt_cache import config as cfgio
from salt_cache.console import console, progress, write_json
from salt_cache.errors import SaltCacheError

PIPELINES_DIR = Path(__file__).resolve().parents[1] / "pipelines"


@dataclass
class StageSpec:
    name: str
    kind: str
    args: dict = field(default_factory=dict)


@dataclass
class Pipeline:
    name: str
    stages: list[StageSpec]
    workdir: str = "."
    source: str = ""


def resolve_pipeline_path(path_or_name: str | Path) -> Path:
    p = Path(path_or_name)
    if p.is_file():
        return p
    bundled = PIPELINES_DIR / f"{path_or_name}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(q.stem for q in PIPELINES_DIR.glob("*.yaml")))
    raise SaltCacheError(f"{path_or_name}: no such pipeline file (bundled: {names})")


def load_pipeline(path_or_name: str | Path, variables: dict[str, str] | None = None) -> Pipeline:
    """Read and check a pipeline YAML: every stage has a known kind and a unique name; ${vars}
    are substituted (the file's `vars`, overridden by `variables`)."""
    path = resolve_pipeline_path(path_or_name)
    data = cfgio.load_yaml(path)
    unknown = sorted(set(data) - {"name", "vars", "workdir", "stages"})
    if unknown:
        raise SaltCacheError(f"{path}: {unknown[0]}: unknown field (expected name, vars, workdir, stages)")
    values = {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
    values.update(variables or {})
    data = _substitute(data, values, path)
    stages = []
    for i, raw in enumerate(data.get("stages") or []):
        if not isinstance(raw, dict) or "kind" not in raw:
            raise SaltCacheError(f"{path}: stages[{i}]: expected a mapping with a 'kind'")
        args = dict(raw)
        kind = args.pop("kind")
        name = str(args.pop("name", kind))
        if kind not in KINDS:
            raise SaltCacheError(f"{path}: stages[{i}] ({name}): unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        spec = KINDS[kind]
        missing = [f for f in spec.required if f not in args]
        if missing:
            raise SaltCacheError(f"{path}: stages[{i}] ({name}): missing field {missing[0]!r} "
                                 f"(a {kind} stage needs {', '.join(spec.required)})")
        unknown = sorted(set(args) - set(spec.required) - set(spec.optional))
        if unknown:
            raise SaltCacheError(f"{path}: stages[{i}] ({name}): {unknown[0]}: unknown field (a {kind} stage takes "
                                 f"{', '.join(spec.required + spec.optional)})")
        if any(s.name == name for s in stages):
            raise SaltCacheError(f"{path}: stages[{i}]: a stage named {name!r} comes twice")
        stages.append(StageSpec(name, kind, args))
    if not stages:
        raise SaltCacheError(f"{path}: stages: expected at least one stage")
    return Pipeline(name=str(data.get("name", path.stem)), stages=stages, workdir=str(data.get("workdir", ".")),
                    source=str(path))


def _substitute(obj, values: dict[str, str], path: Path):
    if isinstance(obj, str):
        whole = re.fullmatch(r"\$\{(\w+)\}", obj)
        if whole and whole.group(1) in values:  # a value standing alone keeps its YAML type (steps: ${steps})
            import yaml

            return yaml.safe_load(values[whole.group(1)])

        def repl(m):
            if m.group(1) not in values:
                raise SaltCacheError(f"{path}: ${{{m.group(1)}}} is not set (add it under vars or pass --var {m.group(1)}=...)")
            return values[m.group(1)]
        return re.sub(r"\$\{(\w+)\}", repl, obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, values, path) for k, v in obj.items() if k != "vars"}
    if isinstance(obj, list):
        return [_substitute(v, values, path) for v in obj]
    return obj


# ---------------------------------------------------------------- stage kinds

class Ctx:
    """What a stage sees: its args with paths resolved against the work dir, and the results of
    earlier stages."""

    def __init__(self, workdir: Path, results: dict):
        self.workdir, self.results = workdir, results

    def path(self, value) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.workdir / p

    def paths(self, value) -> list[str]:
        items = value if isinstance(value, list) else [value]
        return [str(self.path(v)) for v in items]




def _demo_done(s: StageSpec, c: Ctx) -> bool:
    out = c.path(s.args["out"])
    return (out / "train" / "index.json").is_file() and (out / "val" / "index.json").is_file()


def _demo_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.demo import make_demo_data

    args = {k: v for k, v in s.args.items() if k != "out"}
    with progress("clips") as bar:
        return make_demo_data(c.path(s.args["out"]), overwrite=True, progress=bar, **args)


def _init_done(s: StageSpec, c: Ctx) -> bool:
    return c.path(s.args["out"]).is_file()


def _init_run(s: StageSpec, c: Ctx) -> dict:
    """A randomly initialized encoder: the untrained baseline the probes are read against (give
    it frames, frame_step and size so it is probed on the trained encoders' clip geometry)."""
    from salt_cache.checkpoint import init_encoder

    a = s.args
    try:
        init_encoder(c.path(a["out"]), a["model"], patch_size=int(a.get("patch_size", 16)),
                     tubelet_size=int(a.get("tubelet_size", 2)), pos_embed=a.get("pos_embed", "rope"),
                     seed=int(a.get("seed", 0)), frames=a.get("frames"), frame_step=a.get("frame_step"),
                     size=a.get("size"))
    except SaltCacheError as e:
        raise SaltCacheError(f"stage {s.name!r}: {e}") from None
    return {"model": a["model"]}


def _shards_done(s: StageSpec, c: Ctx) -> bool:
    return (c.path(s.args["out"]) / "index.json").is_file()


def _shards_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.shards import write_shards

    with progress("files") as bar:
        summary = write_shards(c.path(s.args["src"]), c.path(s.args["out"]), shard_size=int(s.args.get("shard_size", 100)),
                               overwrite=True, workers=int(s.args.get("workers", 2)), progress=bar)
    return {"packed": summary.packed, "rejected": len(summary.rejected), "shards": len(summary.shards)}


def _train_config(s: StageSpec, c: Ctx, cls, extra_flags: dict):
    from salt_cache.train.config import load_run_config

    conf = s.args.get("config") or {}
    if isinstance(conf, str):
        conf = cfgio.load_yaml(c.path(conf))
    flags = {"data.train": c.paths(s.args["train"]),
             "data.val": c.paths(s.args["val"]) if s.args.get("val") else None, **extra_flags}
    return load_run_config(cls, flags=flags, sets=list(s.args.get("set") or []), base=conf)


def _run_finished(export: str) -> Callable:
    def done(s: StageSpec, c: Ctx) -> bool:
        from salt_cache.train.runs import RunFolder

        return RunFolder(c.path(s.args["out"])).finished(export)
    return done


def _teacher_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.train.runs import RunFolder
    from salt_cache.train.teacher import TeacherConfig, print_summary, train

    out = c.path(s.args["out"])
    cfg = _train_config(s, c, TeacherConfig, {})
    summary = train(cfg, out, resume=RunFolder(out).can_resume())
    print_summary(summary)
    return {k: summary.get(k) for k in ("loss", "val_loss", "end_step", "teacher")}


def _student_run(s: StageSpec, c: Ctx) -> dict:
    """Stage 2 on a cache, or with `ema: true` (and no cache) the V-JEPA baseline."""
    from salt_cache.train.runs import RunFolder
    from salt_cache.train.student import StudentConfig, print_summary, train

    out = c.path(s.args["out"])
    ema = bool(s.args.get("ema", False))
    if ema == bool(s.args.get("cache")):
        raise SaltCacheError(f"stage {s.name!r}: give cache: CACHE (SALT) or ema: true (the V-JEPA baseline), "
                             "exactly one")
    flags = {"ema.enabled": True} if ema else {"cache": str(c.path(s.args["cache"]))}
    cfg = _train_config(s, c, StudentConfig, flags)
    summary = train(cfg, out, resume=RunFolder(out).can_resume())
    print_summary(summary)
    return {k: summary.get(k) for k in ("mode", "loss", "val_loss", "end_step", "student", "online", "data_wait_frac")}


def _build_done(s: StageSpec, c: Ctx) -> bool:
    from salt_cache.cache.header import is_complete

    return is_complete(c.path(s.args["out"]))


def _build_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.cache import build_cache
    from salt_cache.cache.tables import build_tables

    with progress("clips") as bar:
        summary = build_cache(c.path(s.args["teacher"]), c.paths(s.args["data"]), s.args["spec"],
                              c.path(s.args["out"]), batch_size=int(s.args.get("batch_size", 8)),
                              workers=int(s.args.get("workers", 2)), device=str(s.args.get("device", "cpu")),
                              progress=bar)
    for table in build_tables(summary):
        console.print(table)
    return {k: summary.to_dict()[k] for k in ("clips", "rows", "failed", "bytes", "bytes_per_row", "fp32_bytes_per_row")}


def _verify_done(s: StageSpec, c: Ctx) -> bool:
    report = c.path(s.args.get("out", "verify.json"))
    return report.is_file() and json.loads(report.read_text()).get("ok") is True


def _verify_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.cache.verify import run_verify

    teacher = c.path(s.args["teacher"]) if s.args.get("teacher") else None
    with progress("rows") as bar:
        report = run_verify(c.path(s.args["cache"]), data=c.paths(s.args["data"]) if s.args.get("data") else None,
                            teacher=teacher, sample=int(s.args.get("sample", 0)), progress=bar)
    doc = report.to_dict()
    write_json(c.path(s.args.get("out", "verify.json")), doc)
    if not report.ok:
        raise SaltCacheError(f"stage {s.name!r}: the cache fails verification: {report.problems[0].line()}"
                             f" ({len(report.problems)} problem(s); see {c.path(s.args.get('out', 'verify.json'))})")
    return {"ok": True, "problems": 0}


def _probe_done(s: StageSpec, c: Ctx) -> bool:
    return c.path(s.args["out"]).is_file()


PROBE_OPTIONS = ("spec", "epochs", "batch_size", "lrs", "wds", "depth", "device", "workers", "encode_batch_size")


def _probe_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.eval.config import ProbeConfig
    from salt_cache.eval.probe import probe_encoder
    from salt_cache.eval.tables import print_report

    config = cfgio.from_dict(ProbeConfig, {k: s.args[k] for k in PROBE_OPTIONS if k in s.args}, source=f"stage {s.name!r}")
    names = None
    if s.args.get("class_names"):
        names_file = c.path(s.args["class_names"])
        names = names_file.read_text().split() if names_file.is_file() else None
    with progress("it") as bar:
        report = probe_encoder(c.path(s.args["encoder"]), c.paths(s.args["train"]), c.paths(s.args["val"]), config,
                               out=c.path(s.args["out"]), class_names=names, progress=bar)
    print_report(report)
    return {"top1": report["top1"], "chance": report["chance"]}


def _report_run(s: StageSpec, c: Ctx) -> dict:
    from salt_cache.report import quickstart_report

    return quickstart_report(c.workdir, s.args, c.results)


@dataclass(frozen=True)
class Kind:
    """A stage kind: how it runs, how to tell its output is complete (None: it always runs),
    and the fields a stage of this kind must and may have."""

    run: Callable
    done: Callable | None
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    "demo-data": Kind(_demo_run, _demo_done, ("out",),
                      ("clips", "size", "frames", "seed", "val_fraction", "shard_size", "workers")),
    "init-model": Kind(_init_run, _init_done, ("out", "model"),
                       ("patch_size", "tubelet_size", "pos_embed", "seed", "frames", "frame_step", "size")),
    "shards": Kind(_shards_run, _shards_done, ("src", "out"), ("shard_size", "workers")),
    "train-teacher": Kind(_teacher_run, _run_finished("teacher"), ("out", "train"), ("val", "config", "set")),
    "build": Kind(_build_run, _build_done, ("teacher", "data", "spec", "out"), ("batch_size", "workers", "device")),
    "verify": Kind(_verify_run, _verify_done, ("cache",), ("data", "teacher", "sample", "out")),
    "train-student": Kind(_student_run, _run_finished("student"), ("out", "train"), ("cache", "ema", "val", "config", "set")),
    "probe": Kind(_probe_run, _probe_done, ("encoder", "train", "val", "out"), PROBE_OPTIONS + ("class_names",)),
    "report": Kind(_report_run, None, ("teacher_run", "student_run", "teacher_probe", "student_probe"),
                   ("baseline_probe", "out")),
}


def run_pipeline(path_or_name: str | Path, workdir: Path | None = None, variables: dict[str, str] | None = None,
                 only: list[str] | None = None) -> dict:
    """Run every stage not yet complete, in order. Returns {stage: {status, wall_s, result}},
    also kept in WORKDIR/pipeline.json (wall times of stages done earlier are kept)."""
    pipe = load_pipeline(path_or_name, variables)
    wd = Path(workdir if workdir is not None else pipe.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    record_path = wd / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    stages_rec: dict[str, Any] = record.get("stages", {})
    if only:
        missing = sorted(set(only) - {s.name for s in pipe.stages})
        if missing:
            raise SaltCacheError(f"--only {missing[0]}: no such stage in {pipe.source}")
    ctx = Ctx(wd, {name: r.get("result") for name, r in stages_rec.items()})
    for i, stage in enumerate(pipe.stages, start=1):
        run, done = KINDS[stage.kind].run, KINDS[stage.kind].done
        head = f"[bold cyan]stage {i}/{len(pipe.stages)}: {stage.name}[/] ({stage.kind})"
        if only and stage.name not in only:
            continue
        if done is not None and done(stage, ctx):
            console.print(f"{head}: complete, skipped")
            stages_rec.setdefault(stage.name, {"kind": stage.kind, "wall_s": None, "result": None})
            stages_rec[stage.name]["status"] = "skipped (complete)"
            continue
        console.rule(head)
        prev = stages_rec.get(stage.name, {})
        # a stage resumed after an interruption adds to the time it had already spent
        spent = prev.get("wall_s") or 0.0 if prev.get("status") == "interrupted" else 0.0
        t0 = time.perf_counter()
        try:
            result = run(stage, ctx)
        except BaseException:
            stages_rec[stage.name] = {"kind": stage.kind, "status": "interrupted",
                                      "wall_s": round(spent + time.perf_counter() - t0, 2), "result": None}
            if _is_main():
                write_json(record_path, {"pipeline": pipe.name, "source": pipe.source, "stages": stages_rec})
            raise
        stages_rec[stage.name] = {"kind": stage.kind, "status": "done",
                                  "wall_s": round(spent + time.perf_counter() - t0, 2), "result": _plain(result)}
        ctx.results[stage.name] = stages_rec[stage.name]["result"]
        if _is_main():
            write_json(record_path, {"pipeline": pipe.name, "source": pipe.source, "stages": stages_rec})
    return stages_rec


def _is_main() -> bool:
    """Under torchrun every rank runs the pipeline (the stages are rank-aware); one writes the record."""
    return os.environ.get("RANK", "0") == "0"


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))
