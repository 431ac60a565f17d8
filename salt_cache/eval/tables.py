"""Rich tables for the evaluation results (`probe.ProbeReport`, `selection.Selection`)."""

from __future__ import annotations

from pathlib import Path


def print_report(report, console=None) -> None:
    """A ProbeReport: the heads grid, the best head's per-class accuracy, the feature ranks and
    the summary, as rich tables."""
    from rich.table import Table

    from salt_cache.console import console as default_console

    console = console or default_console
    g, best_head = report.grid, report.best["head"]
    if all(v is not None for row in g["top1"] for v in row):
        # a full lr x wd grid: one row per lr, one column per weight decay, best head starred
        grid = Table(title="heads: val top-1 %")
        grid.add_column("lr \\ wd", justify="right")
        for wd in g["wds"]:
            grid.add_column(f"{wd:g}", justify="right")
        best = (report.best["lr"], report.best["wd"])
        for lr, row in zip(g["lrs"], g["top1"]):
            grid.add_row(f"{lr:.0e}", *(f"{100 * v:.1f}" + (" *" if (lr, wd) == best else "") for wd, v in zip(g["wds"], row)))
    else:
        grid = Table(title="probe heads (val top-1)")
        for col in ("head", "lr", "wd", "top-1", "val loss", "train loss"):
            grid.add_column(col, justify="right")
        for r in report.heads:
            mark = " *" if r["head"] == best_head else ""
            grid.add_row(f"{r['head']}{mark}", f"{r['lr']:.0e}", f"{r['wd']:g}", f"{100 * r['top1']:.1f}",
                         f"{r['val_loss']:.3f}", f"{r['train_loss']:.3f}")
    console.print(grid)
    per = Table(title="best head, per class")
    per.add_column("class")
    per.add_column("top-1", justify="right")
    per.add_column("clips", justify="right")
    for name, v in report.best["per_class"].items():
        per.add_row(name, f"{100 * v['accuracy']:.1f}", str(v["count"]))
    console.print(per)
    if report.ranks:
        ranks = Table(title="feature ranks (RankMe / effective rank)")
        for col in ("split", "rows", "RankMe token", "RankMe clip", "eff. rank token", "eff. rank clip"):
            ranks.add_column(col, justify="right")
        for split, r in report.ranks.items():
            ranks.add_row(split, str(r["rows"]), f"{r['rankme_token']:.1f}", f"{r['rankme_clip']:.1f}",
                          f"{r['erank_token']:.1f}", f"{r['erank_clip']:.1f}")
        console.print(ranks)
    best = report.best
    task = f" on {report.task}" if report.task else ""
    summary = Table(title=f"probe of {Path(report.encoder['path']).name}{task}")
    for col in ("top-1 ± 1 s.e.", "chance", "best lr", "best wd", "val clips", "features (s)", "train (s)"):
        summary.add_column(col, justify="right")
    se = report.top1_se
    summary.add_row(f"{100 * best['top1']:.1f}" + ("" if se is None else f" ± {100 * se:.1f}"),
                    f"{100 * report.chance:.1f}", f"{best['lr']:.0e}",
                    f"{best['wd']:g}", str(report.features["val"]["clips_used"]),
                    f"{report.wall_s['features']:.1f}", f"{report.wall_s['train']:.1f}")
    if report.selection:
        summary.caption = f"selection: {report.selection}; clips: {report.spec_from or report.spec['name']}"
    console.print(summary)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def print_selection(result, console=None) -> None:
    """A Selection: one row per checkpoint (step, loss, top-1, best head) and the fit, as rich
    tables."""
    from rich.table import Table

    from salt_cache.console import console as default_console

    console = console or default_console
    table = Table(title=f"checkpoints of {result.run}")
    for col in ("step", f"loss (last {result.loss_window} rows)", "top-1", "lr", "wd"):
        table.add_column(col, justify="right")
    for p in result.points:
        mark = " *" if p["step"] == result.best["step"] else ""
        table.add_row(f"{p['step']}{mark}", f"{p['loss']:.4f}", f"{100 * p['top1']:.1f}", f"{p['lr']:.0e}", f"{p['wd']:g}")
    console.print(table)
    fit = result.fit
    r2 = "n/a (needs 3+ checkpoints and varying accuracy)" if fit["r2"] is None else f"{fit['r2']:.3f}"
    slope = "n/a" if fit["slope"] is None else f"{100 * fit['slope']:.2f} top-1 points per unit loss"
    console.print(f"linear fit of top-1 on loss over {fit['n']} checkpoints: R^2 = {r2}, slope {slope}")
    if result.plot:
        console.print(f"plot: {result.plot}")
