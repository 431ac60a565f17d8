"""The study: `foreach` blocks in recipes, the bundled cpu-study recipe's wiring, the shape task,
and the study report (mean ± std over seeds, gaps with standard errors) run for real on a tiny
recipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from salt_cache.cli import app
from salt_cache.demo import SHAPES, TASKS, render_shape_clip
from salt_cache.errors import SaltCacheError
from salt_cache.pipeline import load_pipeline
from salt_cache.study import StudyConfig, collect, mean_std_se

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def test_foreach_unrolls_every_combination_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""
vars: {n: "8"}
stages:
  - {name: first, kind: init-model, out: a.pt, model: micro}
  - foreach: {task: [time, shape], seed: [0, 1]}
    stages:
      - {name: "m-${task}-s${seed}", kind: init-model, out: "${task}/${seed}.pt", model: micro, seed: "${seed}",
         patch_size: "${n}"}
      - foreach: {arm: [x, y]}
        stages:
          - {name: "m-${task}-s${seed}-${arm}", kind: init-model, out: "${task}/${arm}${seed}.pt", model: micro}
""")
    stages = load_pipeline(recipe).stages
    assert [s.name for s in stages] == [
        "first",
        "m-time-s0", "m-time-s0-x", "m-time-s0-y", "m-time-s1", "m-time-s1-x", "m-time-s1-y",
        "m-shape-s0", "m-shape-s0-x", "m-shape-s0-y", "m-shape-s1", "m-shape-s1-x", "m-shape-s1-y"]
    # loop values keep their YAML type where a field is exactly one variable; vars apply after
    assert stages[4].config.seed == 1 and stages[4].config.patch_size == 8
    assert str(stages[12].config.out) == "shape/y1.pt"


@pytest.mark.parametrize("block, message", [
    ("{foreach: {seed: []}, stages: [{kind: init-model, out: a, model: micro}]}", r"stages\[0\]\.foreach: expected a mapping"),
    ("{foreach: [0, 1], stages: [{kind: init-model, out: a, model: micro}]}", r"stages\[0\]\.foreach: expected a mapping"),
    ("{foreach: {seed: [0]}}", r"stages\[0\]\.stages: expected a non-empty list"),
    ("{foreach: {seed: [0]}, stages: [{kind: init-model, out: a, model: micro}], seeds: 3}", r"stages\[0\]: seeds: unknown field"),
])
def test_foreach_errors_name_the_block(tmp_path, block, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"stages:\n  - {block}\n")
    with pytest.raises(SaltCacheError, match=message):
        load_pipeline(recipe)


def test_cpu_study_recipe_is_wired_stage_to_stage():
    """Every encoder a probe reads and every teacher a build encodes is written by an earlier stage;
    every arm is probed on every task and seed; the report reads exactly those probes."""
    pipe = load_pipeline("cpu-study")
    report = pipe.stages[-1].config
    assert report.tasks == ["time", "shape"] and report.seeds == [0, 1, 2]
    written: set[str] = set()
    probes = set()
    for s in pipe.stages:
        c = s.config
        if s.kind == "init-model":
            written.add(str(c.out))
        elif s.kind in ("train-teacher", "train-student"):
            written.add(f"{c.out}/{'teacher' if s.kind == 'train-teacher' else 'student'}.pt")
            if s.kind == "train-student" and c.cache is not None:
                assert str(c.cache) in written, s.name
        elif s.kind == "build":
            assert str(c.teacher) in written, s.name
            written.add(str(c.out))
        elif s.kind == "probe":
            assert str(c.encoder) in written, s.name
            probes.add(str(c.out))
    wanted = {report.probe.format(task=t, arm=a, seed=k) for t in report.tasks for a in report.arms for k in report.seeds}
    assert probes == wanted
    # matched compute: the EMA run's steps cover the teacher's and the student's (see the recipe's notes)
    steps = {s.name: s.config.config["steps"] for s in pipe.stages if s.kind.startswith("train-")}
    assert steps["ema-time-s0"] >= max(steps["teacher-time-s0"], steps["student-time-s0"])


def test_shape_task_differs_only_by_shape():
    assert TASKS["shape"][0] == SHAPES
    rng = lambda: np.random.default_rng(5)  # noqa: E731 - the same nuisance draw for every class
    clips = [render_shape_clip(label, rng(), size=32, frames=6) for label in range(len(SHAPES))]
    for c in clips:
        assert c.shape == (6, 32, 32, 3) and c.dtype == np.uint8
    # same background, colour, place and path: the clips differ only where the shapes differ
    for a in range(len(SHAPES)):
        for b in range(a + 1, len(SHAPES)):
            diff = np.abs(clips[a].astype(int) - clips[b].astype(int)).max(-1) > 30
            assert 0.02 < diff.mean() < 0.3, (SHAPES[a], SHAPES[b], diff.mean())
    assert np.array_equal(render_shape_clip(2, rng(), 32, 6), clips[2])


def test_study_numbers_are_mean_std_and_gaps_over_seeds(tmp_path):
    top1 = {"a": [0.5, 0.6, 0.7], "b": [0.40, 0.41, 0.42], "c": [0.39, 0.45, 0.51]}
    for arm, values in top1.items():
        for seed, v in enumerate(values):
            path = tmp_path / "t" / f"{arm}-{seed}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps({"top1": v, "top1_se": 0.02, "chance": 0.25, "task": "T",
                                        "ranks": {"val": {"rankme_token": 10.0 + seed, "rankme_clip": 2.0}}}))
    config = StudyConfig(tasks=["t"], seeds=[0, 1, 2], arms={"a": "A", "b": "B", "c": "C"},
                         probe="{task}/{arm}-{seed}.json", gaps=[["a", "b"], ["b", "c"]])
    s = collect(tmp_path, config)["tasks"]["t"]
    a = s["arms"]["a"]
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(0.1) and a["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert a["rankme_token"] == pytest.approx(11.0) and s["name"] == "T" and s["chance"] == 0.25
    ab, bc = s["gaps"]
    assert ab["diff"] == pytest.approx(0.19) and ab["se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.0001 / 3))
    assert ab["holds"] is True  # 0.19 >= 2 x 0.058
    assert bc["diff"] == pytest.approx(-0.04) and bc["holds"] is False
    assert mean_std_se([0.3]) == (0.3, 0.0, 0.0)
    with pytest.raises(SaltCacheError, match=r"gaps: \['a', 'z'\]: expected two arm keys"):
        StudyConfig(tasks=["t"], seeds=[0], arms={"a": "A"}, probe="x", gaps=[["a", "z"]])
    with pytest.raises(SaltCacheError, match=r"probe: '\{task\}/\{arms\}\.json': expected a template using only"):
        StudyConfig(tasks=["t"], seeds=[0], arms={"a": "A"}, probe="{task}/{arms}.json")
    with pytest.raises(SaltCacheError, match=r"t/a-0\.json: probe report not found"):
        collect(tmp_path / "nowhere", config)


def test_study_recipe_runs_for_real_on_the_shape_task(tmp_path):
    """A tiny study: shape data, two seeds of an untrained encoder and of one with other patching,
    each probed, then the report's table, JSON and pictures."""
    recipe = tmp_path / "study.yaml"
    recipe.write_text("""
name: tiny-study
stages:
  - {name: data, kind: demo-data, task: shape, out: data, clips: 40, val_clips: 16, size: 32, frames: 8, shard_size: 10, workers: 1}
  - foreach: {seed: [0, 1], arm: [p8, p16]}
    stages:
      - {name: "${arm}-s${seed}", kind: init-model, out: "${arm}/s${seed}.pt", model: micro, patch_size: "${size_${arm}}",
         tubelet_size: 1, frames: 2, frame_step: 4, size: 32, seed: "${seed}"}
      - {name: "probe-${arm}-s${seed}", kind: probe, encoder: "${arm}/s${seed}.pt", train: data/train, val: data/val,
         out: "probes/${arm}-s${seed}.json", epochs: 1, workers: 1, seed: "${seed}"}
  - {name: report, kind: study-report, tasks: [shape], seeds: [0, 1], arms: {p8: patch 8, p16: patch 16},
     probe: "probes/{arm}-s{seed}.json", gaps: [[p8, p16]], cost: {p8: ["p8-s{seed}"]}, out: report}
""")
    res = runner.invoke(app, ["run", str(recipe), "--workdir", str(tmp_path / "w"), "--var", "size_p8=8",
                              "--var", "size_p16=16"])
    assert res.exit_code == 0, res.output
    study = json.loads((tmp_path / "w" / "report" / "study.json").read_text())
    shape = study["tasks"]["shape"]
    assert shape["name"] == "demo task (object shape)" and shape["chance"] == 0.25
    assert [len(a["top1"]) for a in shape["arms"].values()] == [2, 2]
    assert shape["arms"]["p8"]["cost_s"] > 0 and shape["arms"]["p16"]["cost_s"] is None
    assert (tmp_path / "w" / "report" / "study.png").stat().st_size > 10_000
    md = (tmp_path / "w" / "report" / "study.md").read_text()
    assert "| patch 8 |" in md and "| patch 8 − patch 16 |" in md
    assert "object shape" in res.output and "gaps" in res.output


def test_demo_data_refuses_an_unknown_task(tmp_path):
    res = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--task", "colour"])
    assert res.exit_code == 1 and "--task: expected one of time, shape, got 'colour'" in res.output
