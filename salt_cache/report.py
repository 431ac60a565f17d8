"""The quickstart's closing report: a table (teacher vs student top-1, chance, wall time per
stage) and two pictures (loss curves of both stages, probe comparison), also as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from salt_cache.config import path_field
from salt_cache.console import console, write_json
from salt_cache.errors import SaltCacheError


def _read_csv(path: Path) -> list[dict]:
    from salt_cache.train.runs import read_log

    return read_log(path) if path.is_file() else []


def plot_losses(runs: dict[str, Path], path: Path) -> Path:
    """One panel per run: train loss (log.csv) and validation loss (val.csv) against step."""
    import matplotlib

    from salt_cache.train.runs import RunFolder

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items()):
        folder = RunFolder(run)
        log, val = _read_csv(folder.log), _read_csv(folder.val_log)
        if log:
            ax.plot([r["step"] for r in log], [r["loss"] for r in log], label="train loss")
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probes(reports: dict[str, dict], path: Path) -> Path:
    """Grouped bars: top-1 overall and per class for each encoder, with chance as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    first = next(iter(reports.values()))
    classes = list(first["best"]["per_class"])
    groups = ["all"] + classes
    x = np.arange(len(groups))
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2.5, 3.8))
    for i, (label, rep) in enumerate(reports.items()):
        per = list(rep["best"]["per_class"].values())  # same val split: same classes, same order
        if len(per) != len(classes):
            raise SaltCacheError(f"probe reports disagree on the classes ({len(per)} vs {len(classes)}): not the same val split")
        vals = [rep["top1"]] + [_class_acc(v) for v in per]
        bars = ax.bar(x + (i - (len(reports) - 1) / 2) * width, vals, width, label=f"{label} ({rep['top1']:.1%})")
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in vals], fontsize=7)
    ax.axhline(first["chance"], color="k", ls="--", lw=1, label=f"chance ({first['chance']:.0%})")
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-1 (frozen attentive probe)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _class_acc(v) -> float:
    return float(v["accuracy"] if isinstance(v, dict) else v)


@dataclass(frozen=True)
class ReportConfig:
    """The recipe kind report: the two run folders, the probe reports (teacher, student and
    optionally an untrained baseline), and the folder for report.json, losses.png, probes.png."""

    teacher_run: Path = path_field()
    student_run: Path = path_field()
    teacher_probe: Path = path_field()
    student_probe: Path = path_field()
    baseline_probe: Path | None = path_field(default=None)
    out: Path = path_field(default=Path("."))


def quickstart_report(workdir: Path, config: ReportConfig, results: dict | None = None) -> dict:
    """The closing table and pictures of a recipe run in `workdir` (its pipeline.json gives the
    wall time of every stage); the paths of `config` as given (a recipe resolves them)."""
    wd, c = Path(workdir), config
    out = Path(c.out)
    probes = {}
    keys = (("random init", c.baseline_probe),) if c.baseline_probe is not None else ()
    for label, path in keys + (("teacher", c.teacher_probe), ("student", c.student_probe)):
        path = Path(path)
        if not path.is_file():
            raise SaltCacheError(f"{path}: probe report not found (run the probe stage first)")
        probes[label] = json.loads(path.read_text())
    losses = plot_losses({"Stage 1 teacher (V-Pixel)": Path(c.teacher_run), "Stage 2 student (SALT)": Path(c.student_run)},
                         out / "losses.png")
    bars = plot_probes(probes, out / "probes.png")
    record = json.loads((wd / "pipeline.json").read_text()) if (wd / "pipeline.json").is_file() else {}
    walls = {name: r.get("wall_s") for name, r in record.get("stages", {}).items() if r.get("kind") != "report"}
    report = {
        "task": probes["teacher"].get("task") or "the probes' validation data",
        "teacher_top1": probes["teacher"]["top1"], "student_top1": probes["student"]["top1"],
        "chance": probes["teacher"]["chance"],
        "baseline_top1": probes["random init"]["top1"] if "random init" in probes else None,
        "teacher_encoder": probes["teacher"]["encoder"]["config"], "student_encoder": probes["student"]["encoder"]["config"],
        "top1_se": {label: rep.get("top1_se") for label, rep in probes.items()},
        "ranks": {label: (rep.get("ranks") or {}).get("val") for label, rep in probes.items()},
        "wall_s": walls, "wall_total_s": round(sum(v for v in walls.values() if v), 1),
        "pictures": {"losses": str(losses), "probes": str(bars)},
    }
    write_json(out / "report.json", report)
    print_quickstart(report)
    return report


def print_quickstart(report: dict) -> None:
    t = Table(title=f"SALT quickstart: frozen attentive probe on {report.get('task') or 'the demo task'}")
    t.add_column("", style="bold")
    t.add_column("value", justify="right")
    se = report.get("top1_se") or {}
    ranks = report.get("ranks") or {}

    def top1(label: str, value: float) -> str:
        r = ranks.get(label)
        rank = f" (RankMe {r['rankme_token']:.1f} / {r['rankme_clip']:.1f})" if r else ""
        return f"{value:.1%}" + (f" ± {se[label]:.1%}" if se.get(label) is not None else "") + rank

    t.add_row("teacher top-1 (Stage 1, V-Pixel)", top1("teacher", report["teacher_top1"]))
    t.add_row("student top-1 (Stage 2, SALT)", top1("student", report["student_top1"]))
    if report.get("baseline_top1") is not None:
        t.add_row("untrained encoder top-1 (random init)", top1("random init", report["baseline_top1"]))
    t.add_row("chance", f"{report['chance']:.1%}")
    for name, wall in report["wall_s"].items():
        t.add_row(f"wall time: {name}", "-" if wall is None else f"{wall:.0f} s")
    t.add_row("wall time: total", f"{report['wall_total_s']:.0f} s")
    t.caption = ("top-1: best of the probe heads on val ± one binomial standard error; RankMe of the val "
                 "features, token / clip level")
    console.print(t)
    console.print(f"pictures: {report['pictures']['losses']}, {report['pictures']['probes']}")
