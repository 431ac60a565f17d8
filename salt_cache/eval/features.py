"""Frozen features for the probe: which clips (the encoder's own training geometry), the
encoder checkpoint (extracted from a run when needed), one feature cache per split built with
the cache machinery, labels and classes, and the features as tensors (or read on demand).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from salt_cache.errors import SaltCacheError
from salt_cache.shards import shard_labels


class CachedTokens:
    """Rows of a feature cache read on demand: `[idx]` -> float32 [len(idx), N, D]. Used when a
    split's features do not fit the memory budget; small splits are loaded whole instead."""

    def __init__(self, reader, refs: list, tokens: int, dim: int):
        self.reader, self.refs = reader, refs
        self.shape = (len(refs), tokens, dim)
        self.ndim = 3

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, idx) -> torch.Tensor:
        idx = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        return torch.from_numpy(np.stack([np.asarray(self.reader.read(self.refs[i]), dtype=np.float32) for i in idx]))


def check_labelled(paths: list[Path], split: str) -> int:
    """Every clip of every shard must carry a label; the error names the first shard and key.
    -> the number of clips."""
    total = 0
    for p in paths:
        labels = shard_labels(p)
        if not labels:
            raise SaltCacheError(f"{p}: {split} shard holds no clips")
        missing = [k for k, v in labels.items() if v is None or v == ""]
        if missing:
            more = f" (and {len(missing) - 1} more in this shard)" if len(missing) > 1 else ""
            raise SaltCacheError(f"{p}: {split} clip {missing[0]} has no label{more}; the probe needs labelled clips")
        total += len(labels)
    return total


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def probe_spec(spec, encoder_config: dict, clip: dict | None = None, where: str = "the encoder checkpoint"):
    """The cache spec the probe encodes with, in order of precedence:
      1. `spec` (a CacheSpec, a YAML path or a bare name in cache_specs/), as given;
      2. `clip`, the encoder's own training clip (a ClipSpec dict from its checkpoint: frames,
         frame_step or fps, size, mean, std), with a centre crop and one view: the encoder is
         read on the inputs it learned from, not on some other geometry;
      3. neither: refused in one line naming `where` and --spec.
    Patch and tubelet sizes always come from the encoder. -> (CacheSpec, notes: list[str])."""
    from salt_cache.config import from_dict as clip_from_dict
    from salt_cache.spec import CacheSpec, load_spec
    from salt_cache.video import ClipSpec

    notes = []
    patch, tubelet = int(encoder_config["patch_size"]), int(encoder_config["tubelet_size"])
    if spec is None and clip is None:
        raise SaltCacheError(f"{where}: records no training clip (meta.clip), so the probe cannot match its clip "
                             "geometry; pass --spec (for init-model baselines: --frames, --frame-step and --size)")
    if spec is None:
        # random-crop ranges mean nothing for a centre crop: reset them, so encoders trained on
        # the same geometry get equal specs (and compare on identical clips)
        default = ClipSpec()
        c = replace(clip_from_dict(ClipSpec, dict(clip), source=f"{where}: clip"), crop="center",
                    scale=default.scale, ratio=default.ratio)
        spec = CacheSpec(name="training-clip", clip=c, views=1, seed=0, patch_size=patch, tubelet_size=tubelet)
        step = f"frame_step {c.frame_step}" if c.frame_step is not None else f"fps {c.fps:g}"
        notes.append(f"clips as the encoder was trained on ({where}): {c.frames} frames, {step}, {c.size} px; "
                     "centre crop, 1 view")
    elif isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    clip = spec.clip
    if clip.size % patch:
        raise SaltCacheError(f"spec {spec.name}: clip.size {clip.size} is not a multiple of the encoder's patch size {patch} (pass --spec)")
    if clip.frames % tubelet:
        raise SaltCacheError(f"spec {spec.name}: clip.frames {clip.frames} is not a multiple of the encoder's tubelet size {tubelet} (pass --spec)")
    if (spec.patch_size, spec.tubelet_size) != (patch, tubelet):
        notes.append(f"spec {spec.name}: patch/tubelet {spec.patch_size}/{spec.tubelet_size} set to the encoder's {patch}/{tubelet}")
        spec = replace(spec, patch_size=patch, tubelet_size=tubelet)
    if clip.crop != "center":
        notes.append(f"spec {spec.name}: {clip.crop} crops, not center crops: each of the {spec.views} views is a random crop")
    return spec, notes


def encoder_checkpoint(path: Path, workdir: Path) -> tuple[Path, dict, dict]:
    """An encoder checkpoint file for `build_cache`. `path` may hold an encoder (used as is), or
    be a training run's state checkpoint or run folder (its checkpoints/last.pt): its encoder is
    then saved as workdir/encoders/<sha256 of the source, 12 hex>.pt, once.
    -> (encoder file, encoder config dict, source: {"kind", "stage", "step", "clip": the
    training clip (an encoder's meta.clip, a run's config clip) or None, "clip_from"})."""
    from salt_cache.checkpoint import file_sha256, load_checkpoint, save_encoder

    path = Path(path)
    if path.is_file():
        ckpt = load_checkpoint(path)
        if ckpt.get("kind") == "encoder":
            # build_cache loads the weights itself
            meta = ckpt.get("meta") or {}
            return path, ckpt["config"], {"kind": "encoder", "stage": meta.get("stage"), "step": meta.get("step"),
                                          "clip": meta.get("clip"), "clip_from": f"{path.name} meta.clip"}
        del ckpt
    from salt_cache.train.runs import RunFolder, load_run_encoder

    model, meta = load_run_encoder(path)
    source = RunFolder.state_file(path)
    # a Stage 2 run records the clips it saw (a cache's views); else the run config's clip
    clip = meta.get("clip") or (meta.get("config") or {}).get("clip")
    out = Path(workdir) / "encoders" / f"{file_sha256(source)[:12]}.pt"
    if not out.is_file():
        save_encoder(out, model, {"origin": "probe", "source": str(source), "step": meta.get("step"),
                                  "stage": meta.get("stage"), "clip": clip})
    return out, model.config.to_dict(), {"kind": "run-state", "stage": meta.get("stage"), "step": meta.get("step"),
                                         "clip": clip, "clip_from": f"{source.name} run clip"}


def encode_split(encoder_ckpt: Path, paths: list[Path], spec, cache_dir: Path, *, batch_size: int, workers: int,
                 device: str, progress=None) -> dict:
    """Encode every clip x view of `paths` once into a feature cache at `cache_dir` (a re-run
    finds the stores complete and encodes nothing). -> the build summary's counts as a dict
    (`rows_built`: encoder forwards of this call, one per clip x view)."""
    from salt_cache.cache import BuildConfig, build_cache

    summary = build_cache(BuildConfig(Path(encoder_ckpt), paths, spec, Path(cache_dir), batch_size=batch_size,
                          workers=workers, device=device), progress=progress)
    s = summary.to_dict()
    keep = ("clips", "rows", "ok", "failed", "clips_built", "rows_built", "stores_built", "stores_skipped", "wall_s")
    return {**{k: s[k] for k in keep}, "failures": s["failures"][:20]}


def load_split(cache_dir: Path, split: str) -> tuple[list[str], list, list, object]:
    """Rows of a feature cache -> (clip keys, refs per clip, raw labels per clip, reader)."""
    from salt_cache.cache import CacheReader

    reader = CacheReader(Path(cache_dir))
    keys, refs, labels = [], [], []
    for key in reader.keys():
        rows = list(reader.rows(key))
        if not rows:
            continue  # a clip that failed to decode has no usable row; counted by the caller
        label = reader.meta(key).get("label")
        if label is None or label == "":
            raise SaltCacheError(f"{cache_dir}: {split} clip {key} has no label; the probe needs labelled clips")
        keys.append(key)
        refs.append(rows)
        labels.append(label)
    return keys, refs, labels, reader


def class_index(train_labels: list, val_labels: list) -> tuple[list, dict, str | None]:
    """Raw labels -> (class list, {raw label: index}, note). Integer labels keep their order;
    any string label makes all labels names, mapped in sorted order (and the note says so)."""
    raw = list(train_labels) + list(val_labels)
    bad = [v for v in raw if isinstance(v, bool) or not isinstance(v, (int, str))]
    if bad:
        raise SaltCacheError(f"labels: expected integers or class names, got {bad[0]!r}")
    note = None
    if any(isinstance(v, str) for v in raw):
        classes = sorted({str(v) for v in raw})
        note = f"labels are names: mapped the {len(classes)} sorted names to classes 0..{len(classes) - 1}"
        return classes, {v: classes.index(str(v)) for v in set(raw)}, note
    classes = sorted(set(raw))
    return classes, {v: i for i, v in enumerate(classes)}, note


def build_features(keys: list[str], refs: list[list], labels: list, reader, index: dict,
                   max_bytes: float) -> FeatureSet:
    """One row per clip x view; `groups` ties the views of a clip together for evaluation."""
    flat, y, groups = [], [], []
    for g, (rows, label) in enumerate(zip(refs, labels)):
        for ref in rows:
            flat.append(ref)
            y.append(index[label])
            groups.append(g)
    tokens, dim = int(reader.tokens), int(reader.teacher_dim)
    if len(flat) * tokens * dim * 4 <= max_bytes:
        data = torch.from_numpy(np.stack([np.asarray(reader.read(r), dtype=np.float32) for r in flat]))
    else:
        data = CachedTokens(reader, flat, tokens, dim)
    from salt_cache.eval.probe import FeatureSet

    return FeatureSet(data, torch.tensor(y), torch.tensor(groups))
