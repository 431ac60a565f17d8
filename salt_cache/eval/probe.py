"""Frozen-backbone evaluation: attentive probes trained on cached encoder tokens.

The encoder runs once per clip and view (`salt_cache.eval.features`: `build_cache` stores its
final-norm tokens in Zarr, keyed by the encoder's sha256, the clip spec and the shard list), so
extra epochs, extra heads and re-runs cost no encoder forwards. Several probes ("heads"), one per
(lr, weight decay) pair, then train side by side on the same batches; the best one on the
validation split is reported, as in V-JEPA 2, with the binomial standard error of its top-1 and
the RankMe / effective rank of the features (`salt_cache.diagnostics`). The probe model is
`salt_cache.models.probe`.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from salt_cache.config import to_dict
from salt_cache.errors import SaltCacheError
from salt_cache.eval.config import ProbeConfig
from salt_cache.eval.features import (
    _digest, build_features, check_labelled, class_index, encode_split, encoder_checkpoint, load_split, probe_spec,
)
from salt_cache.models.probe import AttentiveProbe, ProbeHeads
from salt_cache.shards import task_info

# one binomial standard error of the best head's top-1 above this many points earns a warning
MAX_SE_POINTS = 2.5
RANK_ROWS = 1024  # feature rows (clip x view) per split behind the report's RankMe / effective rank


@dataclass
class ProbeReport:
    """What `probe_encoder` returns, and writes as JSON (`to_dict`). top1: the best head's val
    top-1 (chosen on val: `selection`), top1_se its binomial standard error; best: that head's
    lr, wd, val loss and per-class accuracy; heads: every head's (lr, wd, top-1, history), grid:
    the same as an lr x wd table; ranks: RankMe / effective rank of each split's features;
    encoder, task, data, spec, spec_from (where the clip geometry came from), probe (the
    ProbeConfig), features (per split: cache, clips, rows, tokens, width, encoder forwards of
    this call), classes, chance, majority, notes, wall_s."""

    encoder: dict
    task: str
    data: dict
    spec: dict
    spec_from: str | None
    probe: dict
    features: dict
    classes: list
    num_classes: int
    chance: float
    majority: float
    top1: float
    top1_se: float
    selection: str
    ranks: dict
    best: dict
    heads: list
    grid: dict
    notes: list
    wall_s: dict

    def to_dict(self) -> dict:
        return asdict(self)


def make_heads(dim: int, num_classes: int, config: "ProbeConfig") -> ProbeHeads:
    """One probe per (lr, wd) of `config.grid()`, all with the same initial weights: a pure
    function of `config.seed`."""
    torch.manual_seed(config.seed)
    base = AttentiveProbe(dim, num_classes, config.depth, config.num_heads, config.mlp_ratio)
    return ProbeHeads(base, len(config.grid()))


def head_param_groups(heads: ProbeHeads, grid: list[tuple[float, float]]) -> list[dict]:
    """Two AdamW groups per head: decayed weights and undecayed biases / norms (V-JEPA 2's rule:
    no decay on biases and 1-D parameters). `base_lr` drives the schedule."""
    groups = []
    for i, (head, (lr, wd)) in enumerate(zip(heads.heads, grid)):
        decay, no_decay = [], []
        for name, p in head.named_parameters():
            (no_decay if name.endswith("bias") or p.ndim <= 1 else decay).append(p)
        groups.append({"params": decay, "lr": lr, "base_lr": lr, "weight_decay": wd, "head": i})
        groups.append({"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0, "head": i})
    return groups


class FeatureSet:
    """Frozen tokens of a split as a tensor [rows, N, D] (any float dtype; batches come out as
    float32), with `labels` [rows] (class indices) and `groups` [rows] (clip index of each row:
    several views of one clip are averaged at evaluation)."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None):
        if tokens.ndim != 3:
            raise SaltCacheError(f"features: expected [rows, tokens, dim], got shape {tuple(tokens.shape)}")
        if len(labels) != len(tokens):
            raise SaltCacheError(f"features: {len(tokens)} rows but {len(labels)} labels")
        self.tokens = tokens
        self.labels = labels.long()
        self.groups = torch.arange(len(tokens)) if groups is None else groups.long()

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def batch(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[idx].to(device, torch.float32), self.labels[idx].to(device)


@dataclass
class ProbeRun:
    """What `train_probes` returns: the trained heads and one record per head."""

    model: ProbeHeads
    grid: list[tuple[float, float]]
    records: list[dict] = field(default_factory=list)
    best: int = 0
    predictions: np.ndarray | None = None  # best head's predicted class per val clip
    targets: np.ndarray | None = None  # true class per val clip


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine from 1 to 0 (V-JEPA 2's probe schedule has no warmup)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate_heads(model: ProbeHeads, data: FeatureSet, num_classes: int, batch_size: int,
                   device) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (top-1 per head [K], cross-entropy per head [K], predictions [K, clips], targets
    [clips]). A clip's views are averaged in probability before the argmax and the loss; clips
    follow the sorted order of `data.groups`."""
    model.eval()
    k = len(model.heads)
    clips, inverse = torch.unique(data.groups, return_inverse=True)
    probs = torch.zeros(k, len(clips), num_classes, dtype=torch.float64)
    views = torch.zeros(len(clips), dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x, _ = data.batch(idx, device)
        p = model(x).float().softmax(-1).double().cpu()  # [K, B, C]
        probs.index_add_(1, inverse[idx], p)
        views.index_add_(0, inverse[idx], torch.ones(len(idx), dtype=torch.float64))
    probs /= views.view(1, -1, 1)
    targets = torch.zeros(len(clips), dtype=torch.long)
    targets[inverse] = data.labels
    pred = probs.argmax(-1)  # [K, clips]
    top1 = (pred == targets).double().mean(1).numpy()
    nll = -probs.gather(-1, targets.view(1, -1, 1).expand(k, -1, 1)).clamp_min(1e-12).log().mean((1, 2)).numpy()
    return top1, nll, pred.numpy(), targets.numpy()


def train_probes(train: FeatureSet, val: FeatureSet, num_classes: int, config: ProbeConfig = ProbeConfig(),
                 device: str | torch.device = "cpu", progress=None) -> ProbeRun:
    """Train one attentive probe per (lr, wd) of `config.grid()` side by side: each step draws
    one batch of train features, every head sees it, one backward pass updates all heads (the
    summed loss; the heads share no parameter, so each gets exactly its own gradient).

    Heads are scored on `val` after every epoch; the reported top-1 is the last epoch's, and the
    best head is the one with the highest final top-1 (ties: lower val loss)."""
    if len(train) == 0 or len(val) == 0:
        raise SaltCacheError(f"probe: need labelled train and val clips (got {len(train)} train rows, {len(val)} val rows)")
    if train.dim != val.dim:
        raise SaltCacheError(f"probe: train features are {train.dim} wide but val features {val.dim}")
    device = torch.device(device)
    grid = config.grid()
    model = make_heads(train.dim, num_classes, config).to(device)
    opt = torch.optim.AdamW(head_param_groups(model, grid), betas=config.betas)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)
    history: list[list[dict]] = [[] for _ in grid]
    task = progress.add_task(f"probe: {len(grid)} heads", total=config.epochs) if progress else None
    step = 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum = torch.zeros(len(grid), dtype=torch.float64)
        seen = 0
        for idx in torch.randperm(len(train), generator=gen).split(config.batch_size):
            factor = _lr_factor(step, total, warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            x, y = train.batch(idx, device)
            logits = model(x)  # [K, B, C]
            losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(grid)), reduction="none")
            losses = losses.view(len(grid), -1).mean(1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            loss_sum += losses.detach().double().cpu() * len(idx)
            seen += len(idx)
            step += 1
        top1, nll, pred, targets = evaluate_heads(model, val, num_classes, config.batch_size, device)
        for i in range(len(grid)):
            history[i].append({"epoch": epoch + 1, "train_loss": float(loss_sum[i] / seen),
                               "val_loss": float(nll[i]), "top1": float(top1[i])})
        if progress:
            progress.advance(task)
    records = [{"head": i, "lr": lr, "wd": wd, "top1": float(top1[i]), "val_loss": float(nll[i]),
                "train_loss": history[i][-1]["train_loss"], "history": history[i]}
               for i, (lr, wd) in enumerate(grid)]
    best = max(range(len(grid)), key=lambda i: (top1[i], -nll[i], -i))
    return ProbeRun(model=model.cpu().eval(), grid=grid, records=records, best=best,
                    predictions=pred[best], targets=targets)


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, names: list) -> dict:
    """{class name: {"accuracy", "count"}} over the classes present in `target`."""
    out = {}
    for c, name in enumerate(names):
        mask = target == c
        if mask.any():
            out[str(name)] = {"accuracy": float((pred[mask] == c).mean()), "count": int(mask.sum())}
    return out


def probe_encoder(encoder_ckpt: Path, train, val, config: ProbeConfig = ProbeConfig(), *,
                  workdir: Path | None = None, out: Path | None = None, class_names: list[str] | None = None,
                  progress=None) -> ProbeReport:
    """Frozen evaluation of an encoder checkpoint with attentive probes, as `config` says.

    encoder_ckpt: an encoder checkpoint, or a training run's checkpoint or folder (its encoder is
    extracted, see `encoder_checkpoint`); train / val: labelled shards (a folder,
    brace pattern, comma list or list). Features are cached under `workdir` (default: a temporary
    folder, removed afterwards). `class_names[i]` names integer label i in the report (default:
    the "classes" of the val data's task.json, see `shards.task_info`).

    Returns a ProbeReport (also written as JSON to `out`, a .json file or a folder)."""
    from salt_cache.checkpoint import file_sha256
    from salt_cache.shards import resolve_shards

    t_start = time.perf_counter()
    spec = config.spec
    given = Path(encoder_ckpt)
    if not given.exists():
        raise SaltCacheError(f"{given}: checkpoint not found")
    paths = {"train": resolve_shards(train), "val": resolve_shards(val)}
    shared = {p.resolve() for p in paths["train"]} & {p.resolve() for p in paths["val"]}
    if shared:
        raise SaltCacheError(f"{sorted(shared)[0]}: the same shard is in both --train and --val")
    clip_counts = {split: check_labelled(ps, split) for split, ps in paths.items()}

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="salt-probe-")
        workdir = Path(tmp.name)
    try:
        encoder_ckpt, enc_cfg, source = encoder_checkpoint(given, Path(workdir))
        if config.num_heads is None:
            config = replace(config, num_heads=int(enc_cfg["num_heads"]))
        spec_from = "--spec" if spec is not None else source["clip_from"] if source.get("clip") else None
        spec, notes = probe_spec(spec, enc_cfg, source.get("clip"), where=str(given))
        sha = file_sha256(encoder_ckpt)
        root = Path(workdir) / f"{sha[:12]}-{_digest(to_dict(spec))[:8]}"
        features, loaded = {}, {}
        t0 = time.perf_counter()
        for split, ps in paths.items():
            cache_dir = root / f"{split}-{_digest([str(p.resolve()) for p in ps])[:8]}"
            build = encode_split(encoder_ckpt, ps, spec, cache_dir, batch_size=config.encode_batch_size,
                                 workers=config.workers, device=config.device, progress=progress)
            keys, refs, labels, reader = load_split(cache_dir, split)
            n_clips = clip_counts[split]
            if not keys:
                raise SaltCacheError(f"{cache_dir}: no {split} clip could be decoded ({n_clips} clips in {len(ps)} shards)")
            loaded[split] = (keys, refs, labels, reader)
            features[split] = {"cache": str(cache_dir), "shards": len(ps), "clips": n_clips,
                               "clips_used": len(keys), "rows": sum(len(r) for r in refs),
                               "tokens": int(reader.tokens), "dim": int(reader.teacher_dim),
                               "grid": list(reader.grid), "build": build}
            if len(keys) < n_clips:
                notes.append(f"{split}: {n_clips - len(keys)} of {n_clips} clips failed to decode and are left out")
        t_features = time.perf_counter() - t0
        classes, index, note = class_index(loaded["train"][2], loaded["val"][2])
        if note:
            notes.append(note)
        data = {s: build_features(*loaded[s], index, config.max_memory_gb * 2**30) for s in ("train", "val")}
        t0 = time.perf_counter()
        ranks = {s: split_ranks(data[s]) for s in ("train", "val")}
        t_ranks = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = train_probes(data["train"], data["val"], len(classes), config, device=config.device, progress=progress)
        t_train = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()

    task = task_info(paths["val"][0].parent)
    class_names = class_names or task["classes"]
    names = [class_names[c] if class_names and isinstance(c, int) and 0 <= c < len(class_names) else c
             for c in classes]
    counts = np.bincount(run.targets, minlength=len(classes))
    best = run.records[run.best]
    n_val = len(run.targets)
    se = top1_standard_error(best["top1"], n_val)
    if 100 * se > MAX_SE_POINTS:
        notes.append(f"one standard error of the best top-1 is {100 * se:.1f} points on {n_val} val clips: validation "
                     f"sets must be large enough that one standard error is <= {MAX_SE_POINTS:g} points")
    report = ProbeReport(
        encoder={"path": str(given), **source, "sha256": sha, "config": enc_cfg},
        task=task["name"],
        data={split: [str(p) for p in ps] for split, ps in paths.items()},
        spec=to_dict(spec),
        spec_from=spec_from,
        probe={**to_dict(config), "spec": None if config.spec is None else str(config.spec)},
        features=features,
        classes=[str(n) for n in names],
        num_classes=len(classes),
        chance=1.0 / len(classes),
        majority=float(counts.max() / counts.sum()),
        top1=best["top1"],
        top1_se=se,
        selection=f"best of {len(run.records)} heads on val (as V-JEPA 2)",
        ranks=ranks,
        best={"head": best["head"], "lr": best["lr"], "wd": best["wd"], "top1": best["top1"],
                 "val_loss": best["val_loss"],
                 "per_class": per_class_accuracy(run.predictions, run.targets, names)},
        heads=run.records,
        grid=head_grid(run.records),
        notes=notes,
        wall_s={"features": round(t_features, 3), "ranks": round(t_ranks, 3), "train": round(t_train, 3),
                   "total": round(time.perf_counter() - t_start, 3)},
    )
    if out is not None:
        write_report(report.to_dict(), out)
    return report


def top1_standard_error(top1: float, clips: int) -> float:
    """Binomial standard error sqrt(p (1 - p) / n) of a top-1 measured on n val clips (a fraction)."""
    return math.sqrt(top1 * (1.0 - top1) / clips) if clips > 0 else float("nan")


def split_ranks(data: FeatureSet, rows: int = RANK_ROWS) -> dict:
    """RankMe / effective rank of a split's features: up to `rows` rows (clip x view) spread
    evenly over the split, token level (an equal share of MAX_TOKEN_ROWS token rows from each)
    and clip level (each row's mean token). -> the four `diagnostics.RANK_KEYS` + "rows"."""
    from salt_cache.diagnostics import RankSample, even_sample

    picked = even_sample(len(data), rows)
    sample = RankSample(len(picked))
    for start in range(0, len(picked), 64):
        sample.add(data.tokens[torch.tensor(picked[start:start + 64])], start)
    return {**sample.ranks(), "rows": len(picked)}


def head_grid(records: list[dict]) -> dict:
    """Heads as a table: {"lrs", "wds" (first-seen order), "top1": [lr][wd] (None where no head
    has that pair; a repeated pair keeps its best top-1)}."""
    lrs = list(dict.fromkeys(r["lr"] for r in records))
    wds = list(dict.fromkeys(r["wd"] for r in records))
    top1 = [[None] * len(wds) for _ in lrs]
    for r in records:
        i, j = lrs.index(r["lr"]), wds.index(r["wd"])
        top1[i][j] = r["top1"] if top1[i][j] is None else max(top1[i][j], r["top1"])
    return {"lrs": lrs, "wds": wds, "top1": top1}


def report_path(out: Path, name: str = "probe.json") -> Path:
    """Where a report given `out` goes: `out` itself when it is a .json file, else out/`name`."""
    out = Path(out)
    return out if out.suffix == ".json" else out / name


def write_report(report: dict, out: Path, name: str = "probe.json") -> Path:
    """Write JSON to `out` (a .json file, or a folder that gets `name`)."""
    from salt_cache.console import write_json

    path = report_path(out, name)
    write_json(path, report)
    return path
