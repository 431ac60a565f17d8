"""End-to-end recipes: a YAML list of stages run in order, each skipped when its output is
already complete, so a re-run after a crash (or with more stages added) continues where it was.

    name: quickstart
    vars: {data: data}                       # ${data} in any string below; --var data=... overrides
    stages:
      - {name: data,    kind: demo-data,     out: data, clips: 320}
      - {name: teacher, kind: train-teacher, out: teacher, train: data/train, val: data/val, config: {...}}
      - {name: cache,   kind: build,         teacher: teacher/teacher.pt, data: [data/train, data/val], spec: demo, out: cache}
      - ...

A stage's fields are those of its kind's typed config, the same dataclass the matching command
builds from its flags (DemoConfig, BuildConfig, VerifyConfig, ProbeConfig, ...; a training stage
holds the run config the train commands build), so a recipe takes every option the command
takes, with the same defaults, checked the same way: a mistake names the stage and the field.
Path fields are taken from the work dir. Whether a stage is complete is asked of the module that
owns its output (the cache's manifest, the run folder, the shard index, ...). A training stage
whose run folder holds a checkpoint but no exported encoder resumes it. Wall times and results
go to WORKDIR/pipeline.json.

`foreach` blocks repeat their stages for every combination of some variables, e.g. the seeds and
tasks of a study (`expand_foreach`).

A new stage kind is one `Kind` in KINDS: its config class, how it runs, how to tell it is done.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from salt_cache import config as cfgio
from salt_cache.cache import BuildConfig, VerifyConfig
from salt_cache.checkpoint import InitConfig
from salt_cache.config import path_field, resolve_paths
from salt_cache.console import console, progress, write_json
from salt_cache.demo import DemoConfig
from salt_cache.errors import SaltCacheError
from salt_cache.eval.config import ProbeConfig
from salt_cache.report import ReportConfig
from salt_cache.resources import bundled
from salt_cache.shards.pack import ShardsConfig
from salt_cache.study import StudyConfig


@dataclass
class StageSpec:
    name: str
    kind: str
    args: dict = field(default_factory=dict)
    config: Any = None  # the kind's config, paths as written (relative to the work dir)


@dataclass
class Pipeline:
    name: str
    stages: list[StageSpec]
    workdir: str = "."
    source: str = ""


def resolve_pipeline_path(path_or_name: str | Path) -> Path:
    """A recipe file, or the name of a bundled one (`salt-cache run quickstart`)."""
    return bundled("pipelines", path_or_name, what="pipeline")


def load_pipeline(path_or_name: str | Path, variables: dict[str, str] | None = None) -> Pipeline:
    """Read and check a pipeline YAML: every stage has a known kind and a unique name, and its
    fields make a valid config of that kind; ${vars} are substituted (the file's `vars`,
    overridden by `variables`)."""
    path = resolve_pipeline_path(path_or_name)
    data = cfgio.load_yaml(path)
    unknown = sorted(set(data) - {"name", "vars", "workdir", "stages"})
    if unknown:
        raise SaltCacheError(f"{path}: {unknown[0]}: unknown field (expected name, vars, workdir, stages)")
    values = {str(k): str(v) for k, v in (data.get("vars") or {}).items()}
    values.update(variables or {})
    data = {**data, "stages": expand_foreach(data.get("stages") or [], path)}
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
        if any(s.name == name for s in stages):
            raise SaltCacheError(f"{path}: stages[{i}]: a stage named {name!r} comes twice")
        config = cfgio.from_dict(KINDS[kind].config, args, source=f"{path}: stages[{i}] ({name})")
        stages.append(StageSpec(name, kind, args, config))
    if not stages:
        raise SaltCacheError(f"{path}: stages: expected at least one stage")
    return Pipeline(name=str(data.get("name", path.stem)), stages=stages, workdir=str(data.get("workdir", ".")),
                    source=str(path))


def expand_foreach(items: list, path: Path, where: str = "stages") -> list:
    """Unroll `foreach` blocks into plain stages, in order:

        - foreach: {task: [shapes, time], seed: [0, 1, 2]}   # every combination, first name outermost
          stages: [{name: "teacher-${task}-s${seed}", ...}, ...]

    A block's variables are substituted into its stages (blocks nest; an inner block sees the
    outer variables); `vars` and --var values are substituted afterwards, as everywhere."""
    import itertools

    out = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not (isinstance(item, dict) and "foreach" in item):
            out.append(item)
            continue
        loops, body = item.get("foreach"), item.get("stages")
        extra = sorted(set(item) - {"foreach", "stages"})
        if extra:
            raise SaltCacheError(f"{path}: {here}: {extra[0]}: unknown field (a foreach block takes foreach, stages)")
        if not isinstance(loops, dict) or not loops or not all(isinstance(v, list) and v for v in loops.values()):
            raise SaltCacheError(f"{path}: {here}.foreach: expected a mapping of names to non-empty lists, "
                                 f"e.g. {{seed: [0, 1, 2]}}")
        if not isinstance(body, list) or not body:
            raise SaltCacheError(f"{path}: {here}.stages: expected a non-empty list of stages")
        names = [str(k) for k in loops]
        for combo in itertools.product(*loops.values()):
            bound = {n: str(v) for n, v in zip(names, combo)}
            out.extend(expand_foreach(_substitute(body, bound, path, strict=False), path, f"{here}.stages"))
    return out


def _substitute(obj, values: dict[str, str], path: Path, strict: bool = True):
    """Replace ${name} by its value. strict: an unknown name is an error (vars and --var, the last
    pass); else it is left for a later pass (a foreach block's own variables, the first)."""
    if isinstance(obj, str):
        whole = re.fullmatch(r"\$\{(\w+)\}", obj)
        if whole and whole.group(1) in values:  # a value standing alone keeps its YAML type (steps: ${steps})
            import yaml

            return yaml.safe_load(values[whole.group(1)])

        def repl(m):
            if m.group(1) in values:
                return values[m.group(1)]
            if strict:
                raise SaltCacheError(f"{path}: ${{{m.group(1)}}} is not set (add it under vars or pass --var {m.group(1)}=...)")
            return m.group(0)
        return re.sub(r"\$\{(\w+)\}", repl, obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, values, path, strict) for k, v in obj.items() if k != "vars"}
    if isinstance(obj, list):
        return [_substitute(v, values, path, strict) for v in obj]
    return obj


# ---------------------------------------------------------------- stage kinds

@dataclass
class Ctx:
    """What a stage sees besides its config: the work dir, its name and earlier stages' results."""

    workdir: Path
    results: dict
    name: str = ""

    def path(self, value) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.workdir / p


@dataclass(frozen=True)
class TrainStage:
    """A training stage: its run folder, shards, and the run config (a mapping, or a YAML file
    under the work dir) with `set` overrides, merged exactly as the train commands merge them."""

    out: Path = path_field()
    train: str | list[str] = path_field()
    val: str | list[str] | None = path_field(default=None)
    config: dict[str, Any] | str = field(default_factory=dict)
    set: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StudentStage(TrainStage):
    """Stage 2 on a cache (`cache`), or with `ema: true` and no cache the V-JEPA baseline."""

    cache: Path | None = path_field(default=None)
    ema: bool = False


@dataclass(frozen=True)
class VerifyStage(VerifyConfig):
    """verify, with its report kept in the work dir (a stage is done when its report says ok)."""

    out: Path | None = path_field(default=Path("verify.json"))


@dataclass(frozen=True, kw_only=True)
class ProbeStage(ProbeConfig):
    """probe: an encoder, labelled shards and the report file, plus every ProbeConfig field;
    `class_names`: a file of class names, one per line (optional)."""

    encoder: Path = path_field()
    train: str | list[str] = path_field()
    val: str | list[str] = path_field()
    out: Path = path_field()
    class_names: Path | None = path_field(default=None)


def _demo(c: DemoConfig, ctx: Ctx) -> dict:
    from salt_cache.demo import make_demo_data

    with progress("clips") as bar:  # an unfinished stage's leftovers are replaced
        return make_demo_data(replace(c, overwrite=True), bar)


def _demo_done(c: DemoConfig) -> bool:
    from salt_cache.demo import is_complete

    return is_complete(c.out)


def _init(c: InitConfig, ctx: Ctx) -> dict:
    """A randomly initialized encoder: the untrained baseline the probes are read against (give
    it frames, frame_step and size so it is probed on the trained encoders' clip geometry)."""
    from salt_cache.checkpoint import init_encoder

    try:
        init_encoder(c)
    except SaltCacheError as e:
        raise SaltCacheError(f"stage {ctx.name!r}: {e}") from None
    return {"model": c.model}


def _shards(c: ShardsConfig, ctx: Ctx) -> dict:
    from salt_cache.shards import write_shards

    with progress("files") as bar:
        summary = write_shards(replace(c, overwrite=True), bar)
    return {"packed": summary.packed, "rejected": len(summary.rejected), "shards": len(summary.shards)}


def _shards_done(c: ShardsConfig) -> bool:
    from salt_cache.shards import is_packed

    return is_packed(c.out)


def _run_config(c: TrainStage, ctx: Ctx, cls, flags: dict):
    from salt_cache.train.config import load_run_config

    base = c.config if isinstance(c.config, dict) else cfgio.load_yaml(ctx.path(c.config))
    flags = {"data.train": c.train, "data.val": c.val, **flags}
    return load_run_config(cls, flags=flags, sets=list(c.set), base=base)


def _teacher(c: TrainStage, ctx: Ctx) -> dict:
    from salt_cache.train.runs import RunFolder
    from salt_cache.train.teacher import TeacherConfig, print_summary, train

    summary = train(_run_config(c, ctx, TeacherConfig, {}), c.out, resume=RunFolder(c.out).can_resume())
    print_summary(summary)
    return {k: summary.get(k) for k in ("loss", "val_loss", "end_step", "teacher")}


def _student(c: StudentStage, ctx: Ctx) -> dict:
    from salt_cache.train.runs import RunFolder
    from salt_cache.train.student import StudentConfig, print_summary, train

    if c.ema == (c.cache is not None):
        raise SaltCacheError(f"stage {ctx.name!r}: give cache: CACHE (SALT) or ema: true (the V-JEPA baseline), "
                             "exactly one")
    flags = {"ema.enabled": True} if c.ema else {"cache": str(c.cache)}
    summary = train(_run_config(c, ctx, StudentConfig, flags), c.out, resume=RunFolder(c.out).can_resume())
    print_summary(summary)
    return {k: summary.get(k) for k in ("mode", "loss", "val_loss", "end_step", "student", "online", "data_wait_frac")}


def _teacher_done(c: TrainStage) -> bool:
    from salt_cache.train import teacher
    from salt_cache.train.runs import RunFolder

    return RunFolder(c.out).finished(teacher.EXPORT)


def _student_done(c: StudentStage) -> bool:
    from salt_cache.train import student
    from salt_cache.train.runs import RunFolder

    return RunFolder(c.out).finished(student.EXPORT)


def _build(c: BuildConfig, ctx: Ctx) -> dict:
    from salt_cache.cache import build_cache
    from salt_cache.cache.tables import build_tables

    with progress("clips") as bar:
        summary = build_cache(c, bar)
    for table in build_tables(summary):
        console.print(table)
    return {k: summary.to_dict()[k] for k in ("clips", "rows", "failed", "bytes", "bytes_per_row", "fp32_bytes_per_row")}


def _build_done(c: BuildConfig) -> bool:
    from salt_cache.cache import is_complete

    return is_complete(c.out)


def _verify(c: VerifyStage, ctx: Ctx) -> dict:
    from salt_cache.cache import run_verify

    with progress("rows") as bar:
        report = run_verify(c, bar)
    if not report.ok:
        raise SaltCacheError(f"stage {ctx.name!r}: the cache fails verification: {report.problems[0].line()}"
                             f" ({len(report.problems)} problem(s); see {c.out})")
    return {"ok": True, "problems": 0}


def _verify_done(c: VerifyStage) -> bool:
    from salt_cache.cache.verify import report_passed

    return report_passed(c.out)


def _probe(c: ProbeStage, ctx: Ctx) -> dict:
    from salt_cache.eval.probe import probe_encoder
    from salt_cache.eval.tables import print_report

    names = c.class_names.read_text().split() if c.class_names and c.class_names.is_file() else None
    with progress("it") as bar:
        report = probe_encoder(c.encoder, c.train, c.val, cfgio.fields_of(c, ProbeConfig), out=c.out,
                               class_names=names, progress=bar)
    print_report(report)
    return {"top1": report.top1, "chance": report.chance}


def _probe_done(c: ProbeStage) -> bool:
    from salt_cache.eval.probe import report_path

    return report_path(c.out).is_file()


def _report(c: ReportConfig, ctx: Ctx) -> dict:
    from salt_cache.report import quickstart_report

    return quickstart_report(ctx.workdir, c, ctx.results)


def _study(c: StudyConfig, ctx: Ctx) -> dict:
    from salt_cache.study import study_report

    summary = study_report(ctx.workdir, c)
    return {task: {arm: round(a["mean"], 4) for arm, a in t["arms"].items()} for task, t in summary["tasks"].items()}


@dataclass(frozen=True)
class Kind:
    """A stage kind: its typed config (a stage's YAML fields), how it runs, and how to tell its
    output is complete (None: it always runs)."""

    config: type
    run: Callable[[Any, Ctx], dict]
    done: Callable[[Any], bool] | None = None


KINDS: dict[str, Kind] = {
    "demo-data": Kind(DemoConfig, _demo, _demo_done),
    "init-model": Kind(InitConfig, _init, lambda c: Path(c.out).is_file()),
    "shards": Kind(ShardsConfig, _shards, _shards_done),
    "train-teacher": Kind(TrainStage, _teacher, _teacher_done),
    "build": Kind(BuildConfig, _build, _build_done),
    "verify": Kind(VerifyStage, _verify, _verify_done),
    "train-student": Kind(StudentStage, _student, _student_done),
    "probe": Kind(ProbeStage, _probe, _probe_done),
    "report": Kind(ReportConfig, _report, None),
    "study-report": Kind(StudyConfig, _study, None),
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
        config = resolve_paths(stage.config, wd)
        ctx.name = stage.name
        if done is not None and done(config):
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
            result = run(config, ctx)
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
