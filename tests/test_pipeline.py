"""`salt-cache run`: a tiny end-to-end recipe through every stage kind on demo data, a re-run that
skips every complete stage, and recipe errors that name the field."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from salt_cache.cli import app
from salt_cache.errors import SaltCacheError
from salt_cache.pipeline import load_pipeline

runner = CliRunner()

TINY = """
name: tiny
vars: {steps: "4"}
stages:
  - {name: data, kind: demo-data, out: data, clips: 32, size: 32, frames: 8, shard_size: 4}
  - name: teacher
    kind: train-teacher
    out: teacher
    train: data/train
    val: data/val
    config:
      model: {name: micro, patch_size: 8, tubelet_size: 2}
      clip: {frames: 4, frame_step: 2, size: 32}
      decoder: {embed_dim: 32, depth: 1, num_heads: 2}
      steps: ${steps}
      batch_size: 4
      workers: 1
      device: cpu
      log_every: 1
      val_every: 2
      ckpt_every: 2
      val_batches: 1
      data: {val_batch_size: 4}
  - {name: spec, kind: build, teacher: teacher/teacher.pt, data: [data/train, data/val], spec: SPEC, out: cache, workers: 1}
  - {name: verify, kind: verify, cache: cache, data: [data/train, data/val], teacher: teacher/teacher.pt, sample: 2}
  - name: student
    kind: train-student
    out: student
    cache: cache
    train: data/train
    val: data/val
    config:
      model: {name: micro, patch_size: 8, tubelet_size: 2}
      clip: {frames: 4, frame_step: 2, size: 32}
      predictor: {embed_dim: 32, depth: 1, num_heads: 2}
      steps: 4
      batch_size: 4
      workers: 1
      device: cpu
      log_every: 1
      val_every: 2
      ckpt_every: 2
      val_batches: 1
      data: {val_batch_size: 4}
  - {name: baseline, kind: init-model, out: base.pt, model: micro, patch_size: 8, frames: 4, frame_step: 2, size: 32}
  - {name: probe-baseline, kind: probe, encoder: base.pt, train: data/train, val: data/val, out: pb.json, epochs: 1, workers: 1}
  - {name: probe-teacher, kind: probe, encoder: teacher/teacher.pt, train: data/train, val: data/val, out: pt.json, epochs: 2, workers: 1, class_names: data/classes.txt}
  - {name: probe-student, kind: probe, encoder: student/student.pt, train: data/train, val: data/val, out: ps.json, epochs: 2, workers: 1}
  - {name: report, kind: report, teacher_run: teacher, student_run: student, teacher_probe: pt.json, student_probe: ps.json, baseline_probe: pb.json, out: report}
"""

SPEC = """name: tiny32
clip: {frames: 4, frame_step: 2, size: 32, crop: random-resized, scale: [0.5, 1.0], ratio: [0.75, 1.35]}
views: 2
patch_size: 8
tubelet_size: 2
storage: {dtype: float16, rows_per_shard: 4}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipe_runs_end_to_end_then_skips_complete_stages(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("SPEC", str(tmp_path / "spec.yaml")))
    wd = tmp_path / "work"
    res = runner.invoke(app, ["run", str(recipe), "--workdir", str(wd)])
    assert res.exit_code == 0, res.output
    record = json.loads((wd / "pipeline.json").read_text())["stages"]
    assert all(r["status"] == "done" for r in record.values()), record
    assert (wd / "teacher" / "teacher.pt").is_file() and (wd / "student" / "student.pt").is_file()
    assert json.loads((wd / "verify.json").read_text())["ok"] is True
    report = json.loads((wd / "report" / "report.json").read_text())
    assert 0 <= report["teacher_top1"] <= 1 and 0 <= report["baseline_top1"] <= 1 and report["chance"] == 0.25
    assert report["task"] == "demo task (direction of time)" and "probe on demo task (direction of time)" in res.output
    # every encoder, the untrained baseline included, was probed on the same (training) clip geometry
    specs = [json.loads((wd / f).read_text())["spec"] for f in ("pb.json", "pt.json", "ps.json")]
    assert specs[0] == specs[1] == specs[2] and specs[0]["clip"]["frames"] == 4 and specs[0]["clip"]["crop"] == "center"
    assert set(report["wall_s"]) == {"data", "teacher", "spec", "verify", "student", "baseline", "probe-baseline",
                                     "probe-teacher", "probe-student"}
    for png in ("losses.png", "probes.png"):
        assert (wd / "report" / png).stat().st_size > 10_000
    assert json.loads((wd / "pt.json").read_text())["best"]["per_class"].keys() == {"move-right", "move-left", "grow", "shrink"}
    # a second run redoes nothing but the report
    teacher_mtime = (wd / "teacher" / "teacher.pt").stat().st_mtime_ns
    res = runner.invoke(app, ["run", str(recipe), "--workdir", str(wd)])
    assert res.exit_code == 0, res.output
    assert res.output.count("complete, skipped") == 9
    assert (wd / "teacher" / "teacher.pt").stat().st_mtime_ns == teacher_mtime
    record = json.loads((wd / "pipeline.json").read_text())["stages"]
    assert record["teacher"]["wall_s"] > 0 and record["teacher"]["status"] == "skipped (complete)"


def test_recipe_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {kind: bake, out: x}\n")
    with pytest.raises(SaltCacheError, match=r"stages\[0\] \(bake\): unknown kind 'bake'"):
        load_pipeline(bad)
    bad.write_text("stages:\n  - {kind: demo-data, out: '${where}'}\n")
    with pytest.raises(SaltCacheError, match=r"\$\{where\} is not set"):
        load_pipeline(bad)
    assert load_pipeline(bad, {"where": "d"}).stages[0].args["out"] == "d"
    bad.write_text("stages:\n  - {kind: build, teacher: t.pt, spec: demo, out: c}\n")
    with pytest.raises(SaltCacheError, match=r"stages\[0\] \(build\): data: required field is missing"):
        load_pipeline(bad)
    bad.write_text("stages:\n  - {kind: probe, encoder: e.pt, train: a, val: b, out: o.json, epoch: 40}\n")
    with pytest.raises(SaltCacheError, match=r"stages\[0\] \(probe\): epoch: unknown field"):
        load_pipeline(bad)
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 1 and "no such pipeline file" in res.output and "quickstart" in res.output
    for name in ("quickstart", "vitl-paper"):
        assert load_pipeline(name).stages


EMA = """
name: ema
stages:
  - name: vjepa
    kind: train-student
    out: vjepa
    ema: true
    train: DATA/train
    val: DATA/val
    config:
      model: {name: micro, patch_size: 8, tubelet_size: 2}
      clip: {frames: 4, frame_step: 2, size: 32}
      predictor: {embed_dim: 32, depth: 1, num_heads: 2}
      ema: {momentum: [0.99, 1.0]}
      steps: 2
      batch_size: 4
      workers: 1
      device: cpu
      val_batches: 1
      data: {val_batch_size: 4}
"""


def test_recipe_trains_the_ema_baseline_without_a_cache(demo, tmp_path):
    recipe = tmp_path / "ema.yaml"
    recipe.write_text(EMA.replace("DATA", str(demo)))
    res = runner.invoke(app, ["run", str(recipe), "--workdir", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "work" / "pipeline.json").read_text())["stages"]["vjepa"]["result"]
    assert result["mode"] == "ema" and result["online"].endswith("online.pt") and result["student"].endswith("student.pt")
    assert yaml_config(tmp_path / "work" / "vjepa")["ema"] == {"enabled": True, "momentum": [0.99, 1.0]}
    for bad in (EMA.replace("    ema: true\n", ""), EMA.replace("    ema: true\n", "    ema: true\n    cache: c\n")):
        recipe.write_text(bad.replace("DATA", str(demo)))
        res = runner.invoke(app, ["run", str(recipe), "--workdir", str(tmp_path / "bad")])
        assert res.exit_code == 1 and "give cache: CACHE (SALT) or ema: true (the V-JEPA baseline), exactly one" in res.output


def yaml_config(run) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())
