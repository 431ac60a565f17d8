"""Frozen evaluation: the attentive probe, its side-by-side heads, the feature cache reuse, and
checkpoint selection (loss vs. accuracy)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from salt_cache.errors import SaltCacheError
from salt_cache.eval.features import class_index
from salt_cache.eval.probe import FeatureSet, ProbeConfig, make_heads, probe_encoder, train_probes
from salt_cache.eval.selection import linear_fit, loss_at, plot_selection, read_log

PROTOS = torch.randn(4, 16, generator=torch.Generator().manual_seed(123))


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int, seed: int, shuffle: bool = False) -> FeatureSet:
    """8 noise tokens of width 16 per clip; one token at a random place carries its class's
    prototype. Only attention pooling that finds that token can read the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 8, 16, generator=g)
    x[torch.arange(n), torch.randint(0, 8, (n,), generator=g)] += 2.0 * PROTOS[y]
    if shuffle:
        y = y[torch.randperm(n, generator=g)]
    return FeatureSet(x, y)


def test_probe_reads_planted_labels_and_not_shuffled_ones():
    val = planted(256, seed=1)
    cfg = ProbeConfig(epochs=12, batch_size=32, heads=[(1e-2, 0.01)])
    good = train_probes(planted(512, seed=0), val, 4, cfg)
    # the same features with the train labels permuted: nothing left to learn
    shuffled = train_probes(planted(512, seed=0, shuffle=True), val, 4, cfg)
    assert good.records[0]["top1"] >= 0.9
    assert good.records[0]["train_loss"] < 0.1
    # 256 val clips: chance is 0.25 +- 0.03 (one std), so 0.4 is far outside chance
    assert shuffled.records[0]["top1"] <= 0.4
    assert shuffled.records[0]["train_loss"] > 1.0


def test_heads_train_side_by_side_and_differ_only_by_hyperparameters():
    train, val = planted(128, seed=0), planted(64, seed=1)
    # heads 0 and 1 are twins; 2 has a 10x smaller lr; 3 has a strong weight decay
    cfg = ProbeConfig(epochs=3, batch_size=32, heads=[(1e-2, 0.0), (1e-2, 0.0), (1e-3, 0.0), (1e-2, 0.5)])
    init = make_heads(train.dim, 4, cfg)
    start = [torch.nn.utils.parameters_to_vector(h.parameters()).detach() for h in init.heads]
    assert all(torch.equal(start[0], s) for s in start[1:])  # one initialization for all
    run = train_probes(train, val, 4, cfg)
    end = [torch.nn.utils.parameters_to_vector(h.parameters()).detach() for h in run.model.heads]
    moved = [float((e - s).norm()) for s, e in zip(start, end)]
    assert all(m > 1e-3 for m in moved)
    # same hyperparameters, same batches, independent heads -> identical weights
    assert torch.equal(end[0], end[1])
    assert not torch.equal(end[0], end[2]) and not torch.equal(end[0], end[3])
    assert moved[0] > 2 * moved[2]

    def decayed_norm(head):
        return sum(float(p.detach().norm() ** 2) for n, p in head.named_parameters() if p.ndim > 1) ** 0.5

    assert decayed_norm(run.model.heads[3]) < decayed_norm(run.model.heads[0])
    assert [(r["lr"], r["wd"]) for r in run.records] == cfg.grid()


def test_pooling_equals_the_textbook_cross_attention():
    """The pooler works in token space (no per-token key/value projection, LayerNorm affine
    folded in); it must equal LayerNorm -> k, v projections -> softmax(q k^T / sqrt(d)) v."""
    from salt_cache.models.probe import CrossAttentionBlock

    torch.manual_seed(0)
    blk = CrossAttentionBlock(96, 4)
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.3)  # non-trivial norms and biases
    q, x = torch.randn(3, 1, 96), torch.randn(3, 50, 96) * 2 + 1
    att = blk.xattn
    qh = att.q(q).reshape(3, 1, 4, 24).transpose(1, 2)
    k, v = att.kv(blk.norm1(x)).reshape(3, 50, 2, 4, 24).permute(2, 0, 3, 1, 4)
    y = q + att.proj(torch.nn.functional.scaled_dot_product_attention(qh, k, v).transpose(1, 2).reshape(3, 1, 96))
    ref = y + blk.mlp(blk.norm2(y))
    torch.testing.assert_close(blk(q, x), ref, rtol=1e-5, atol=1e-4)
    # gradients reach the same parameters with the same values
    g1 = torch.autograd.grad(blk(q, x).sum(), list(blk.parameters()))
    g2 = torch.autograd.grad(ref.sum(), list(blk.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_probe_depth_4_is_the_v_jepa2_layout():
    head = make_heads(16, 4, ProbeConfig(depth=4, heads=[(1e-3, 0.0)])).heads[0]
    assert len(head.blocks) == 3 and head.query.shape == (1, 1, 16)
    assert head(torch.randn(2, 8, 16)).shape == (2, 4)


def test_string_labels_map_to_sorted_names():
    classes, index, note = class_index(["dog", "cat"], ["eel", "cat"])
    assert classes == ["cat", "dog", "eel"] and index["eel"] == 2 and "sorted" in note
    classes, index, note = class_index([3, 7], [7])
    assert classes == [3, 7] and index == {3: 0, 7: 1} and note is None


def test_r2_matches_hand_computation():
    x, y = [1, 2, 3, 4], [2, 4, 5, 4]
    # by hand: slope = Sxy / Sxx = 3.5 / 5 = 0.7, intercept = 3.75 - 0.7 * 2.5 = 2.0,
    # residuals -0.7, 0.6, 0.9, -0.8 -> SS_res = 2.3; SS_tot = 4.75; R^2 = 1 - 2.3 / 4.75
    fit = linear_fit(x, y)
    assert fit["slope"] == pytest.approx(0.7)
    assert fit["intercept"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1 - 2.3 / 4.75)
    assert fit["pearson_r"] ** 2 == pytest.approx(fit["r2"])
    assert linear_fit([1, 2], [3, 5])["r2"] is None  # two points always fit
    assert linear_fit([1, 2, 3], [0.5, 0.5, 0.5])["r2"] is None


def test_loss_pairing_on_a_real_log(tmp_path):
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "lr", "grad_norm"])
        for step in range(10, 101, 10):
            w.writerow([step, 1.0 / step, 1e-4, 0.5])
        w.writerow([110, "", 1e-4, 0.5])  # a row without a loss is skipped
    rows = read_log(log)
    assert len(rows) == 10 and rows[0] == (10, pytest.approx(0.1))
    loss, used = loss_at(rows, 50, window=3)
    assert used == 3 and loss == pytest.approx((1 / 30 + 1 / 40 + 1 / 50) / 3)
    assert loss_at(rows, 55, window=3)[0] == pytest.approx(loss)  # nothing after the step counts
    assert loss_at(rows, 15, window=3) == (pytest.approx(0.1), 1)
    assert loss_at(rows, 5)[1] == 0
    png = plot_selection([{"step": s, "loss": 1 / s, "top1": 0.3 + s / 400} for s in (20, 50, 100)],
                         linear_fit([1 / 20, 1 / 50, 1 / 100], [0.35, 0.425, 0.55]), tmp_path / "fit.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("step,lr\n1,0.1\n")
    with pytest.raises(SaltCacheError, match="no 'loss' column"):
        read_log(bad)


# ---------------------------------------------------------------------------------------------
# End to end on the demo shards, with a micro encoder and the real cache machinery


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    from salt_cache.checkpoint import save_encoder
    from salt_cache.models import build_encoder

    torch.manual_seed(0)
    return save_encoder(tmp_path_factory.mktemp("enc") / "micro.pt", build_encoder("micro", patch_size=8, tubelet_size=2))


def write_spec(path: Path, **over) -> Path:
    """A probe spec for the 32 px demo clips: 4 frames, 2 x 4 x 4 = 32 tokens per view."""
    spec = {"name": "test-probe", "clip": {"frames": 4, "frame_step": 2, "size": 32, "crop": "center"},
            "views": 1, "patch_size": 8, "tubelet_size": 2, **over}
    path.write_text(yaml.safe_dump(spec))
    return path


class ForwardCounter:
    """Counts clips through every VideoViT forward in this process (build_cache encodes in the
    calling process; its DataLoader workers only decode)."""

    def __enter__(self):
        from salt_cache.models import VideoViT

        self.clips = 0

        def hook(module, args, output):
            if isinstance(module, VideoViT):
                self.clips += args[0].shape[0]

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def two_views(tmp_path_factory) -> Path:
    """Two random-resized views per clip, so a clip's rows and its views are distinct things."""
    return write_spec(tmp_path_factory.mktemp("spec") / "two-views.yaml", views=2,
                      clip={"frames": 4, "frame_step": 2, "size": 32, "crop": "random-resized"})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Feature caches shared by the tests of this module (a later test reuses what an earlier built)."""
    return tmp_path_factory.mktemp("work")


def test_probe_end_to_end_encodes_each_view_once(demo, encoder, two_views, work, tmp_path):
    from salt_cache.cache import CacheReader

    spec = two_views  # 36 train + 12 val clips, 2 views each -> 96 encoder forwards
    with ForwardCounter() as count:
        rep = probe_encoder(encoder, demo / "train", demo / "val", ProbeConfig(spec=spec, epochs=2, workers=1),
                            workdir=work, out=tmp_path / "report", class_names=["right", "left", "grow", "shrink"])
    assert count.clips == (36 + 12) * 2
    on_disk = json.loads((tmp_path / "report" / "probe.json").read_text())
    assert on_disk["top1"] == rep.top1 and on_disk["best"]["per_class"] == rep.best["per_class"]
    assert rep.num_classes == 4 and rep.chance == 0.25 and rep.classes == ["right", "left", "grow", "shrink"]
    assert len(rep.heads) == 6 and {(h["lr"], h["wd"]) for h in rep.heads} == {
        (lr, wd) for lr in (5e-3, 1e-3, 3e-4) for wd in (0.01, 0.1)}
    assert all(0 <= h["top1"] <= 1 and np.isfinite(h["val_loss"]) and len(h["history"]) == 2 for h in rep.heads)
    assert rep.top1 == max(h["top1"] for h in rep.heads)
    assert rep.selection == "best of 6 heads on val (as V-JEPA 2)"
    assert rep.top1_se == pytest.approx((rep.top1 * (1 - rep.top1) / 12) ** 0.5)
    # 12 val clips: one standard error is far above 2.5 points, and the report says so
    assert rep.top1_se == 0 or any("validation sets must be large enough that one standard error is <= 2.5 points"
                                      in n for n in rep.notes)
    assert rep.task == "demo task (direction of time)" and rep.spec_from == "--spec"
    assert len(rep.data["train"]) == 4 and rep.data["val"][0].endswith("shard-000000.tar")
    for split, rows in (("train", 72), ("val", 24)):
        r = rep.ranks[split]
        assert r["rows"] == rows and 1 < r["rankme_clip"] <= 96 and 1 < r["rankme_token"] <= 96 and r["erank_token"] > 1
    assert rep.grid["lrs"] == [5e-3, 1e-3, 3e-4] and rep.grid["wds"] == [0.01, 0.1]
    assert rep.grid["top1"][1][1] == next(h["top1"] for h in rep.heads if (h["lr"], h["wd"]) == (1e-3, 0.1))
    per = rep.best["per_class"]
    assert sum(v["count"] for v in per.values()) == 12
    # the best head's top-1 is the count-weighted mean of its per-class accuracies
    assert sum(v["accuracy"] * v["count"] for v in per.values()) / 12 == pytest.approx(rep.top1)
    for split, clips in (("train", 36), ("val", 12)):
        f = rep.features[split]
        assert (f["clips_used"], f["rows"], f["tokens"], f["dim"]) == (clips, 2 * clips, 32, 96)
        reader = CacheReader(Path(f["cache"]))
        assert len(reader.keys()) == clips and sum(len(reader.rows(k)) for k in reader.keys()) == 2 * clips
    # more epochs and other heads: the cached features are reused, the encoder never runs
    with ForwardCounter() as again:
        rep2 = probe_encoder(encoder, demo / "train", demo / "val",
                             ProbeConfig(spec=spec, epochs=3, lrs=(1e-2,), wds=(0.0,), workers=0), workdir=work)
    assert again.clips == 0
    assert rep2.features["train"]["build"]["rows_built"] == 0
    assert [(h["lr"], h["wd"]) for h in rep2.heads] == [(1e-2, 0.0)]
    assert len(rep2.heads[0]["history"]) == 3
    # features too big for the memory budget are read from the cache per batch: same numbers
    lazy = probe_encoder(encoder, demo / "train", demo / "val",
                         ProbeConfig(spec=spec, epochs=3, lrs=(1e-2,), wds=(0.0,), workers=0, max_memory_gb=0),
                         workdir=work)
    assert lazy.heads[0]["history"] == rep2.heads[0]["history"]


def test_probe_cli(demo, encoder, two_views, work, tmp_path):
    from salt_cache.cli import app

    out = tmp_path / "probe.json"
    res = CliRunner().invoke(app, ["probe", "--encoder", str(encoder), "--train", str(demo / "train"),
                                   "--val", str(demo / "val"), "--spec", str(two_views), "--workdir", str(work),
                                   "--epochs", "1", "--lrs", "1e-3,1e-2", "--wds", "0.05", "--workers", "0",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert [(h["lr"], h["wd"]) for h in rep["heads"]] == [(1e-3, 0.05), (1e-2, 0.05)]
    assert rep["features"]["val"]["rows"] == 24 and rep["spec"]["name"] == "test-probe"
    assert "lr \\ wd" in res.output and "best head, per class" in res.output and '"top1"' in res.output
    assert "best of 2 heads on val (as V-JEPA 2)" in res.output and "feature ranks" in res.output
    assert "one standard error is <= 2.5 points" in res.output
    # no --class-names: the names come from the data's task.json
    assert list(rep["best"]["per_class"]) == ["move-right", "move-left", "grow", "shrink"]


def test_probe_clips_follow_the_encoders_training_clip_unless_a_spec_is_given():
    from salt_cache.eval.features import probe_spec

    trained = {"frames": 8, "frame_step": 2, "fps": None, "size": 64, "crop": "random-resized", "scale": [0.5, 1.0],
               "ratio": [0.75, 1.35], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    spec, notes = probe_spec(None, {"patch_size": 8, "tubelet_size": 2}, trained, where="t.pt")
    c = spec.clip
    assert (c.frames, c.frame_step, c.size, c.crop, c.mean, c.std) == (8, 2, 64, "center", (0.5,) * 3, (0.25,) * 3)
    assert (spec.views, spec.grid, spec.patch_size) == (1, (4, 8, 8), 8)
    assert "as the encoder was trained on (t.pt): 8 frames, frame_step 2, 64 px" in notes[0]
    by_fps, _ = probe_spec(None, {"patch_size": 16, "tubelet_size": 2}, {**trained, "frame_step": None, "fps": 4.0})
    assert (by_fps.clip.fps, by_fps.clip.frame_step, by_fps.grid) == (4.0, None, (4, 4, 4))
    # an explicit spec wins over the checkpoint's clip; patch and tubelet still follow the encoder
    spec, notes = probe_spec("demo-probe", {"patch_size": 16, "tubelet_size": 4}, trained)
    assert (spec.name, spec.patch_size, spec.tubelet_size, spec.grid) == ("demo-probe", 16, 4, (2, 4, 4))
    assert "set to the encoder's 16/4" in notes[0]
    # no clip, no spec: refused, never a silent default geometry
    with pytest.raises(SaltCacheError, match=r"^base\.pt: records no training clip .*pass --spec"):
        probe_spec(None, {"patch_size": 8, "tubelet_size": 2}, None, where="base.pt")
    with pytest.raises(SaltCacheError, match=r"t\.pt: clip: frames: expected an integer"):
        probe_spec(None, {"patch_size": 8, "tubelet_size": 2}, {**trained, "frames": "eight"}, where="t.pt")


def test_init_model_records_a_clip_the_probe_then_uses(demo, encoder, work, tmp_path):
    from salt_cache.cli import app

    runner = CliRunner()
    args = ["--train", str(demo / "train"), "--val", str(demo / "val"), "--workdir", str(work), "--epochs", "1",
            "--lrs", "1e-3", "--wds", "0.05", "--workers", "0"]
    res = runner.invoke(app, ["probe", "--encoder", str(encoder)] + args)  # an encoder with no clip
    assert res.exit_code == 1 and "records no training clip" in res.output and "--spec" in res.output
    assert len(res.output.strip().splitlines()) == 1
    base = tmp_path / "base.pt"
    res = runner.invoke(app, ["init-model", "--model", "micro", "--patch-size", "8", "--out", str(base),
                              "--frames", "4", "--frame-step", "2", "--size", "32"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "probe.json"
    res = runner.invoke(app, ["probe", "--encoder", str(base), "--out", str(out)] + args)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    c = rep["spec"]["clip"]
    assert (c["frames"], c["frame_step"], c["size"], c["crop"], rep["spec"]["views"]) == (4, 2, 32, "center", 1)
    assert rep["spec_from"] == "base.pt meta.clip" and rep["features"]["val"]["tokens"] == 32
    for bad, msg in ((["--frames", "4", "--size", "32"], "frame_step: frames, frame_step and size record"),
                     (["--frames", "5", "--frame-step", "2", "--size", "32"], "does not tile into tubelets of 2")):
        res = runner.invoke(app, ["init-model", "--model", "micro", "--patch-size", "8", "--out", str(tmp_path / "x.pt")] + bad)
        assert res.exit_code == 1 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "x.pt").exists()


def test_task_info_reads_the_data_roots_task_json_then_index_json(demo, tmp_path):
    from salt_cache.shards import task_info

    info = task_info(demo / "val")  # the demo data writes task.json at its root
    assert info["name"] == "demo task (direction of time)" and info["classes"] == ["move-right", "move-left", "grow", "shrink"]
    folder = tmp_path / "data" / "val"
    folder.mkdir(parents=True)
    assert task_info(folder) == {"name": str(folder), "classes": None, "from": "folder path"}
    (folder / "index.json").write_text(json.dumps({"samples": 3, "task": "kinetics-mini"}))
    assert task_info(folder)["name"] == "kinetics-mini"
    (tmp_path / "data" / "task.json").write_text(json.dumps({"name": "counting", "classes": ["one", "two"]}))
    assert task_info(folder) == {"name": "counting", "classes": ["one", "two"], "from": str(tmp_path / "data" / "task.json")}


def test_probe_bad_inputs_are_one_line_errors(demo, encoder, tmp_path):
    from salt_cache.cli import app
    from salt_cache.shards import ShardsConfig, write_shards

    from conftest import write_video

    spec = write_spec(tmp_path / "spec.yaml")
    runner = CliRunner()
    res = runner.invoke(app, ["probe", "--encoder", str(tmp_path / "nope.pt"), "--train", str(demo / "train"),
                              "--val", str(demo / "val")])
    assert res.exit_code == 1 and "nope.pt: checkpoint not found" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1

    # shards packed from a plain folder carry no labels
    for i in range(2):
        write_video(tmp_path / "videos" / f"clip{i}.mp4", frames=8, height=32, width=32, seed=i)
    write_shards(ShardsConfig(tmp_path / "videos", tmp_path / "unlabelled", workers=1))
    with pytest.raises(SaltCacheError, match=r"shard-000000\.tar: val clip clip\d has no label \(and 1 more"):
        probe_encoder(encoder, demo / "train", tmp_path / "unlabelled", ProbeConfig(spec=spec, workers=0))
    res = runner.invoke(app, ["probe", "--encoder", str(encoder), "--train", str(demo / "train"),
                              "--val", str(tmp_path / "unlabelled"), "--spec", str(spec)])
    assert res.exit_code == 1 and "has no label" in res.output and len(res.output.strip().splitlines()) == 1

    with pytest.raises(SaltCacheError, match="same shard is in both"):
        probe_encoder(encoder, demo / "train", demo / "train", ProbeConfig(spec=spec))
    with pytest.raises(SaltCacheError, match="clip.size 36 is not a multiple of the encoder's patch size 8"):
        probe_encoder(encoder, demo / "train", demo / "val", ProbeConfig(
            spec=write_spec(tmp_path / "odd.yaml", patch_size=4, clip={"frames": 4, "frame_step": 2, "size": 36})))
    res = runner.invoke(app, ["probe", "--encoder", str(encoder), "--train", str(demo / "train"),
                              "--val", str(demo / "val"), "--spec", str(spec), "--lrs", "1e-3,fast"])
    assert res.exit_code == 1 and "--lrs: expected comma-separated numbers, got 'fast'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_select_checkpoints_on_a_real_run(demo, tmp_path):
    """A real (Stage 1) run folder: same layout and log as Stage 2, and load_run_encoder reads
    every stage's checkpoints. Three checkpoints, each probed; the fit is over those points."""
    from salt_cache.eval.selection import select_checkpoints
    from salt_cache.train.config import DataConfig, ModelConfig
    from salt_cache.train.teacher import DecoderConfig, TeacherConfig, train
    from salt_cache.video import ClipSpec

    run = tmp_path / "run"
    cfg = TeacherConfig(model=ModelConfig(name="micro", patch_size=8, tubelet_size=2),
                        clip=ClipSpec(frames=4, frame_step=2, size=32),
                        data=DataConfig(train=str(demo / "train"), shuffle_buffer=8),
                        decoder=DecoderConfig(embed_dim=32, depth=1, num_heads=2), steps=3, batch_size=2,
                        workers=1, device="cpu", bf16=False, log_every=1, ckpt_every=1, val_every=100)
    train(cfg, run, show_progress=False)
    train_shards = f"{demo}/train/shard-000000.tar"
    # no spec: each checkpoint is probed on the run's own clip (config clip), centre-cropped
    res = select_checkpoints(run, train_shards, demo / "val", ProbeConfig(epochs=2, lrs=(1e-3,), wds=(0.01,), workers=1),
                             loss_window=2, workdir=tmp_path / "w", out=tmp_path / "sel")
    assert res.spec["clip"]["crop"] == "center" and (res.spec["clip"]["frames"], res.spec["clip"]["size"]) == (4, 32)
    log = read_log(run / "log.csv")
    assert [p["step"] for p in res.points] == [1, 2, 3]
    for p in res.points:
        assert p["loss"] == pytest.approx(loss_at(log, p["step"], 2)[0]) and p["loss_rows"] == min(2, p["step"])
        assert 0 <= p["top1"] <= 1
    fit = linear_fit([p["loss"] for p in res.points], [p["top1"] for p in res.points])
    assert res.fit == fit and res.stage == "teacher"
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["fit"] == fit
    assert (tmp_path / "sel" / "selection.png").read_bytes()[:4] == b"\x89PNG"
    from io import StringIO

    from rich.console import Console

    from salt_cache.eval.tables import print_selection

    text = StringIO()
    print_selection(res, Console(file=text, width=120))
    r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.3f}"
    assert f"R^2 = {r2}" in text.getvalue()
    # three different encoders: each saved once and encoded once into its own feature cache
    assert len(list((tmp_path / "w" / "encoders").iterdir())) == 3
    assert len([p for p in (tmp_path / "w").iterdir() if p.name != "encoders"]) == 3
    with pytest.raises(SaltCacheError, match="no checkpoint for step 5"):
        select_checkpoints(run, train_shards, demo / "val", steps=[5])
