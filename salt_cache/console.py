"""Terminal output: one rich console, a progress bar with rate and ETA, and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, in the unit the bar was made for: everything done since the task
    started over the time since then (until it finished or was stopped). Not rich's recent-
    window speed, which leaves out start-up and so disagreed with the summaries' rates (a
    build's bar said 37.7 clips/s where its summary said 1.0)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text("--" if (r := rate(task)) is None else f"{r:,.1f} {self.unit}/s", style="cyan")


def rate(task) -> float | None:
    """A rich task's average rate: completed / seconds from its start to its stop (stop_task),
    else to its finish, else to now."""
    if task.stop_time is not None or task.finished_time is None:
        elapsed = task.elapsed
    else:
        elapsed = task.finished_time
    if not elapsed or not task.completed:
        return None
    return task.completed / elapsed


def progress(unit: str = "it") -> Progress:
    """A progress bar with count, rate and ETA; use as a context manager."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )


def write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
