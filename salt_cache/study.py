"""A study's closing report: several encoders ("arms": untrained, teacher, student, ...) probed
the same way on several tasks and seeds, summarized as mean ± std over seeds, the gaps between
chosen pairs of arms with their standard errors, and two pictures.

Every number is read from the probe reports (`probe` stage JSON) and run folders the recipe
wrote; nothing is recomputed. Standard errors are over seeds: se = std / sqrt(n) (std with
n - 1). A gap a - b is reported with se = sqrt(se_a^2 + se_b^2) (the seeds are not paired: each
seed of an arm is its own run) and "holds" when a - b >= 2 se. Each probe's own binomial
standard error (its val set's size) is listed too: with few seeds it bounds how much of the
spread is probe noise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from salt_cache.config import path_field
from salt_cache.console import console, write_json
from salt_cache.errors import SaltCacheError


@dataclass(frozen=True)
class StudyConfig:
    """The recipe kind `study-report`.

    tasks, seeds: what the recipe ran; arms: {key: label} in table order; probe: the path of a
    probe report, a template with {task}, {arm} and {seed} (relative to the work dir); runs:
    {arm: run-folder template} for the loss / RankMe curves (arms without a run are left out);
    cost: {arm: [stage-name templates]} whose wall seconds (WORKDIR/pipeline.json) add up to the
    arm's training cost, e.g. the teacher, its cache build and the student for a SALT student;
    gaps: [[a, b], ...] pairs of arm keys whose difference a - b is tested; out: folder for
    study.json, study.png and curves.png."""

    tasks: list[str]
    seeds: list[int]
    arms: dict[str, str]
    probe: str
    runs: dict[str, str] = field(default_factory=dict)
    cost: dict[str, list[str]] = field(default_factory=dict)
    gaps: list[list[str]] = field(default_factory=list)
    title: str = "study"
    out: Path = path_field(default=Path("."))

    def __post_init__(self) -> None:
        if not self.tasks or not self.seeds or not self.arms:
            raise SaltCacheError("tasks, seeds, arms: expected at least one of each")
        for pair in self.gaps:
            if len(pair) != 2 or any(a not in self.arms for a in pair):
                raise SaltCacheError(f"gaps: {pair}: expected two arm keys out of {', '.join(self.arms)}")
        templates = [("probe", self.probe, ("task", "arm", "seed"))]
        templates += [(f"runs.{arm}", t, ("task", "seed")) for arm, t in self.runs.items()]
        templates += [(f"cost.{arm}", t, ("task", "seed")) for arm, ts in self.cost.items() for t in ts]
        for where, template, names in templates:
            try:
                template.format(**{n: "x" for n in names})
            except (KeyError, IndexError, ValueError) as e:
                raise SaltCacheError(f"{where}: {template!r}: expected a template using only "
                                     f"{', '.join('{' + n + '}' for n in names)} ({type(e).__name__}: {e})") from None
        for name, given in (("runs", self.runs), ("cost", self.cost)):
            unknown = sorted(set(given) - set(self.arms))
            if unknown:
                raise SaltCacheError(f"{name}: {unknown[0]}: not one of the arms ({', '.join(self.arms)})")


def mean_std_se(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample std (n - 1; 0 for one value), standard error of the mean)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, std / math.sqrt(n)


def _read_probe(path: Path) -> dict:
    if not path.is_file():
        raise SaltCacheError(f"{path}: probe report not found (run the recipe's probe stages first)")
    return json.loads(path.read_text())


def collect(workdir: Path, config: StudyConfig) -> dict:
    """Every probe report of the study -> the summary dict (see `study_report`)."""
    wd = Path(workdir)
    record = wd / "pipeline.json"
    walls = json.loads(record.read_text()).get("stages", {}) if record.is_file() else {}
    tasks = {}
    for task in config.tasks:
        arms, chance, name = {}, None, task
        for arm, label in config.arms.items():
            reports = [_read_probe(wd / config.probe.format(task=task, arm=arm, seed=s)) for s in config.seeds]
            top1 = [float(r["top1"]) for r in reports]
            mean, std, se = mean_std_se(top1)
            ranks = [((r.get("ranks") or {}).get("val") or {}) for r in reports]
            arms[arm] = {
                "label": label, "top1": top1, "mean": mean, "std": std, "se": se, "n": len(top1),
                "probe_se": [r.get("top1_se") for r in reports],
                "val_clips": [r.get("features", {}).get("val", {}).get("clips_used") for r in reports],
                "rankme_token": _mean([x.get("rankme_token") for x in ranks]),
                "rankme_clip": _mean([x.get("rankme_clip") for x in ranks]),
                "cost_s": _mean([_cost(walls, config.cost.get(arm), task, s) for s in config.seeds]),
            }
            chance = chance if chance is not None else reports[0].get("chance")
            name = reports[0].get("task") or name
        gaps = []
        for a, b in config.gaps:
            diff = arms[a]["mean"] - arms[b]["mean"]
            se = math.sqrt(arms[a]["se"] ** 2 + arms[b]["se"] ** 2)
            gaps.append({"a": a, "b": b, "diff": diff, "se": se, "z": diff / se if se > 0 else None,
                         "holds": bool(se > 0 and diff >= 2 * se)})
        tasks[task] = {"name": name, "chance": chance, "arms": arms, "gaps": gaps}
    return {"title": config.title, "seeds": list(config.seeds), "tasks": tasks}


def _cost(walls: dict, templates: list[str] | None, task: str, seed: int) -> float | None:
    """Wall seconds of an arm's stages for one task and seed (None: not recorded)."""
    if not templates:
        return None
    times = [(walls.get(t.format(task=task, seed=seed)) or {}).get("wall_s") for t in templates]
    return None if any(v is None for v in times) else float(sum(times))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plot_study(summary: dict, path: Path) -> Path:
    """One panel per task: each arm's mean top-1 (bar) ± one standard error over seeds, every
    seed as a dot, chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.25 * max(len(t["arms"]) for t in tasks.values()) * len(tasks) + 1.5,
                                                     4.0), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items()):
        arms = list(t["arms"].values())
        x = list(range(len(arms)))
        ax.bar(x, [100 * a["mean"] for a in arms], yerr=[100 * a["se"] for a in arms], capsize=4,
               color=[f"C{i}" for i in x], alpha=0.75)
        for i, a in enumerate(arms):
            ax.plot([i] * len(a["top1"]), [100 * v for v in a["top1"]], "k.", ms=5)
            ax.text(i, 100 * a["mean"] + 100 * a["se"] + 1.5, f"{100 * a['mean']:.1f}", ha="center", fontsize=8)
        if t["chance"] is not None:
            ax.axhline(100 * t["chance"], color="k", ls="--", lw=1, label="chance")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xticks(x, [a["label"] for a in arms], rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("top-1 %, frozen attentive probe")
        ax.set_title(t["name"], fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{summary['title']}: mean ± s.e. over {len(summary['seeds'])} seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(workdir: Path, config: StudyConfig, path: Path) -> Path | None:
    """Per task: the validation loss and the val tokens' RankMe of every arm with a run folder,
    against the step, one line per seed."""
    import matplotlib

    from salt_cache.train.runs import RunFolder, read_log

    if not config.runs:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(config.tasks), figsize=(5.0 * len(config.tasks), 6.4), squeeze=False)
    for j, task in enumerate(config.tasks):
        for i, (arm, template) in enumerate(config.runs.items()):
            for k, seed in enumerate(config.seeds):
                val = RunFolder(Path(workdir) / template.format(task=task, arm=arm, seed=seed)).val_log
                rows = read_log(val) if val.is_file() else []
                if not rows:
                    continue
                label = config.arms[arm] if k == 0 else None
                steps = [r["step"] for r in rows]
                axes[0][j].plot(steps, [r["val_loss"] for r in rows], color=f"C{list(config.arms).index(arm)}",
                                marker=".", alpha=0.8, label=label)
                if "rankme_token" in rows[0]:
                    axes[1][j].plot(steps, [r["rankme_token"] for r in rows],
                                    color=f"C{list(config.arms).index(arm)}", marker=".", alpha=0.8, label=label)
        axes[0][j].set_title(f"{task}: validation loss (own objective)", fontsize=9)
        axes[1][j].set_title(f"{task}: RankMe of val tokens", fontsize=9)
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_report(workdir: Path, config: StudyConfig) -> dict:
    """Collect, print, and write out/study.json, out/study.png and out/curves.png. Paths of
    `config` as given (a recipe resolves `out`; templates are taken from `workdir`)."""
    summary = collect(workdir, config)
    out = Path(config.out)
    pictures = {"study": str(plot_study(summary, out / "study.png"))}
    curves = plot_curves(workdir, config, out / "curves.png")
    if curves is not None:
        pictures["curves"] = str(curves)
    record = Path(workdir) / "pipeline.json"
    if record.is_file():
        stages = json.loads(record.read_text()).get("stages", {})
        walls = [r.get("wall_s") for r in stages.values() if r.get("kind") != "study-report" and r.get("wall_s")]
        summary["wall_total_s"] = round(sum(walls), 1)
    summary["pictures"] = pictures
    write_json(out / "study.json", summary)
    (out / "study.md").write_text(study_markdown(summary))
    print_study(summary)
    return summary


def study_markdown(summary: dict) -> str:
    """The study as Markdown tables (one per task, then its gaps), ready for a README."""
    lines = []
    for t in summary["tasks"].values():
        n = len(summary["seeds"])
        lines += [f"**{t['name']}** (chance {100 * t['chance']:.0f}%, {n} seeds)", "",
                  f"| encoder | top-1, mean ± std over {n} seeds | per seed | RankMe token / clip | train wall s |",
                  "| --- | --- | --- | --- | --- |"]
        for a in t["arms"].values():
            rk = "-" if a["rankme_token"] is None else f"{a['rankme_token']:.1f} / {a['rankme_clip']:.1f}"
            cost = "-" if a.get("cost_s") is None else f"{a['cost_s']:.0f}"
            lines.append(f"| {a['label']} | {100 * a['mean']:.1f} ± {100 * a['std']:.1f} | "
                         f"{' '.join(f'{100 * v:.1f}' for v in a['top1'])} | {rk} | {cost} |")
        if t["gaps"]:
            lines += ["", "| gap | difference ± s.e. | holds (≥ 2 s.e.) |", "| --- | --- | --- |"]
            for g in t["gaps"]:
                arms = t["arms"]
                lines.append(f"| {arms[g['a']]['label']} − {arms[g['b']]['label']} | "
                             f"{100 * g['diff']:+.1f} ± {100 * g['se']:.1f} | {'yes' if g['holds'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def print_study(summary: dict) -> None:
    for task, t in summary["tasks"].items():
        table = Table(title=f"{summary['title']}: {t['name']} (frozen attentive probe, {len(summary['seeds'])} seeds)")
        for col in ("encoder", "top-1 mean ± std", "s.e.", "per seed", "probe s.e.", "RankMe tok / clip",
                    "train wall s"):
            table.add_column(col, justify="left" if col == "encoder" else "right")
        for a in t["arms"].values():
            probe_se = [v for v in a["probe_se"] if v is not None]
            rk = ("-" if a["rankme_token"] is None else
                  f"{a['rankme_token']:.1f} / {a['rankme_clip']:.1f}")
            table.add_row(a["label"], f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}", f"{100 * a['se']:.1f}",
                          " ".join(f"{100 * v:.1f}" for v in a["top1"]),
                          f"{100 * max(probe_se):.1f}" if probe_se else "-", rk,
                          "-" if a.get("cost_s") is None else f"{a['cost_s']:.0f}")
        if t["chance"] is not None:
            table.caption = f"chance {100 * t['chance']:.1f}%; s.e. over seeds; probe s.e.: the largest binomial s.e. of one probe"
        console.print(table)
        if t["gaps"]:
            gaps = Table(title=f"{t['name']}: gaps (holds: difference >= 2 s.e.)")
            for col in ("gap", "difference", "s.e.", "difference / s.e.", "holds"):
                gaps.add_column(col, justify="left" if col == "gap" else "right")
            for g in t["gaps"]:
                arms = t["arms"]
                gaps.add_row(f"{arms[g['a']]['label']} - {arms[g['b']]['label']}", f"{100 * g['diff']:+.1f}",
                             f"{100 * g['se']:.1f}", "-" if g["z"] is None else f"{g['z']:+.1f}",
                             "[green]yes[/]" if g["holds"] else "[red]no[/]")
            console.print(gaps)
    if summary.get("wall_total_s") is not None:
        console.print(f"wall time of the recipe's stages: {summary['wall_total_s']:.0f} s")
    console.print("pictures: " + ", ".join(summary["pictures"].values()))
