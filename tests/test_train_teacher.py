"""Stage 1 (V-Pixel): the pixel target, the no-leak guarantee, and a micro teacher that learns
and exports a teacher.pt that `build` takes as is."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from salt_cache.cache import BuildConfig, build_cache
from salt_cache.checkpoint import load_encoder
from salt_cache.cli import app
from salt_cache.masks import DEFAULT_MASKS, multiblock_masks
from salt_cache.train.runs import read_log
from salt_cache.train.teacher import TeacherConfig, build_model, patchify, pixel_targets, unpatchify
from salt_cache.train.config import load_run_config
from test_train_engine import cli_args

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1, 1)


def _model():
    torch.manual_seed(0)
    cfg = load_run_config(TeacherConfig, flags={"model.name": "micro", "model.patch_size": 8, "clip.frames": 4,
                                                 "clip.size": 32, "decoder.embed_dim": 64, "decoder.depth": 1,
                                                 "decoder.num_heads": 4})
    return build_model(cfg), cfg


def test_target_normalization_matches_a_hand_computation():
    pixels = torch.rand(1, 3, 4, 4, 6, generator=torch.Generator().manual_seed(0))  # grid (2, 2, 3), patch 2
    targets = pixel_targets(_normalize(pixels), MEAN, STD, patch=2, tubelet=2)
    assert targets.shape == (1, 12, 2 * 2 * 2 * 3)
    # token (t=1, h=0, w=2) is flat index 1 * 6 + 0 * 3 + 2 = 8: frames 2-3, rows 0-1, columns 4-5
    per_channel = []
    for c in range(3):
        xs = [float(pixels[0, c, t, y, x]) for t in (2, 3) for y in (0, 1) for x in (4, 5)]
        mu = sum(xs) / 8
        sd = (sum((v - mu) ** 2 for v in xs) / 7) ** 0.5  # unbiased, as VideoMAE
        per_channel.append([(v - mu) / (sd + 1e-6) for v in xs])
    expected = torch.tensor([per_channel[c][i] for i in range(8) for c in range(3)])  # pixel-major, channel-minor
    assert torch.allclose(targets[0, 8], expected, atol=1e-5)
    raw = pixel_targets(_normalize(pixels), MEAN, STD, patch=2, tubelet=2, norm_pix=False)
    expected_raw = torch.tensor([float(pixels[0, c, t, y, x]) for t in (2, 3) for y in (0, 1) for x in (4, 5) for c in range(3)])
    assert torch.allclose(raw[0, 8], expected_raw, atol=1e-6)  # un-normalized back to [0, 1] first
    assert torch.equal(unpatchify(patchify(pixels, 2, 2), (2, 2, 3), 2, 2), pixels)


def test_encoder_never_sees_target_pixels():
    model, cfg = _model()
    clip = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = []
    model.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    for k, (ctx, tgt) in enumerate(multiblock_masks(2, cfg.grid, DEFAULT_MASKS, seed=7)):
        batch = {"clip": clip, "masks": [(ctx, tgt)]}
        # every token outside the context (targets and any the batch truncation left out) gets new pixels
        hidden = torch.ones(2, 32, dtype=torch.bool)
        hidden.scatter_(1, ctx, False)
        tokens = patchify(clip, 8, 2).clone()
        tokens[hidden] = torch.randn(int(hidden.sum()), 2 * 8 * 8, 3)
        changed = unpatchify(tokens, cfg.grid, 8, 2)
        assert not torch.equal(changed, clip)
        seen.clear()
        loss_a, _ = model(batch)
        pred_a = model.predict(clip, ctx, tgt)
        loss_b, _ = model({"clip": changed, "masks": [(ctx, tgt)]})
        pred_b = model.predict(changed, ctx, tgt)
        assert torch.equal(seen[0], seen[2]) and torch.equal(pred_a, pred_b)  # decoder input and output unmoved
        assert not torch.isclose(loss_a, loss_b)  # only the targets moved
        # a context pixel does reach the encoder (the check above is not vacuous)
        tokens = patchify(clip, 8, 2).clone()
        tokens[0, ctx[0, 0]] += 1.0
        seen.clear()
        model({"clip": unpatchify(tokens, cfg.grid, 8, 2), "masks": [(ctx, tgt)]})
        assert not torch.equal(seen[0], model.encoder(clip, ctx))


def test_reconstruction_picture_keeps_context_pixels_and_greys_the_rest():
    model, cfg = _model()
    pixels = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    (ctx, tgt), = multiblock_masks(2, cfg.grid, DEFAULT_MASKS[1:], seed=3)
    rows = model.reconstruct(_normalize(pixels), ctx, tgt)
    assert set(rows) == {"input", "masked", "reconstruction"}
    assert torch.allclose(rows["input"], pixels, atol=1e-6)
    masked, recon = patchify(rows["masked"], 8, 2), patchify(rows["reconstruction"], 8, 2)
    src = patchify(pixels, 8, 2)
    for i in range(2):
        assert torch.allclose(masked[i, ctx[i]], src[i, ctx[i]], atol=1e-6)
        assert torch.allclose(recon[i, ctx[i]], src[i, ctx[i]], atol=1e-6)
        assert torch.all(masked[i, tgt[i]] == 0.5)
        assert not torch.all(recon[i, tgt[i]] == 0.5)


def test_micro_teacher_learns_on_demo_data_and_build_takes_its_teacher(demo, tmp_path):
    """150 CPU steps. The loss is MSE to raw [0, 1] pixels (norm_pix false): on 32 px clips the
    per-patch normalized target is mostly pixel noise and falls only ~2% in 300 steps."""
    out = tmp_path / "run"
    args = ["train-teacher", "--out", str(out), "--data", str(demo / "train"), "--val", str(demo / "val"),
            "--model", "micro", "--steps", "150", "--batch-size", "8", "--workers", "1", "--device", "cpu"]
    rest = {"model.patch_size": 8, "clip.frames": 4, "clip.frame_step": 1, "clip.size": 32, "decoder.embed_dim": 64,
            "decoder.depth": 1, "decoder.num_heads": 4, "norm_pix": "false", "optim.lr": 1e-3,
            "optim.warmup_steps": 10, "log_every": 10, "val_every": 75, "ckpt_every": 75, "val_batches": 1,
            "data.val_batch_size": 8}
    res = runner.invoke(app, args + cli_args(rest))
    assert res.exit_code == 0, res.output
    log = read_log(out / "log.csv")
    assert [r["step"] for r in log] == list(range(10, 151, 10))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.4 * first, (first, last)
    val = read_log(out / "val.csv")
    assert [r["step"] for r in val] == [75, 150] and val[-1]["val_loss"] < 0.4 * first
    assert all(0 <= r["data_wait_frac"] <= 1 and r["samples_per_s"] > 0 for r in log)
    for step in (75, 150):
        png = out / "pictures" / f"step-{step:07d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, ckpt = load_encoder(out / "teacher.pt")
    assert ckpt["kind"] == "encoder" and ckpt["config"]["name"] == "micro" and ckpt["config"]["patch_size"] == 8
    assert ckpt["meta"]["origin"] == "train-teacher" and ckpt["meta"]["step"] == 150
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nclip: {frames: 4, frame_step: 1, size: 32, crop: center}\nviews: 1\n"
                    "patch_size: 8\ntubelet_size: 2\n")
    summary = build_cache(BuildConfig(out / "teacher.pt", demo / "val", spec, tmp_path / "cache", batch_size=4, workers=0))
    assert summary.complete and summary.ok == summary.rows == 12
