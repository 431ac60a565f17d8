"""Run folders, run-state checkpoints and exact resume. `RunFolder` is the one owner of the
layout below: every other module (recipes, the probe, selection, reports) asks it for a path.

RUN/
  config.yaml                  the resolved config (every default written out)
  log.csv                      one row every log_every steps (see `engine.Interval.columns`)
  val.csv                      step, val_loss, val_loss_<set> every val_every steps, and RankMe /
                               effective rank of the trained encoder's val tokens (rankme_token,
                               rankme_clip, erank_token, erank_clip; `engine.evaluate`)
  checkpoints/step-NNNNNNN.pt  run state every ckpt_every steps (and at the end / at --stop-at); with
                               ckpt_keep_every N only the newest and those at multiples of N stay
  checkpoints/last.pt          the newest run state
  summary.json                 the stage's summary when a session ends
  <export>.pt                  the encoder a finished run hands on (teacher.pt, student.pt, online.pt)
  pictures/step-NNNNNNN.png    what the stage draws at checkpoints (Stage 1 reconstructions)

A run-state checkpoint is a plain dict (tensors, dicts, lists, numbers, strings) loadable with
`torch.load(weights_only=True)`:
  {"format": "salt-cache", "version": 1, "kind": "run-state", "stage": "teacher" | ...,
   "step": int, "config": plain config, "encoder_config": ViTConfig dict,
   "models": {"encoder": state_dict, <other>: state_dict}, "model_configs": {<other>: dict},
   "optimizer": state_dict, "interval": log averages,
   "ranks": [{"rng": {...}, "data": TrainData.state()} for each rank], "meta": {...}}
"models"["encoder"] is always the network the stage exists to train (the teacher in Stage 1,
the student in Stage 2), so `load_run_encoder` works on every stage's checkpoints. An EMA run
(Stage 2 `--ema`) also holds "target_encoder", which is what it evaluates and exports.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from salt_cache.checkpoint import FORMAT, FORMAT_VERSION, atomic_save, load_checkpoint, load_encoder
from salt_cache.errors import SaltCacheError
from salt_cache.models import VideoViT, ViTConfig
from salt_cache import dist
from salt_cache.train.config import config_diff, load_run_config, plain

CKPT_PATTERN = "step-{:07d}.pt"


@dataclass(frozen=True)
class RunFolder:
    """Where everything of a run lies (see the module docstring). Pure paths: nothing is read or
    written on construction."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.csv"

    @property
    def val_log(self) -> Path:
        return self.root / "val.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / CKPT_PATTERN.format(step)

    def picture(self, step: int) -> Path:
        return self.root / "pictures" / CKPT_PATTERN.format(step).replace(".pt", ".png")

    def export(self, name: str) -> Path:
        """The encoder file a finished run hands on: "teacher", "student", "online" -> RUN/<name>.pt."""
        return self.root / f"{name}.pt"

    def can_resume(self) -> bool:
        """A run state to continue from exists."""
        return self.last.is_file()

    def finished(self, export: str) -> bool:
        """The run ran to its last step: its export exists (what recipes ask)."""
        return self.export(export).is_file()

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every step checkpoint, by step."""
        found = []
        for p in self.checkpoints.glob("step-*.pt"):
            m = re.fullmatch(r"step-(\d+)\.pt", p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    @staticmethod
    def state_file(path: Path) -> Path:
        """A run folder -> its newest run state; a checkpoint file stays itself."""
        path = Path(path)
        return RunFolder(path).last if path.is_dir() else path

    @staticmethod
    def of_checkpoint(path: Path) -> "RunFolder":
        """The run folder a run-state checkpoint belongs to (RUN/checkpoints/x.pt -> RUN)."""
        return RunFolder(Path(path).parent.parent)


def resolve_config(cls: type, out: Path, config_path: Path | None, resume: bool, flags: dict | None = None,
                   sets: list[str] | None = None):
    """The config of a run: --config YAML, or on --resume without one the run's own
    config.yaml; then explicit flags and --set overrides on top."""
    base = None
    if config_path is None and resume:
        stored = RunFolder(out).config
        if not stored.is_file():
            raise SaltCacheError(f"{out}: nothing to resume (no config.yaml in this folder)")
        base = yaml.safe_load(stored.read_text()) or {}
    return load_run_config(cls, config_path, flags=flags, sets=sets, base=base)


def rng_state() -> dict:
    """Every global RNG of this process, as plain data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": [int(k) for k in np_state[1]], "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "internal": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().cpu()  # this process's device only
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Run:
    """A run folder seen from one rank. Only rank 0 writes; every rank reads the checkpoint.

    After `Run(...)`: `self.state` is the checkpoint being resumed (None for a fresh run) and
    `self.step` the step to start from."""

    def __init__(self, out: Path, config, env: dist.DistEnv, stage: str, log_columns: list[str],
                 val_columns: list[str], resume: bool = False):
        self.dir, self.config, self.env, self.stage = Path(out), config, env, stage
        self.folder = RunFolder(self.dir)
        self.log_path, self.val_path = self.folder.log, self.folder.val_log
        self.log_columns, self.val_columns = list(log_columns), list(val_columns)
        self.state: dict | None = None
        self.step = 0
        last = self.folder.last
        if resume:
            if not last.is_file():
                raise SaltCacheError(f"{self.dir}: nothing to resume (no checkpoints/last.pt)")
            self.state = self._check(load_checkpoint(last, kind="run-state"), last)
            self.step = int(self.state["step"])
        elif last.is_file() or _has_rows(self.log_path):
            raise SaltCacheError(f"{self.dir}: holds a run already; pass --resume to continue it or choose another --out")
        dist.barrier(env)  # every rank has checked the folder before rank 0 writes to it
        if env.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.folder.config.write_text(yaml.safe_dump(plain(config), sort_keys=False))
            _start_csv(self.log_path, self.log_columns, self.step)
            _start_csv(self.val_path, self.val_columns, self.step)

    def _check(self, ckpt: dict, path: Path) -> dict:
        if ckpt.get("stage") != self.stage:
            raise SaltCacheError(f"{path}: a {ckpt.get('stage')!r} run, not a {self.stage!r} run")
        stored = ckpt["config"]
        try:
            # a field added to the config since this checkpoint was written reads as its default
            stored = plain(load_run_config(type(self.config), base=stored))
        except SaltCacheError:
            pass  # e.g. a field since removed: compare as stored, the diff names it
        diff = config_diff(stored, plain(self.config))
        if diff:
            raise SaltCacheError(f"{path}: config differs from the run's at {diff} (checkpoint vs now); "
                                 "resume with the run's own config")
        saved_world = len(ckpt["ranks"])
        if saved_world != self.env.world_size:
            raise SaltCacheError(f"{path}: saved by {saved_world} process(es), resumed with {self.env.world_size}; "
                                 "resume with the same world size")
        return ckpt

    # ---------------------------------------------------------------- resume

    def restore(self, models: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Load model and optimizer states from the resumed checkpoint (no-op for a fresh run)."""
        if self.state is None:
            return
        for name, module in models.items():
            module.load_state_dict(self.state["models"][name])
        if optimizer is not None:
            optimizer.load_state_dict(self.state["optimizer"])

    def data_state(self) -> dict | None:
        """This rank's data position in the resumed checkpoint."""
        return None if self.state is None else self.state["ranks"][self.env.rank]["data"]

    def restore_rng(self) -> None:
        """Restore this rank's RNGs; call last, after building models and loaders."""
        if self.state is not None:
            set_rng_state(self.state["ranks"][self.env.rank]["rng"])

    # ---------------------------------------------------------------- writing

    def log(self, row: dict) -> None:
        if self.env.is_main:
            _append_csv(self.log_path, self.log_columns, row)

    def log_val(self, row: dict) -> None:
        if self.env.is_main:
            _append_csv(self.val_path, self.val_columns, row)

    def save(self, step: int, models: dict[str, nn.Module], optimizer: torch.optim.Optimizer, data_state: dict,
             interval: dict, model_configs: dict | None = None, meta: dict | None = None) -> Path | None:
        """Write checkpoints/step-NNNNNNN.pt and last.pt (collective: every rank must call it)."""
        ranks = dist.all_gather_objects({"rng": rng_state(), "data": data_state}, self.env)
        if not self.env.is_main:
            return None
        state = {
            "format": FORMAT, "version": FORMAT_VERSION, "kind": "run-state", "stage": self.stage,
            "step": int(step), "config": plain(self.config),
            "encoder_config": models["encoder"].config.to_dict(),
            "models": {k: _cpu_state(m) for k, m in models.items()},
            "model_configs": plain(model_configs or {}),
            "optimizer": _cpu(optimizer.state_dict()), "interval": interval,
            "ranks": [_cpu(r) for r in ranks], "meta": plain(meta or {}),
        }
        path = self.folder.checkpoint(step)
        atomic_save(state, path)
        atomic_save(state, self.folder.last)
        self.prune(step)
        return path

    def prune(self, newest: int) -> list[int]:
        """Delete step checkpoints other than `newest` whose step is not a multiple of
        config.ckpt_keep_every (nothing when it is 0); returns the steps deleted."""
        keep = int(getattr(self.config, "ckpt_keep_every", 0) or 0)
        gone = []
        if keep:
            for s, p in self.folder.step_checkpoints():
                if s != newest and s % keep:
                    p.unlink(missing_ok=True)
                    gone.append(s)
        return gone


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _has_rows(path: Path) -> bool:
    """A log with at least one row: a run that trained (not one that failed while starting)."""
    if not path.is_file():
        return False
    with open(path) as f:
        return sum(1 for line in f if line.strip()) > 1


def _fmt(v) -> str:
    # repr keeps every bit of a float: resumed and uninterrupted logs compare exactly
    return repr(float(v)) if isinstance(v, float) else str(v)


def _start_csv(path: Path, columns: list[str], keep_through: int) -> None:
    """Write the header, keeping the rows of steps <= keep_through when resuming (a run that
    stopped after its last checkpoint logged steps that the resumed run logs again)."""
    rows = []
    if keep_through > 0 and path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_through]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _append_csv(path: Path, columns: list[str], row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=columns).writerow({c: _fmt(row[c]) for c in columns})


def read_log(path: Path) -> list[dict]:
    """log.csv / val.csv rows as dicts of floats (step as int; an empty cell, e.g. a column added
    after a resumed run's earlier rows, reads as nan)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v) if v.strip() else float("nan")) for k, v in r.items()}
                for r in csv.DictReader(f)]


def load_run_encoder(path: Path, device: str | torch.device = "cpu") -> tuple[VideoViT, dict]:
    """Any run checkpoint (or a run folder: its checkpoints/last.pt, or an encoder checkpoint)
    -> (encoder in eval mode on `device`, meta). meta: kind, stage, step, run, config (the run's),
    "encoder" (which of the run's encoders), plus the checkpoint's own meta (e.g. the last
    validation loss). An EMA run gives its target encoder, as its student.pt does (V-JEPA 2
    evaluates the target encoder)."""
    path = RunFolder.state_file(path)
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") == "encoder":
        model, info = load_encoder(path, device)
        return model, {"kind": "encoder", "config": info.get("config"), **info.get("meta", {})}
    if ckpt.get("kind") != "run-state":
        raise SaltCacheError(f"{path}: holds a {ckpt.get('kind')!r} checkpoint, expected a run state or an encoder")
    which = "target_encoder" if "target_encoder" in ckpt.get("models", {}) else "encoder"
    try:
        model = VideoViT(ViTConfig.from_dict(ckpt["encoder_config"]))
        model.load_state_dict(ckpt["models"][which])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise SaltCacheError(f"{path}: run checkpoint has no usable encoder ({str(e).splitlines()[0][:160]})") from None
    meta = {"kind": "run-state", "stage": ckpt.get("stage"), "step": int(ckpt["step"]), "run": str(RunFolder.of_checkpoint(path).root),
            "config": ckpt.get("config"), "encoder": which, **ckpt.get("meta", {})}
    return model.to(device).eval(), meta


def print_run_summary(summary: dict, title: str, artifact: str) -> None:
    """The end of a run (a stage's summary dict) as a rich table; `artifact` names the exported
    encoder's key in the summary ("teacher" or "student")."""
    from rich.table import Table

    from salt_cache.console import console

    table = Table(title=title)
    for col in ("steps", "train loss", "val loss", "data wait", "wall (s)", artifact):
        table.add_column(col, justify="right")

    def num(v):
        return "-" if v is None else f"{v:.4f}"

    wait = summary.get("data_wait_frac")
    table.add_row(f"{summary['start_step']} -> {summary['end_step']} of {summary['steps']}", num(summary["loss"]),
                  num(summary["val_loss"]), "-" if wait is None else f"{wait:.0%}", f"{summary['wall_s']:.1f}",
                  summary.get(artifact, "- (not finished)"))
    console.print(table)
