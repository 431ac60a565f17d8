"""The training engine shared by both stages: configs, optimizer groups and schedules, the data
pipeline's splits and resume positions, exact resume of a whole run, DDP equivalence, refusals.

Runs use the V-Pixel stage (the engine's first user) with a micro encoder on 32 px, 4-frame
clips of the demo fixture."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from salt_cache.cli import app
from salt_cache.diagnostics import RANK_KEYS
from salt_cache.errors import SaltCacheError
from salt_cache.masks import DEFAULT_MASKS
from salt_cache.shards import iter_shard, resolve_shards, shard_keys
from salt_cache.train.config import load_run_config
from salt_cache.train.data import PlanAndDecode, TrainStream, split_samples
from salt_cache.train.optim import lr_at, make_optimizer, param_groups, set_schedule, wd_at
from salt_cache.train.runs import RunFolder, load_run_encoder, read_log
from salt_cache.train.teacher import TeacherConfig, build_model, train
from conftest import torchrun_cli

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def micro_flags(demo, **over) -> dict:
    """A micro V-Pixel run on the demo fixture: grid 2 x 4 x 4, batch 8, tiny decoder."""
    flags = {"model.name": "micro", "model.patch_size": 8, "clip.frames": 4, "clip.frame_step": 1,
             "clip.size": 32, "decoder.embed_dim": 64, "decoder.depth": 1, "decoder.num_heads": 4,
             "batch_size": 8, "workers": 1, "device": "cpu", "data.train": str(demo / "train"),
             "data.val": str(demo / "val"), "val_batches": 1, "data.val_batch_size": 4, "log_every": 1}
    flags.update(over)
    return flags


def micro_config(demo, **over) -> TeacherConfig:
    return load_run_config(TeacherConfig, flags=micro_flags(demo, **over))


def cli_args(flags: dict) -> list[str]:
    args = []
    for k, v in flags.items():
        args += ["--set", f"{k}={v}"]
    return args


LOSS_COLUMNS = ("step", "loss", "loss_short", "loss_long", "lr", "wd", "grad_norm")


# ---------------------------------------------------------------- optimizer

def test_schedules_hit_their_endpoints_and_warmup_scales_with_short_runs():
    cfg = load_run_config(TeacherConfig, flags={"steps": 1000}).optim
    assert cfg.warmup_steps == 100  # steps // 10 for a short run
    assert load_run_config(TeacherConfig, flags={"steps": 240_000}).optim.warmup_steps == 10_000  # the paper's
    assert math.isclose(lr_at(0, cfg, 1000), 2e-4)
    assert math.isclose(lr_at(100, cfg, 1000), 6.25e-4)
    assert math.isclose(lr_at(1000, cfg, 1000), 1e-6)
    lrs = [lr_at(s, cfg, 1000) for s in range(1001)]
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101]))       # linear warmup rises
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))        # cosine falls
    assert math.isclose(wd_at(0, cfg, 1000), 0.04)
    assert math.isclose(wd_at(500, cfg, 1000), 0.22)
    assert math.isclose(wd_at(1000, cfg, 1000), 0.4)


def test_no_weight_decay_on_biases_norms_and_mask_tokens(demo):
    model = build_model(micro_config(demo))
    decay, keep = param_groups(model.named_parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "decoder.mask_token" in kept
    assert {n for n in names.values() if n.endswith(".bias")} <= kept
    assert {n for n in names.values() if "norm" in n} <= kept
    assert all(p.ndim >= 2 for p in decay["params"]) and "decoder.mask_token" not in decayed
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "encoder.patch_embed.weight" in decayed
    assert len(kept) + len(decayed) == len(names)
    opt = make_optimizer(model, micro_config(demo).optim)
    lr, wd = set_schedule(opt, 5, micro_config(demo).optim, 10)
    assert [g["weight_decay"] for g in opt.param_groups] == [wd, 0.0] and wd > 0.04
    assert all(g["lr"] == lr for g in opt.param_groups)


# ---------------------------------------------------------------- config

def test_config_precedence_yaml_then_flags_then_set(tmp_path, demo):
    yml = tmp_path / "run.yaml"
    yml.write_text("steps: 50\nbatch_size: 16\noptim:\n  lr: 1e-3\nmodel:\n  name: tiny\n")
    cfg = load_run_config(TeacherConfig, yml, flags={"batch_size": 4, "model.name": None},
                          sets=["optim.lr=2e-3", "masks=[{name: one, num_blocks: 2, spatial_scale: 0.3}]"])
    assert (cfg.steps, cfg.batch_size, cfg.optim.lr, cfg.model.name) == (50, 4, 2e-3, "tiny")
    assert [m.name for m in cfg.masks] == ["one"] and cfg.masks[0].spatial_scale == (0.3, 0.3)
    assert [m.name for m in load_run_config(TeacherConfig).masks] == [m.name for m in DEFAULT_MASKS]
    for sets, msg in [(["optim.lrr=1"], "optim.lrr: unknown field"),
                      (["clip.frames=5"], "clip.frames: 5 frames do not split into tubelets of 2"),
                      (["model.name=mega"], "model.name: unknown model size 'mega'"),
                      (["steps=many"], "steps: expected an integer")]:
        with pytest.raises(SaltCacheError, match=f"^{yml}: {msg}"):
            load_run_config(TeacherConfig, yml, sets=sets)


# ---------------------------------------------------------------- data pipeline

def test_splits_partition_each_epoch_and_a_resumed_stream_continues_exactly(demo):
    shards = resolve_shards(demo / "train")
    all_keys = sorted(k for s in shards for k in shard_keys(s))
    for epoch in (0, 1):
        per_split = []
        for split in (0, 1):
            it = split_samples(shards, seed=3, split=split, n_splits=2, buffer=4, epoch=epoch)
            keys = []
            for e, n, sample in it:
                if e != epoch:
                    break
                keys.append(sample.key)
            per_split.append(keys)
        assert sorted(per_split[0] + per_split[1]) == all_keys  # disjoint, complete
    cfg = micro_config(demo)
    stage = PlanAndDecode(cfg.clip, seed=3)

    def stream(positions=None):
        ds = TrainStream(shards, stage, 4, cfg.grid, tuple(cfg.masks), seed=3, rank=0, world_size=1, workers=2,
                         shuffle_buffer=4, positions=positions)
        return ds.batches(split=1, n_splits=2)

    full = [b for _, b in zip(range(7), stream())]
    assert len({b["position"]["epoch"] for b in full}) == 2  # the stream crosses an epoch boundary
    resumed = stream({1: full[2]["position"]})
    for want in full[3:]:
        got = next(resumed)
        assert got["keys"] == want["keys"] and got["position"] == want["position"]
        assert torch.equal(got["clip"], want["clip"])
        assert all(torch.equal(a, b) for pa, pb in zip(got["masks"], want["masks"]) for a, b in zip(pa, pb))
        assert got["clip"].shape == (4, 3, 4, 32, 32) and got["view"][0]["key"] == got["keys"][0]


class SkipGrow(PlanAndDecode):
    """A stage that refuses one class, as Stage 2's cache join refuses rows that are not ok."""

    def __call__(self, sample, ctx):
        return None if sample.meta["label"] == 2 else super().__call__(sample, ctx)


def test_skipped_samples_are_counted_and_never_batched(demo):
    shards = resolve_shards(demo / "train")
    cfg = micro_config(demo)
    ds = TrainStream(shards, SkipGrow(cfg.clip, seed=0), 3, cfg.grid, tuple(cfg.masks), seed=0, rank=0, world_size=1,
                     workers=1, shuffle_buffer=8)
    labels = {k: m["label"] for p in shards for k, _, m in iter_shard(p)}
    seen, skipped = [], 0
    for batch in ds.batches(split=0, n_splits=1):
        if batch["position"]["epoch"] > 0:
            break
        seen += batch["keys"]
        skipped += batch["skipped"]
        assert batch["clip"].shape[0] == 3 and all(labels[k] != 2 for k in batch["keys"])
        assert len(seen) + skipped == batch["position"]["consumed"]  # every sample taken is batched or counted
    assert skipped > 0 and len(seen) >= 24


def test_an_unreadable_shard_stops_the_run_with_one_line(demo, tmp_path):
    data = tmp_path / "shards"
    data.mkdir()
    for p in resolve_shards(demo / "train"):
        blob = p.read_bytes()
        (data / p.name).write_bytes(blob[: len(blob) // 2] if p.name.endswith("1.tar") else blob)
    res = runner.invoke(app, ["train-teacher", "--out", str(tmp_path / "run")]
                        + cli_args(micro_flags(demo, **{"data.train": str(data), "steps": 50})))
    assert res.exit_code == 1 and "shard-000001.tar: unreadable shard" in res.output, res.output
    assert res.output.strip().splitlines()[-1].startswith("error:")


# ---------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def straight(demo, tmp_path_factory):
    """Six steps in one go: 2 loader workers, validation every 2 steps, checkpoints every 3."""
    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = micro_config(demo, steps=6, workers=2, val_every=2, ckpt_every=3)
    train(cfg, out, show_progress=False)
    return cfg, out


def test_stopped_and_resumed_run_logs_exactly_the_same_losses(straight, tmp_path):
    cfg, ref = straight
    out = tmp_path / "run"
    # stop after step 3: an odd number of batches, so the resumed loader starts on worker 1
    s1 = train(cfg, out, stop_at=3, show_progress=False)
    assert s1["end_step"] == 3 and "teacher" not in s1 and not (out / "teacher.pt").exists()
    # a log row past the checkpoint (a run killed after logging it) is dropped on resume
    with open(out / "log.csv", "a") as f:
        f.write("4,9.0,9.0,9.0,0,0,0,0,0,0\n")
    s2 = train(cfg, out, resume=True, show_progress=False)
    assert s2["start_step"] == 3 and s2["end_step"] == 6
    for name in ("log.csv", "val.csv"):
        a, b = read_log(ref / name), read_log(out / name)
        assert [r["step"] for r in a] == [r["step"] for r in b] == ([1, 2, 3, 4, 5, 6] if name == "log.csv" else [2, 4, 6])
        cols = LOSS_COLUMNS if name == "log.csv" else ("step", "val_loss", "val_loss_short", "val_loss_long") + RANK_KEYS
        assert [[r[c] for c in cols] for r in a] == [[r[c] for c in cols] for r in b]
    # the teacher's val tokens: 4 clips x 32 tokens of a 96-wide encoder; clip level at most 4
    ranks = read_log(ref / "val.csv")[-1]
    assert 1 < ranks["rankme_clip"] <= 4 < ranks["rankme_token"] <= 96 and 1 < ranks["erank_token"] <= 96
    ta, tb = (torch.load(p / "teacher.pt", weights_only=True)["state_dict"] for p in (ref, out))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert [s for s, _ in RunFolder(out).step_checkpoints()] == [3, 6]


def test_run_checkpoint_rebuilds_the_encoder(straight):
    _, ref = straight
    (step, path), = [c for c in RunFolder(ref).step_checkpoints() if c[0] == 6]
    encoder, meta = load_run_encoder(path)
    assert meta["kind"] == "run-state" and meta["stage"] == "teacher" and meta["step"] == 6
    assert meta["config"]["model"]["name"] == "micro" and math.isfinite(meta["val_loss"])
    teacher = torch.load(ref / "teacher.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, teacher[k]) for k, v in encoder.state_dict().items())
    ckpt = torch.load(path, weights_only=True)  # plain data only
    assert ckpt["kind"] == "run-state" and set(ckpt["models"]) == {"encoder", "decoder"}
    assert isinstance(ckpt["ranks"][0]["rng"]["numpy"]["keys"], list)
    assert ckpt["ranks"][0]["data"]["consumed_batches"] == 6
    mid, _ = load_run_encoder(RunFolder(ref).step_checkpoints()[0][1])
    assert not torch.equal(mid.state_dict()["norm.weight"], encoder.state_dict()["norm.weight"])


def test_resume_refusals_and_bad_inputs_are_one_line(straight, demo, tmp_path):
    cfg, ref = straight
    res = runner.invoke(app, ["train-teacher", "--out", str(ref), "--resume", "--set", "optim.lr=0.5"])
    assert res.exit_code == 1 and "config differs from the run's at optim.lr (0.000625 vs 0.5)" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["train-teacher", "--out", str(ref), "--resume", "--set", "workers=1"])
    assert res.exit_code == 1 and "at workers (2 vs 1)" in res.output
    # (a micro config: the default one is refused first on a CPU-only machine, for memory)
    res = runner.invoke(app, ["train-teacher", "--out", str(ref)] + cli_args(micro_flags(demo)))
    assert res.exit_code == 1 and "holds a run already; pass --resume" in res.output
    res = runner.invoke(app, ["train-teacher", "--out", str(tmp_path / "new"), "--resume"])
    assert res.exit_code == 1 and "nothing to resume" in res.output
    # a checkpoint written before a config field existed resumes: the field reads as its default
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ref, old)
    ckpt = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    del ckpt["config"]["norm_pix"], ckpt["config"]["val_rank_rows"]
    torch.save(ckpt, old / "checkpoints" / "last.pt")
    assert train(cfg, old, resume=True, show_progress=False)["end_step"] == 6
    cases = [
        ({"data.train": str(tmp_path / "nope")}, "nope: shard file not found"),
        ({"optim.lrr": 1}, "config: optim.lrr: unknown field"),
        ({"batch_size": 6, "grad_accum": 4}, "batch_size: 6 does not split into 1 process(es) x grad_accum 4"),
        ({"model.name": "mega"}, "model.name: unknown model size 'mega'"),
        ({"data.val": str(tmp_path / "noval")}, "noval: shard file not found"),
    ]
    for over, msg in cases:
        res = runner.invoke(app, ["train-teacher", "--out", str(tmp_path / "bad")] + cli_args(micro_flags(demo, **over)))
        assert res.exit_code == 1, res.output
        assert msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "bad").exists()  # nothing was written for a run that could not start


def test_two_processes_match_one_process_with_the_same_global_batch(demo, tmp_path):
    """2 ranks x 1 worker x accum 1 read exactly the data splits of 1 rank x 2 workers x accum 2
    (same shards, same masks), so DDP's averaged gradient must equal accumulation's. Tolerance:
    1e-5 on every logged loss (only the float summation order differs)."""
    common = micro_flags(demo, steps=4, val_every=2, ckpt_every=4, val_batches=2)
    one = tmp_path / "one"
    train(load_run_config(TeacherConfig, flags={**common, "workers": 2, "grad_accum": 2}), one, show_progress=False)
    two = tmp_path / "two"
    res = torchrun_cli(tmp_path, ["train-teacher", "--out", str(two)] + cli_args({**common, "workers": 1}))
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.load(two / "checkpoints" / "last.pt", weights_only=True)["config"]["grad_accum"] == 1
    for name, cols in (("log.csv", LOSS_COLUMNS[1:4]), ("val.csv", ("val_loss", "val_loss_short", "val_loss_long"))):
        a, b = read_log(one / name), read_log(two / name)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):
            assert all(abs(ra[c] - rb[c]) < 1e-5 for c in cols), (ra, rb)
    # rank diagnostics: val batch 1 ran on the other process, its tokens were gathered on rank 0
    for ra, rb in zip(read_log(one / "val.csv"), read_log(two / "val.csv")):
        assert all(abs(ra[c] - rb[c]) < 1e-4 * ra[c] for c in RANK_KEYS), (ra, rb)
    ta, tb = (torch.load(p / "teacher.pt", weights_only=True)["state_dict"] for p in (one, two))
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5) for k in ta)


def test_step_checkpoints_are_pruned_to_the_newest_and_every_n(demo, tmp_path):
    out = tmp_path / "run"
    cfg = micro_config(demo, steps=5, workers=0, val_batches=0, ckpt_every=1, ckpt_keep_every=2)
    train(cfg, out, stop_at=3, show_progress=False)
    assert [s for s, _ in RunFolder(out).step_checkpoints()] == [2, 3]
    train(cfg, out, resume=True, show_progress=False)
    assert [s for s, _ in RunFolder(out).step_checkpoints()] == [2, 4, 5] and RunFolder(out).last.is_file()
