"""A newcomer's first commands, as the README gives them: each either runs or refuses in one
line that says what to change. Workers are clamped to what the shards allow, a CPU run that
cannot fit in memory is refused before it starts, a teacher whose patching does not fit the
spec is refused naming the flag, and the build's progress bar and summary give one rate."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from salt_cache.cache import BuildConfig, build_cache
from salt_cache.cli import app
from salt_cache.console import rate
from salt_cache.errors import SaltCacheError
from salt_cache.train import memory
from salt_cache.train.config import load_run_config
from salt_cache.train.data import check_splits
from salt_cache.train.runs import RunFolder
from salt_cache.train.teacher import TeacherConfig
from test_cache_common import make_teacher, write_spec
from test_train_engine import cli_args, micro_flags

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(res) -> str:
    text = res.output.strip()
    assert res.exit_code == 1 and text.startswith("error:") and "\n" not in text and "Traceback" not in text, text
    return text


def test_workers_are_clamped_to_the_shards_with_one_note(demo, tmp_path):
    # the demo fixture's val split has 2 shards: a third worker would have none of its own
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-teacher", "--out", str(out), "--steps", "1"]
                        + cli_args(micro_flags(demo, workers=3, val_batches=0, **{"data.train": str(demo / "val")})))
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 train shards feed 2 DataLoader worker(s) per process, not 3" in notes[0], res.output
    assert RunFolder(out).finished("teacher")
    with pytest.raises(SaltCacheError, match="1 train shards cannot feed 2 data splits"):
        check_splits(1, 2, 1)  # fewer shards than processes: nothing to clamp to


def test_default_cpu_runs_that_cannot_fit_are_refused_in_one_line(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 24 * 2**30)  # the 24 GB machine
    # README: train-teacher --data demo/train --out run --model micro, every other field at its default
    res = runner.invoke(app, ["train-teacher", "--data", str(demo / "train"), "--out", str(tmp_path / "t"),
                              "--model", "micro", "--device", "cpu"])
    text = one_line_error(res)
    assert "batch_size: 64 clips of 16 x 224 px need about" in text and "--batch-size" in text, text
    assert "--set clip.size=" in text and "GiB available" in text
    res = runner.invoke(app, ["train-student", "--ema", "--data", str(demo / "train"), "--out", str(tmp_path / "s"),
                              "--model", "micro", "--device", "cpu"])
    assert "--batch-size" in one_line_error(res)
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()  # nothing written
    # the suggested batch fits: the estimate grows with the batch and the refusal names the largest that fits
    cfg = load_run_config(TeacherConfig, flags={"model.name": "micro", "device": "cpu"})
    suggested = int(text.split("--batch-size ")[1].split()[0])
    assert memory.step_bytes(cfg, suggested) <= 24 * 2**30 < memory.step_bytes(cfg, suggested + 1)
    memory.check_cpu_memory(cfg, suggested, available=24 * 2**30)


def test_teacher_patching_that_misses_the_spec_names_the_flag(demo, tmp_path):
    res = runner.invoke(app, ["init-model", "--model", "micro", "--out", str(tmp_path / "t16.pt")])  # patch 16
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["build", "--teacher", str(tmp_path / "t16.pt"), "--data", str(demo / "val"),
                              "--spec", "demo", "--out", str(tmp_path / "cache")])
    assert "init-model --patch-size 8 --tubelet-size 2" in one_line_error(res)


def test_build_progress_bar_and_summary_give_one_rate(demo, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt")
    with Progress(console=Console(file=StringIO())) as bar:
        summary = build_cache(BuildConfig(teacher, str(demo / "val"), write_spec(tmp_path / "s.yaml"),
                                          tmp_path / "cache", batch_size=4, workers=1), bar)
        task = bar.tasks[0]
    assert task.completed == summary.clips_built == 12
    assert summary.wall_s > summary.encode_s > 0  # start-up (teacher, index, checks) is not encoding
    assert rate(task) == pytest.approx(summary.clips_per_s, rel=0.02)
