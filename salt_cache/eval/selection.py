"""Model selection from the student's training loss (the SALT paper's Figure 3).

Every saved checkpoint of a Stage 2 run is probed on a labelled split; each probe accuracy is
paired with the student's training loss at that step (the mean over the last `window` log rows
up to it), and a straight line is fitted to accuracy against loss. A high R^2 means the loss
alone tells which checkpoint is best, with no downstream evaluation.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from salt_cache.errors import SaltCacheError


def read_log(path: Path) -> list[tuple[int, float]]:
    """A run's log.csv -> [(step, loss)] in file order, rows with an empty or non-finite loss
    left out. Needs `step` and `loss` columns."""
    path = Path(path)
    if not path.is_file():
        raise SaltCacheError(f"{path}: training log not found")
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("step", "loss") if c not in (reader.fieldnames or [])]
        if missing:
            raise SaltCacheError(f"{path}: no '{missing[0]}' column (columns: {', '.join(reader.fieldnames or [])})")
        for i, row in enumerate(reader, start=2):
            try:
                step, loss = int(float(row["step"])), float(row["loss"])
            except (TypeError, ValueError):
                if not (row.get("loss") or "").strip():
                    continue
                raise SaltCacheError(f"{path}: line {i}: step {row.get('step')!r} / loss {row.get('loss')!r} are not numbers") from None
            if math.isfinite(loss):
                rows.append((step, loss))
    return rows


def loss_at(log: list[tuple[int, float]], step: int, window: int = 20) -> tuple[float, int]:
    """Mean training loss over the last `window` log rows with step <= `step`.
    -> (mean loss, rows used); (nan, 0) when no row is that early."""
    if window < 1:
        raise SaltCacheError(f"loss window: expected >= 1, got {window}")
    upto = [loss for s, loss in log if s <= step]
    if not upto:
        return float("nan"), 0
    tail = upto[-window:]
    return float(np.mean(tail)), len(tail)


def linear_fit(x, y) -> dict:
    """Least-squares line y = slope * x + intercept and its R^2 = 1 - SS_res / SS_tot (for one
    predictor this equals Pearson's r squared). R^2 is None below 3 points (two points always
    fit exactly) or when y or x does not vary."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    fit = {"n": n, "slope": None, "intercept": None, "r2": None, "pearson_r": None}
    if n < 2 or np.ptp(x) == 0:
        return fit
    slope, intercept = np.polyfit(x, y, 1)
    fit.update(slope=float(slope), intercept=float(intercept))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if n >= 3 and ss_tot > 0:
        ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
        fit["r2"] = 1.0 - ss_res / ss_tot
        fit["pearson_r"] = float(np.corrcoef(x, y)[0, 1])
    return fit


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """RUN/checkpoints/step-NNNNNNN.pt -> [(step, path)] sorted by step."""
    from salt_cache.train.runs import RunFolder

    run = RunFolder(run_dir)
    if not run.checkpoints.is_dir():
        raise SaltCacheError(f"{run_dir}: not a training run (no checkpoints/ folder)")
    found = run.step_checkpoints()
    if not found:
        raise SaltCacheError(f"{run.checkpoints}: no step-NNNNNNN.pt checkpoints")
    return found


def plot_selection(points: list[dict], fit: dict, path: Path, title: str = "", stage: str = "student") -> Path:
    """Scatter of probe top-1 against training loss, one point per checkpoint (labelled with its
    step), with the fitted line and R^2. Written as PNG with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([p["loss"] for p in points], dtype=float)
    y = np.array([100 * p["top1"] for p in points], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(x, y, color="tab:blue", zorder=3)
    for p, xi, yi in zip(points, x, y):
        ax.annotate(str(p["step"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if fit["slope"] is not None:
        xs = np.linspace(x.min(), x.max(), 50)
        r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.3f}"
        ax.plot(xs, 100 * (fit["slope"] * xs + fit["intercept"]), color="tab:red", label=f"linear fit, $R^2$ = {r2}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{stage} training loss")
    ax.set_ylabel("probe top-1 (%)")
    ax.set_title(title or f"{stage} loss vs. downstream accuracy", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class Selection:
    """What `select_checkpoints` returns, and writes as selection.json (`to_dict`): one point
    per checkpoint {step, checkpoint, loss, loss_rows, top1, lr, wd}, the linear fit of top-1 on
    loss {slope, intercept, r2, pearson_r, n}, the best and the lowest-loss points, and the
    probe's chance, config and clip spec; `plot`: selection.png when written."""

    run: str
    stage: str
    loss_window: int
    points: list
    fit: dict
    best: dict
    lowest_loss: dict
    chance: float
    probe: dict
    spec: dict
    plot: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def select_checkpoints(run_dir: Path, train, val, config=None, *, steps: list[int] | None = None,
                       loss_window: int = 20, workdir: Path | None = None, out: Path | None = None,
                       progress=None) -> Selection:
    """Probe each checkpoint of a Stage 2 run and relate its accuracy to the training loss.

    run_dir: a run folder (log.csv, checkpoints/step-NNNNNNN.pt); train / val: labelled shards;
    config: the `ProbeConfig` of every probe (default: its defaults); steps: only these checkpoint
    steps (default all). Each checkpoint's encoder is saved as an encoder checkpoint and encoded
    into its own feature cache, both under `workdir` (default: a temporary folder). `out` (a
    folder) receives selection.json and selection.png. -> Selection."""
    from salt_cache.eval.probe import ProbeConfig, probe_encoder

    config = config or ProbeConfig()
    from salt_cache.train.runs import RunFolder

    run_dir = Path(run_dir)
    log_path = RunFolder(run_dir).log
    log = read_log(log_path)
    ckpts = list_checkpoints(run_dir)
    if steps is not None:
        wanted = set(int(s) for s in steps)
        unknown = sorted(wanted - {s for s, _ in ckpts})
        if unknown:
            raise SaltCacheError(f"{run_dir}: no checkpoint for step {unknown[0]} (have {', '.join(str(s) for s, _ in ckpts)})")
        ckpts = [(s, p) for s, p in ckpts if s in wanted]
    losses = {}
    for step, path in ckpts:  # every pairing is checked before the first (costly) probe
        losses[step] = loss_at(log, step, loss_window)
        if losses[step][1] == 0:
            raise SaltCacheError(f"{log_path}: no logged loss at or before step {step} ({path.name})")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="salt-select-")
        workdir = Path(tmp.name)
    workdir = Path(workdir)
    points, reports, stages = [], [], set()
    try:
        for step, path in ckpts:
            loss, used = losses[step]
            # the run's encoder is saved as an encoder checkpoint under workdir/encoders, then
            # encoded into its own feature cache under workdir
            report = probe_encoder(path, train, val, config, workdir=workdir, progress=progress)
            stages.add(report.encoder["stage"] or "student")
            reports.append(report)
            points.append({"step": step, "checkpoint": str(path), "loss": loss, "loss_rows": used,
                           "top1": report.top1, "lr": report.best["lr"], "wd": report.best["wd"]})
    finally:
        if tmp is not None:
            tmp.cleanup()
    fit = linear_fit([p["loss"] for p in points], [p["top1"] for p in points])
    stage = "/".join(sorted(stages))
    result = Selection(
        run=str(run_dir), stage=stage, loss_window=loss_window, points=points, fit=fit,
        best=max(points, key=lambda p: p["top1"]), lowest_loss=min(points, key=lambda p: p["loss"]),
        chance=reports[0].chance, probe=reports[0].probe, spec=reports[0].spec,
    )
    if out is not None:
        from salt_cache.console import write_json

        out = Path(out)
        result.plot = str(plot_selection(points, fit, out / "selection.png", stage=stage,
                                         title=f"{run_dir.name}: {stage} loss vs. probe top-1"))
        write_json(out / "selection.json", result.to_dict())
    return result
