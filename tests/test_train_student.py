"""Stage 2 (SALT): no target leak, cached = online targets, a micro student that learns from the
cache, exact resume, DDP equivalence, and the refusals. Runs a micro student on 32 px, 4-frame
clips of the demo fixture with a cache built by a micro teacher (grid 2 x 4 x 4 = 32 tokens)."""

from __future__ import annotations

import shutil

import pytest
import torch
from typer.testing import CliRunner

from salt_cache.cache import BuildConfig, build_cache
from salt_cache.checkpoint import load_encoder
from salt_cache.cli import app
from salt_cache.diagnostics import RANK_KEYS
from salt_cache.masks import MaskSet, multiblock_masks
from salt_cache.train.config import load_run_config
from salt_cache.shards import read_samples
from salt_cache.train.data import StageContext, collate, on_device
from salt_cache.train.runs import read_log
from salt_cache.train.student import CacheJoin, StudentConfig, build_model, train
from salt_cache.shards import resolve_shards
from test_cache_common import make_teacher, write_spec
from test_train_engine import cli_args
from conftest import torchrun_cli

runner = CliRunner()
LOSS_COLUMNS = ("step", "loss", "loss_short", "loss_long", "lr", "wd", "grad_norm")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cached(demo, tmp_path_factory):
    """A micro teacher and its float32 cache over the demo fixture's train and val shards."""
    root = tmp_path_factory.mktemp("stage2")
    teacher = make_teacher(root / "teacher.pt", seed=3)
    spec = write_spec(root / "spec.yaml", views=2, patch=8, dtype="float32")
    build_cache(BuildConfig(teacher, [str(demo / "train"), str(demo / "val")], spec, root / "cache", batch_size=8, workers=1))
    return root, teacher, root / "cache"


@pytest.fixture(scope="module")
def cached_jpeg(demo, cached, tmp_path_factory):
    """The same teacher's float32 cache with student-ready views stored as JPEG: Stage 2 reads the
    stored frames (the teacher encoded exactly their decoded pixels), not the source."""
    root = tmp_path_factory.mktemp("stage2_jpeg")
    spec = write_spec(root / "spec.yaml", views=2, patch=8, dtype="float32", frames="jpeg")
    build_cache(BuildConfig(cached[1], [str(demo / "train"), str(demo / "val")], spec, root / "cache", batch_size=8, workers=1))
    return root, cached[1], root / "cache"


def student_flags(demo, cache, **over) -> dict:
    flags = {"cache": str(cache), "model.name": "micro", "model.patch_size": 8, "clip.frames": 4, "clip.size": 32,
             "predictor.embed_dim": 64, "predictor.depth": 1, "predictor.num_heads": 4, "batch_size": 8,
             "workers": 1, "device": "cpu", "data.train": str(demo / "train"), "data.val": str(demo / "val"),
             "val_batches": 1, "data.val_batch_size": 4, "log_every": 1, "optim.clip_grad": 1.0}
    flags.update(over)
    return flags


def student_config(demo, cache, **over) -> StudentConfig:
    return load_run_config(StudentConfig, flags=student_flags(demo, cache, **over))


def joined_batch(demo, cache, n=4, latents=True) -> dict:
    """The first n val clips joined with the cache (view 0), with one set of masks."""
    stage = CacheJoin(cache, seed=0, latents=latents)
    items = [stage(s, StageContext(epoch=0, train=False)) for s in list(read_samples(resolve_shards(demo / "val")))[:n]]
    batch = collate(items)
    batch["masks"] = multiblock_masks(n, (2, 4, 4), (MaskSet("short", 8, (0.15, 0.15)), MaskSet("long", 2, (0.7, 0.7))), seed=5)
    return on_device(batch, torch.device("cpu"))  # the uint8 clip normalized, as the trainer does


@pytest.mark.parametrize("which", ["cached", "cached_jpeg"])
def test_no_leak_target_pixels_move_neither_context_outputs_nor_loss(demo, which, request):
    _, _, cache = request.getfixturevalue(which)
    torch.manual_seed(0)
    model = build_model(student_config(demo, cache), teacher_dim=96).eval()
    batch = joined_batch(demo, cache)
    for k, (ctx, tgt) in enumerate(batch["masks"]):
        one = {**batch, "masks": [(ctx, tgt)]}
        changed = {**one, "clip": batch["clip"].clone()}
        for b in range(ctx.shape[0]):  # scramble the pixels of every target tubelet (tubelet 2, patch 8)
            for i in tgt[b].tolist():
                t, h, w = i // 16, (i // 4) % 4, i % 4
                changed["clip"][b, :, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8] = torch.randn(3, 2, 8, 8) * 3
        assert not torch.equal(changed["clip"], one["clip"])
        with torch.no_grad():
            assert torch.equal(model.student(one["clip"], ctx), model.student(changed["clip"], ctx))
            assert torch.equal(model(one)[0], model(changed)[0])


@pytest.mark.parametrize("which", ["cached", "cached_jpeg"])  # views decoded from the source, or stored
def test_cached_and_online_teacher_give_the_same_loss(demo, which, request):
    _, teacher_path, cache = request.getfixturevalue(which)
    teacher, _ = load_encoder(teacher_path)
    cfg = student_config(demo, cache)
    torch.manual_seed(0)
    cached_model = build_model(cfg, teacher_dim=96).eval()
    online_model = build_model(cfg, teacher_dim=96, teacher=teacher).eval()
    online_model.student.load_state_dict(cached_model.student.state_dict())
    online_model.predictor.load_state_dict(cached_model.predictor.state_dict())
    batch = joined_batch(demo, cache)
    with torch.no_grad():
        assert torch.allclose(batch["latents"], teacher(batch["clip"]), atol=1e-5)  # the row is the teacher's output on its view
        a, per_a = cached_model(batch)
        b, per_b = online_model({k: v for k, v in batch.items() if k != "latents"})
    assert torch.allclose(a, b, rtol=1e-5) and torch.allclose(per_a, per_b, rtol=1e-5)


def test_micro_student_learns_from_the_cache_and_resumes_exactly(demo, cached, tmp_path):
    root, _, cache = cached
    cfg = student_config(demo, cache, steps=160, log_every=10, val_every=80, ckpt_every=80,
                         **{"optim.lr": 2e-3, "optim.start_lr": 2e-4, "optim.final_lr": 1e-4})
    out = tmp_path / "learn"
    summary = train(cfg, out, show_progress=False)
    log = read_log(out / "log.csv")
    # L1 to layer-normed targets starts near E|N(0,1)| = 0.8 (predicting the mean)
    assert log[0]["loss"] > 0.7 and log[-1]["loss"] < 0.85 * log[0]["loss"], [r["loss"] for r in log]
    assert all(0 <= r["data_wait_frac"] <= 1 for r in log)
    assert summary["mode"] == "cached" and (out / "student.pt").exists()
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert "teacher" not in str(list(ckpt["models"])) and ckpt["meta"]["cache"]["teacher_dim"] == 96
    # the recorded clip is the one the student saw, the cache's (frame step 2), not the config's (4)
    assert cfg.clip.frame_step == 4 and ckpt["meta"]["clip"]["frame_step"] == 2
    assert torch.load(out / "student.pt", weights_only=True)["meta"]["clip"] == ckpt["meta"]["clip"]
    # the exported student is an encoder checkpoint that `build` takes as a teacher
    spec = write_spec(tmp_path / "spec.yaml", views=1, patch=8)
    s = build_cache(BuildConfig(out / "student.pt", str(demo / "val"), spec, tmp_path / "student-cache", workers=1))
    assert s.failed == 0 and s.rows > 0

    short = student_config(demo, cache, steps=6, val_every=2, ckpt_every=3)
    ref, res = tmp_path / "ref", tmp_path / "resumed"
    train(short, ref, show_progress=False)
    train(short, res, stop_at=3, show_progress=False)
    train(short, res, resume=True, show_progress=False)
    for name, cols in (("log.csv", LOSS_COLUMNS), ("val.csv", ("step", "val_loss") + RANK_KEYS)):
        a, b = read_log(ref / name), read_log(res / name)
        assert [[r[c] for c in cols] for r in a] == [[r[c] for c in cols] for r in b]


def test_two_processes_match_one_process(demo, cached, tmp_path):
    """2 ranks x 1 worker x accum 1 see the batches of 1 rank x 2 workers x accum 2; tolerance
    1e-5 on every logged loss (only the float summation order differs)."""
    _, _, cache = cached
    common = student_flags(demo, cache, steps=3, val_every=3, ckpt_every=3)
    one = tmp_path / "one"
    train(load_run_config(StudentConfig, flags={**common, "workers": 2, "grad_accum": 2}), one, show_progress=False)
    two = tmp_path / "two"
    res = torchrun_cli(tmp_path, ["train-student", "--out", str(two)] + cli_args({**common, "workers": 1}))
    assert res.returncode == 0, res.stderr[-3000:]
    for name, cols in (("log.csv", LOSS_COLUMNS[1:4]), ("val.csv", ("val_loss",))):
        a, b = read_log(one / name), read_log(two / name)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):
            assert all(abs(ra[c] - rb[c]) < 1e-5 for c in cols), (ra, rb)
    for ra, rb in zip(read_log(one / "val.csv"), read_log(two / "val.csv")):
        assert all(abs(ra[c] - rb[c]) < 1e-4 * ra[c] for c in RANK_KEYS), (ra, rb)


def test_refusals_are_one_line(demo, cached, tmp_path):
    root, teacher, cache = cached
    only_train = tmp_path / "train-only"
    build_cache(BuildConfig(teacher, str(demo / "train"), write_spec(tmp_path / "s.yaml", views=1, patch=8), only_train, workers=1))
    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    shutil.rmtree(next(p for p in (broken / "stores").iterdir() if p.is_dir()))
    cases = [
        ({"model.patch_size": 16}, "model.patch_size: the student config has 16, the cache"),
        ({"clip.frames": 8}, "clip.frames: the student config has 8, the cache"),
        ({"cache": str(only_train)}, "clip(s) of val shard"),
        ({"cache": str(broken)}, "fails its quick checks"),
        ({"cache": str(tmp_path / "nope")}, "nope"),
        ({"cache": None, "loss": "l3"}, "loss: expected one of"),
    ]
    for over, msg in cases:
        flags = {k: v for k, v in {**student_flags(demo, cache), **over}.items() if v is not None}
        res = runner.invoke(app, ["train-student", "--out", str(tmp_path / "bad")] + cli_args(flags))
        assert res.exit_code == 1, res.output
        assert msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["train-student", "--out", str(tmp_path / "bad"), "--data", str(demo / "train")])
    assert res.exit_code == 1 and "give --cache" in res.output
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- the V-JEPA baseline (--ema)

def ema_config(demo, **over) -> StudentConfig:
    flags = {k: v for k, v in student_flags(demo, None).items() if k != "cache"}
    flags.update({"ema.enabled": True, "clip.frame_step": 2, "steps": 2, "ckpt_every": 1, "val_every": 2})
    flags.update(over)
    return load_run_config(StudentConfig, flags=flags)


def test_ema_target_is_the_moving_average_of_the_student_and_is_exported(demo, tmp_path):
    cfg = ema_config(demo, **{"ema.momentum": [0.6, 0.9]})
    model = build_model(cfg).train()
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())
    assert model.predictor.config["out_dim"] == model.student.embed_dim == 96
    out = tmp_path / "ema"
    summary = train(cfg, out, show_progress=False)
    assert summary["mode"] == "ema" and summary["student"].endswith("student.pt") and summary["online"].endswith("online.pt")
    torch.manual_seed(cfg.seed)
    init = build_model(cfg).student.state_dict()  # the run's initial student (= initial target)
    s1, s2 = (torch.load(out / "checkpoints" / f"step-000000{i}.pt", weights_only=True) for i in (1, 2))
    # momentum after step 0: 0.6; after step 1: 0.6 + (0.9 - 0.6) * 1 / 2 = 0.75
    for k in init:
        torch.testing.assert_close(s1["models"]["target_encoder"][k], 0.6 * init[k] + 0.4 * s1["models"]["encoder"][k],
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(s2["models"]["target_encoder"][k],
                                   0.75 * s1["models"]["target_encoder"][k] + 0.25 * s2["models"]["encoder"][k],
                                   rtol=0, atol=1e-6)
    assert not all(torch.equal(s1["models"]["encoder"][k], init[k]) for k in init)  # the student did train
    # the optimizer holds the student and predictor only: the target is never trained
    n_params = sum(len(g["params"]) for g in s2["optimizer"]["param_groups"])
    assert n_params == sum(1 for k, v in init.items()) + len(s2["models"]["predictor"])
    # student.pt is the EMA target encoder (what V-JEPA 2 evaluates), online.pt the online student
    student, online = (torch.load(out / f, weights_only=True) for f in ("student.pt", "online.pt"))
    assert all(torch.equal(student["state_dict"][k], s2["models"]["target_encoder"][k]) for k in init)
    assert all(torch.equal(online["state_dict"][k], s2["models"]["encoder"][k]) for k in init)
    assert student["meta"]["mode"] == "ema" and student["meta"]["encoder"].startswith("target_encoder")
    assert student["meta"]["clip"]["frames"] == 4 and student["meta"]["ema"]["momentum"] == [0.6, 0.9]
    # a run folder's encoder, as probe / select read it, is the target too
    from salt_cache.train.runs import load_run_encoder

    enc, meta = load_run_encoder(out)
    assert meta["encoder"] == "target_encoder" and meta["mode"] == "ema"
    assert all(torch.equal(v, student["state_dict"][k]) for k, v in enc.state_dict().items())


def test_ema_run_resumes_exactly(demo, tmp_path):
    cfg = ema_config(demo, steps=4, ckpt_every=2, val_every=2)
    ref, res = tmp_path / "ref", tmp_path / "resumed"
    train(cfg, ref, show_progress=False)
    train(cfg, res, stop_at=2, show_progress=False)
    train(cfg, res, resume=True, show_progress=False)
    for name, cols in (("log.csv", LOSS_COLUMNS), ("val.csv", ("step", "val_loss") + RANK_KEYS)):
        a, b = read_log(ref / name), read_log(res / name)
        assert len(a) > 0 and [[r[c] for c in cols] for r in a] == [[r[c] for c in cols] for r in b]
    for f in ("student.pt", "online.pt"):
        ta, tb = (torch.load(p / f, weights_only=True)["state_dict"] for p in (ref, res))
        assert all(torch.equal(ta[k], tb[k]) for k in ta), f


def test_ema_refuses_a_teacher_or_a_cache_in_one_line(demo, cached, tmp_path):
    _, teacher, cache = cached
    flags = {k: v for k, v in student_flags(demo, cache).items() if k != "cache"}
    for extra, msg in ((["--cache", str(cache)], "drop --cache"), (["--online-teacher", str(teacher)], "drop --online-teacher")):
        res = runner.invoke(app, ["train-student", "--out", str(tmp_path / "bad"), "--ema"] + extra + cli_args(flags))
        assert res.exit_code == 1, res.output
        assert "ema: --ema trains against an EMA of the student" in res.output and msg in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["train-student", "--out", str(tmp_path / "bad")] + cli_args({**flags, "ema.momentum": "[0.9, 1.5]"}))
    assert res.exit_code == 1 and "ema.momentum: expected two values in [0, 1]" in res.output
    assert not (tmp_path / "bad").exists()
