"""Frozen evaluation: the attentive probe, its side-by-side heads, the feature cache reuse, and
checkpoint selection (loss vs. accuracy)."""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from salt_cache.errors import SaltCacheError
from salt_cache.probe import (
    FeatureSet, ProbeConfig, class_index, make_heads, print_report, probe_encoder, train_probes,
)
from salt_cache.selection import linear_fit, loss_at, plot_selection, read_log

PROTOS = torch.randn(4, 16, generator=torch.Generator().manual_seed(123))


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
