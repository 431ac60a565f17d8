"""Bring your own teacher: VideoMAE / VideoMAEv2 and V-JEPA 2 checkpoints -> our encoder checkpoint.

    import_teacher(src, out, fmt="auto") -> ImportSummary      (`salt-cache import-teacher`)

SRC is a local path (never a hub name): a Hugging Face model folder (`config.json` +
`model.safetensors`, a sharded index, or `pytorch_model.bin`), a `.safetensors` file, or an
original-repo checkpoint. The layouts read, after unwrapping and prefix stripping:

  hf        config.json model_type "videomae": embeddings.patch_embeddings.projection.*,
            encoder.layer.N.attention.attention.{query,key,value}.* (q_bias / v_bias in files
            written by transformers 4), optional "videomae." prefix; fc_norm, classifier, decoder
            dropped. model_type "vjepa2": encoder.embeddings.patch_embeddings.proj.*,
            encoder.layer.N.attention.{query,key,value,proj}.*, encoder.layernorm.*, optional
            "vjepa2." prefix; predictor, pooler, classifier dropped.
  videomae  MCG-NJU/VideoMAE, OpenGVLab/VideoMAEv2 `.pth`: {"model" | "module": state dict};
            patch_embed.proj.*, blocks.N.attn.qkv.weight with blocks.N.attn.{q,v}_bias (no k bias),
            norm.* (per-token output norm) or fc_norm.* (norm after mean pooling: dropped) and
            head.*; pretraining files prefix the encoder with "encoder." and add decoder.*.
  vjepa2    facebookresearch/vjepa2 `.pt`: {"encoder", "target_encoder", "predictor", ...}, keys
            prefixed "module.backbone." (or "module." / "backbone."); patch_embed.proj.*,
            blocks.N.attn.qkv.* (with bias), norm.*. `target_encoder` (the EMA weights V-JEPA 2
            evaluates) is taken unless `checkpoint_key` says otherwise.

Every weight of the source is either converted or dropped by name (heads, decoders, predictors);
anything else (layer scale, a learned position table, SwiGLU) is refused, never ignored. The
result loads into `VideoViT` with strict key matching.

What the encoder computes, and so what `build` caches: the reference's `last_hidden_state`.
For V-JEPA 2 that is after the encoder's final LayerNorm. For VideoMAE it is after `norm` when
the checkpoint has one (HF `use_mean_pooling=False`, pretraining encoders) and the last block's
output when it does not (`use_mean_pooling=True`: `fc_norm` normalizes the pooled vector only).
The cache's `final_norm` field says which.

Pickled files are opened with `torch.load(weights_only=True)`: tensors and plain containers only
(plus `argparse.Namespace`, which VideoMAE's training script stores as "args"). A file that needs
any other code to unpickle is refused, and nothing in it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from salt_cache.checkpoint import file_sha256, save_encoder
from salt_cache.errors import SaltCacheError
from salt_cache.models.vit import VideoViT, ViTConfig
from salt_cache.video import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("auto", "hf", "videomae", "vjepa2")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
PREPROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Family:
    """What the original repo of a model family trains with, for files that do not say."""

    name: str
    pos_embed: str
    rope_layout: str
    norm_eps: float
    size: int
    frames: int
    heads: dict  # width -> heads of the family's named sizes
    reference: str


FAMILIES = {
    # VideoMAE / VideoMAEv2 ViT-S..g: 16 x 224 px clips, ImageNet mean/std, LayerNorm eps 1e-6
    "videomae": Family("videomae", "sincos-1d", "paired", 1e-6, 224, 16,
                       {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16},
                       "transformers VideoMAEModel / MCG-NJU VideoMAE VisionTransformer"),
    # V-JEPA 2 ViT-L/H at 256 px, 16 frames (pretraining); ViT-g is vit_giant_xformers (22 heads)
    "vjepa2": Family("vjepa2", "rope", "vjepa2", 1e-6, 256, 16,
                     {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 22, 1664: 26},
                     "transformers VJEPA2Model encoder / facebookresearch/vjepa2 VisionTransformer"),
}


@dataclass
class Source:
    """A checkpoint as read: its layout, its weights (keys unwrapped and unprefixed), the files."""

    path: Path
    fmt: str  # hf | videomae | vjepa2
    family: str  # videomae | vjepa2
    state: dict
    files: list = field(default_factory=list)  # [{name, bytes, sha256}]
    sha256: str = ""  # of the weights file (of the shards' sha256 list when sharded)
    hf_config: dict | None = None
    preprocessor: dict | None = None
    preprocessor_file: str | None = None
    checkpoint_key: str | None = None
    prefix: str = ""


@dataclass
class ImportSummary:
    """What `import_teacher` wrote: provenance, the encoder config, the input it expects."""

    out: str
    source: str
    format: str
    family: str
    sha256: str
    checkpoint_key: str | None
    config: dict
    input: dict
    params: int
    converted: int
    dropped: dict

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- reading files

def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _torch_load(path: Path):
    """torch.load with weights_only=True; a pickle that needs code is refused in one line."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip / truncated), EOFError, ...
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise SaltCacheError(
                f"{path}: refused: unpickling it needs code ({found.group(1)}); checkpoints are opened with "
                f"torch.load(weights_only=True), which accepts only tensors and plain containers") from None
        raise SaltCacheError(f"{path}: not a readable PyTorch checkpoint ({_one_line(e)})") from None


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SaltCacheError(f"{path}: not a readable .safetensors file ({_one_line(e)})") from None


def _read_weights(path: Path) -> dict:
    """A weights file (.safetensors or a torch file) -> whatever it holds."""
    return _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path)


def _file_record(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SaltCacheError(f"{path}: unreadable JSON ({_one_line(e)})") from None
    if not isinstance(doc, dict):
        raise SaltCacheError(f"{path}: expected a JSON object")
    return doc


def _hf_family(config: dict, path: Path) -> str:
    kind = config.get("model_type")
    if kind not in FAMILIES:
        raise SaltCacheError(f"{path}: model_type {kind!r} is not importable (expected 'videomae' or 'vjepa2')")
    return kind


def _read_hf_folder(folder: Path) -> Source:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise SaltCacheError(f"{folder}: no config.json; expected a Hugging Face model folder "
                             f"(config.json + model.safetensors)")
    config = _read_json(cfg_path)
    family = _hf_family(config, cfg_path)
    weights = next((folder / n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise SaltCacheError(f"{folder}: no weights; expected one of {', '.join(HF_WEIGHT_FILES)}")
    files = [_file_record(cfg_path)]
    if weights.name.endswith(".index.json"):
        shards = sorted(set(_read_json(weights).get("weight_map", {}).values()))
        if not shards:
            raise SaltCacheError(f"{weights}: no weight_map")
        state, records = {}, []
        for name in shards:
            if not (folder / name).is_file():
                raise SaltCacheError(f"{folder / name}: shard listed in {weights.name} is missing")
            state.update(_read_weights(folder / name))
            records.append(_file_record(folder / name))
        sha = hashlib.sha256("".join(r["sha256"] for r in records).encode()).hexdigest()
    else:
        state = _read_weights(weights)
        records = [_file_record(weights)]
        sha = records[0]["sha256"]
    pre = next((folder / n for n in PREPROCESSOR_FILES if (folder / n).is_file()), None)
    files += records + ([_file_record(pre)] if pre else [])
    return Source(folder, "hf", family, _tensor_dict(state, weights), files, sha, config,
                  _read_json(pre) if pre else None, pre.name if pre else None)


def _tensor_dict(obj, path: Path) -> dict:
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SaltCacheError(f"{path}: unknown checkpoint layout (expected a state dict of tensors)")
    return obj


# checkpoint keys holding an encoder, in the order tried: V-JEPA 2's EMA encoder first
WRAPPER_KEYS = ("target_encoder", "encoder", "model", "module", "state_dict", "model_state")
PREFIXES = ("module.", "backbone.")


def _unwrap(obj, path: Path, checkpoint_key: str | None) -> tuple[dict, str | None]:
    """An original-repo checkpoint -> (its encoder state dict, the key it came from)."""
    if not isinstance(obj, dict):
        raise SaltCacheError(f"{path}: unknown checkpoint layout (holds a {type(obj).__name__}, not a dict)")
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            keys = ", ".join(sorted(str(k) for k in obj)[:12])
            raise SaltCacheError(f"{path}: no {checkpoint_key!r} entry (top-level keys: {keys})")
        return _tensor_dict(obj[checkpoint_key], path), checkpoint_key
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    for k in WRAPPER_KEYS:
        if isinstance(obj.get(k), dict) and obj[k]:
            return _tensor_dict(obj[k], path), k
    keys = ", ".join(sorted(str(k) for k in obj)[:12])
    raise SaltCacheError(f"{path}: unknown checkpoint layout (no state dict under {', '.join(WRAPPER_KEYS)}; "
                         f"top-level keys: {keys})")


def _strip_prefixes(state: dict) -> tuple[dict, str]:
    """Drop DDP / wrapper prefixes shared by every key: module., backbone. (any order, repeated)."""
    stripped = ""
    while True:
        p = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if p is None:
            return state, stripped
        state = {k[len(p):]: v for k, v in state.items()}
        stripped += p


def _read_original(path: Path, fmt: str, checkpoint_key: str | None) -> Source:
    obj = _read_weights(path)
    state, key = _unwrap(obj, path, checkpoint_key)
    state, prefix = _strip_prefixes(state)
    if any("patch_embeddings." in k for k in state):
        raise SaltCacheError(f"{path}: a Hugging Face state dict without its config.json; import the model "
                             f"folder (config.json + {path.name}) instead")
    if "encoder.patch_embed.proj.weight" in state:  # VideoMAE pretraining: encoder.* + decoder.*
        state = {(k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}
        prefix += "encoder."
    if "patch_embed.proj.weight" not in state:
        sample = ", ".join(sorted(state)[:6])
        raise SaltCacheError(f"{path}: unknown checkpoint layout (no patch_embed.proj.weight; keys start: {sample})")
    has_qv = any(re.fullmatch(r"blocks\.\d+\.attn\.[qv]_bias", k) for k in state)
    has_qkv_bias = any(re.fullmatch(r"blocks\.\d+\.attn\.qkv\.bias", k) for k in state)
    if fmt == "auto":
        if has_qv:
            fmt = "videomae"
        elif has_qkv_bias or key in ("encoder", "target_encoder"):
            fmt = "vjepa2"
        else:
            raise SaltCacheError(f"{path}: cannot tell a VideoMAE from a V-JEPA 2 checkpoint (no attention "
                                 f"biases); pass --format videomae or --format vjepa2")
    elif fmt == "videomae" and has_qkv_bias:
        raise SaltCacheError(f"{path}: --format videomae, but the weights have blocks.N.attn.qkv.bias "
                             f"(VideoMAE keeps q_bias / v_bias; a V-JEPA 2 checkpoint?)")
    elif fmt == "vjepa2" and has_qv:
        raise SaltCacheError(f"{path}: --format vjepa2, but the weights have blocks.N.attn.q_bias / v_bias "
                             f"(a VideoMAE checkpoint?)")
    rec = _file_record(path)
    return Source(path, fmt, fmt, state, [rec], rec["sha256"], checkpoint_key=key, prefix=prefix)


def read_source(src: Path | str, fmt: str = "auto", checkpoint_key: str | None = None) -> Source:
    """Open SRC (see the module docstring) and tell its layout; one-line errors for a missing
    file, an unknown layout, a `--format` that does not fit, a pickle that needs code."""
    path = Path(src)
    if fmt not in FORMATS:
        raise SaltCacheError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if not path.exists():
        raise SaltCacheError(f"{path}: no such file or folder")
    hf_config = path.parent / "config.json" if path.is_file() and path.suffix == ".safetensors" else None
    if path.is_dir() or (hf_config is not None and hf_config.is_file() and fmt in ("auto", "hf")):
        if fmt not in ("auto", "hf"):
            raise SaltCacheError(f"{path}: a Hugging Face model folder; use --format hf (or auto), not {fmt}")
        if checkpoint_key is not None:
            raise SaltCacheError(f"{path}: --checkpoint-key applies to original-repo checkpoints only")
        if path.is_dir():
            return _read_hf_folder(path)
        config = _read_json(hf_config)
        rec = _file_record(path)
        return Source(path, "hf", _hf_family(config, hf_config), _tensor_dict(_read_safetensors(path), path),
                      [_file_record(hf_config), rec], rec["sha256"], config)
    if fmt == "hf":
        raise SaltCacheError(f"{path}: --format hf expects a Hugging Face model folder (config.json + "
                             f"model.safetensors) or a .safetensors file with config.json beside it")
    return _read_original(path, fmt, checkpoint_key)


# ----------------------------------------------------------------------------- renaming weights

# (pattern on a source key, our key) per layout; q / k / v parts are fused after renaming.
# Intermediate names: blocks.N.attn.{q,k,v}.{weight,bias} for separate projections.
_B = r"(?P<b>\d+)"
RULES = {
    "hf-videomae": [
        (r"embeddings\.patch_embeddings\.projection\.(?P<p>weight|bias)", "patch_embed.{p}"),
        (rf"encoder\.layer\.{_B}\.layernorm_before\.(?P<p>weight|bias)", "blocks.{b}.norm1.{p}"),
        (rf"encoder\.layer\.{_B}\.layernorm_after\.(?P<p>weight|bias)", "blocks.{b}.norm2.{p}"),
        (rf"encoder\.layer\.{_B}\.attention\.attention\.(?P<x>query|key|value)\.(?P<p>weight|bias)", "blocks.{b}.attn.{x}.{p}"),
        (rf"encoder\.layer\.{_B}\.attention\.attention\.(?P<x>q|v)_bias", "blocks.{b}.attn.{x}.bias"),
        (rf"encoder\.layer\.{_B}\.attention\.output\.dense\.(?P<p>weight|bias)", "blocks.{b}.attn.proj.{p}"),
        (rf"encoder\.layer\.{_B}\.intermediate\.dense\.(?P<p>weight|bias)", "blocks.{b}.mlp.fc1.{p}"),
        (rf"encoder\.layer\.{_B}\.output\.dense\.(?P<p>weight|bias)", "blocks.{b}.mlp.fc2.{p}"),
        (r"layernorm\.(?P<p>weight|bias)", "norm.{p}"),
    ],
    "hf-vjepa2": [
        (r"encoder\.embeddings\.patch_embeddings\.proj\.(?P<p>weight|bias)", "patch_embed.{p}"),
        (rf"encoder\.layer\.{_B}\.(?P<n>norm1|norm2)\.(?P<p>weight|bias)", "blocks.{b}.{n}.{p}"),
        (rf"encoder\.layer\.{_B}\.attention\.(?P<x>query|key|value)\.(?P<p>weight|bias)", "blocks.{b}.attn.{x}.{p}"),
        (rf"encoder\.layer\.{_B}\.attention\.proj\.(?P<p>weight|bias)", "blocks.{b}.attn.proj.{p}"),
        (rf"encoder\.layer\.{_B}\.mlp\.(?P<n>fc1|fc2)\.(?P<p>weight|bias)", "blocks.{b}.mlp.{n}.{p}"),
        (r"encoder\.layernorm\.(?P<p>weight|bias)", "norm.{p}"),
    ],
    "videomae": [
        (r"patch_embed\.proj\.(?P<p>weight|bias)", "patch_embed.{p}"),
        (rf"blocks\.{_B}\.(?P<n>norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?P<p>weight|bias)", "blocks.{b}.{n}.{p}"),
        (rf"blocks\.{_B}\.attn\.(?P<x>q|v)_bias", "blocks.{b}.attn.{x}.bias"),
        (r"norm\.(?P<p>weight|bias)", "norm.{p}"),
    ],
    "vjepa2": [
        (r"patch_embed\.proj\.(?P<p>weight|bias)", "patch_embed.{p}"),
        (rf"blocks\.{_B}\.(?P<n>norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?P<p>weight|bias)", "blocks.{b}.{n}.{p}"),
        (r"norm\.(?P<p>weight|bias)", "norm.{p}"),
    ],
}
# weights that are not the encoder's per-token path: dropped by name (counted in the summary)
DROP = {
    "hf-videomae": r"(fc_norm|classifier|decoder|encoder_to_decoder)\..*|mask_token|position_embeddings",
    "hf-vjepa2": r"(predictor|pooler|classifier)\..*",
    "videomae": r"(fc_norm|head|decoder|encoder_to_decoder)\..*|mask_token|decoder_pos_embed",
    "vjepa2": r"",
}
# weights we recognise but cannot compute: refused with the reason
UNSUPPORTED = [
    (r"(.*\.)?blocks\.\d+\.gamma_[12]", "layer scale (gamma_1 / gamma_2)"),
    (r"(.*\.)?pos_embed", "a position-embedding table (V-JEPA 1 style or learned); only VideoMAE's fixed "
                          "sin-cos table and V-JEPA 2's RoPE are supported"),
    (r"(.*\.)?cls_token", "a class token"),
    (r"(.*\.)?blocks\.\d+\.mlp\.fc3\..*", "a SwiGLU MLP"),
]
_SHORT = {"query": "q", "key": "k", "value": "v"}


def _rename(src: Source) -> tuple[dict, dict]:
    """Source weights -> (our names, with q/k/v still separate; dropped counts by top name)."""
    layout = f"hf-{src.family}" if src.fmt == "hf" else src.fmt
    state = src.state
    if src.fmt == "hf":  # VideoMAEForPreTraining / ...ForVideoClassification wrap the model
        outer = f"{src.family}."
        state = {(k[len(outer):] if k.startswith(outer) else k): v for k, v in state.items()}
    rules = [(re.compile(p), t) for p, t in RULES[layout]]
    drop = re.compile(DROP[layout]) if DROP[layout] else None
    ours, dropped = {}, {}
    for k, v in state.items():
        for pat, target in rules:
            m = pat.fullmatch(k)
            if m:
                parts = {n: _SHORT.get(x, x) for n, x in m.groupdict().items()}
                ours[target.format(**parts)] = v
                break
        else:
            if drop is not None and drop.fullmatch(k):
                top = k.split(".")[0]
                dropped[top] = dropped.get(top, 0) + 1
                continue
            why = next((w for p, w in UNSUPPORTED if re.fullmatch(p, k)), None)
            if why:
                raise SaltCacheError(f"{src.path}: weight {k!r} is {why}, which the importer does not support")
            raise SaltCacheError(f"{src.path}: unexpected weight {k!r} for a {layout} checkpoint "
                                 f"(not an encoder weight this importer knows; wrong --format?)")
    return ours, dropped


def _fuse_qkv(ours: dict, depth: int, width: int, path: Path) -> tuple[dict, bool]:
    """Separate q/k/v projections (or fused qkv with separate q/v biases) -> fused qkv. A missing
    k bias becomes zeros, which is what VideoMAE computes. Returns (weights, has qkv bias)."""
    has_bias = set()
    for b in range(depth):
        a = f"blocks.{b}.attn."
        if f"{a}qkv.weight" not in ours:
            try:
                ours[f"{a}qkv.weight"] = torch.cat([ours.pop(f"{a}{x}.weight") for x in "qkv"])
            except KeyError as e:
                raise SaltCacheError(f"{path}: block {b} has no attention weight {e.args[0]!r}") from None
        biases = {x: ours.pop(f"{a}{x}.bias", None) for x in "qkv"}
        if f"{a}qkv.bias" in ours:
            if any(t is not None for t in biases.values()):
                raise SaltCacheError(f"{path}: block {b} has both a fused qkv bias and separate q/k/v biases")
            has_bias.add(True)
            continue
        if all(t is None for t in biases.values()):
            has_bias.add(False)
            continue
        ref = next(t for t in biases.values() if t is not None)
        ours[f"{a}qkv.bias"] = torch.cat([t if t is not None else torch.zeros(width, dtype=ref.dtype) for t in biases.values()])
        has_bias.add(True)
    if len(has_bias) > 1:
        raise SaltCacheError(f"{path}: some blocks have attention biases and others do not")
    return ours, has_bias == {True}


# ----------------------------------------------------------------------------- architecture

def _hf_arch(src: Source) -> dict:
    """The architecture and trained input a Hugging Face config.json states."""
    c, where = src.hf_config, "config.json"
    try:
        if src.family == "videomae":
            a = dict(width=c["hidden_size"], depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
                     mlp=c["intermediate_size"], patch=c["patch_size"], tubelet=c["tubelet_size"],
                     chans=c.get("num_channels", 3), size=c["image_size"], frames=c["num_frames"],
                     norm_eps=c.get("layer_norm_eps", 1e-12), final_norm=not c.get("use_mean_pooling", True),
                     act=c.get("hidden_act", "gelu"))
        else:
            a = dict(width=c["hidden_size"], depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
                     mlp=int(c["hidden_size"] * c.get("mlp_ratio", 4.0)), patch=c["patch_size"],
                     tubelet=c["tubelet_size"], chans=c.get("in_chans", 3), size=c["crop_size"],
                     frames=c["frames_per_clip"], norm_eps=c.get("layer_norm_eps", 1e-6), final_norm=True,
                     act=c.get("hidden_act", "gelu"))
    except KeyError as e:
        raise SaltCacheError(f"{src.path}: {where} has no {e.args[0]!r}") from None
    for k in ("patch", "size"):
        v = a[k]
        if isinstance(v, (list, tuple)):
            if len(set(v)) != 1:
                raise SaltCacheError(f"{src.path}: {where} {k} {v} is not square; clips are square")
            a[k] = v[0]
    if a["act"] != "gelu":
        raise SaltCacheError(f"{src.path}: {where} hidden_act {a['act']!r}: only exact GELU ('gelu') is supported")
    return a


def _check_weights(path: Path, ours: dict, arch: dict, said: str) -> None:
    """Weights against the stated architecture: width, depth, patch, tubelet, MLP width."""
    w = ours.get("patch_embed.weight")
    if w is None or w.ndim != 5:
        raise SaltCacheError(f"{path}: no 3D patch-embedding weight (a Conv3d [D, C, t, p, p]) found")
    depth = len({k.split(".")[1] for k in ours if k.startswith("blocks.")})
    facts = {"width": w.shape[0], "depth": depth, "chans": w.shape[1], "tubelet": w.shape[2], "patch": w.shape[3]}
    names = {"width": "hidden_size", "depth": "num_hidden_layers", "chans": "input channels",
             "tubelet": "tubelet_size", "patch": "patch_size"}
    for k, v in facts.items():
        if arch.get(k) is not None and arch[k] != v:
            raise SaltCacheError(f"{path}: {said} {names[k]} {arch[k]}, but the weights have {v} "
                                 f"({'blocks' if k == 'depth' else 'from the patch embedding'})")
    if w.shape[3] != w.shape[4]:
        raise SaltCacheError(f"{path}: non-square patches {tuple(w.shape[3:])} are not supported")
    if sorted(int(k.split(".")[1]) for k in ours if k.endswith("norm1.weight")) != list(range(depth)):
        raise SaltCacheError(f"{path}: blocks are not numbered 0..{depth - 1}")
    fc1 = ours.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and arch.get("mlp") is not None and fc1.shape[0] != arch["mlp"]:
        raise SaltCacheError(f"{path}: {said} an MLP of {arch['mlp']}, but the weights have {fc1.shape[0]}")


def _mlp_ratio(width: int, hidden: int) -> float:
    """A ratio r with int(width * r) == hidden (what timm's Mlp builds)."""
    r = hidden / width
    while int(width * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def _normalization(src: Source) -> tuple[list, list, str]:
    pre = src.preprocessor or {}
    if "image_mean" in pre and "image_std" in pre:
        return [float(x) for x in pre["image_mean"]], [float(x) for x in pre["image_std"]], src.preprocessor_file
    return list(IMAGENET_MEAN), list(IMAGENET_STD), f"default: ImageNet mean/std, as the {src.family} repo trains"


def import_teacher(src: Path | str, out: Path | str, fmt: str = "auto", num_heads: int | None = None,
                   size: int | None = None, frames: int | None = None,
                   checkpoint_key: str | None = None) -> ImportSummary:
    """Convert SRC (see the module docstring) into an encoder checkpoint at OUT that `build`
    takes like any teacher. `num_heads`, `size` and `frames` are needed only where the source
    does not say (original-repo files): they default to the family's named sizes and training
    clip (VideoMAE 224 px x 16 frames, V-JEPA 2 256 px x 16 frames) and must agree with a
    config.json when there is one. Returns an ImportSummary."""
    source = read_source(src, fmt, checkpoint_key)
    fam = FAMILIES[source.family]
    ours, dropped = _rename(source)
    if source.fmt == "hf":
        arch, said = _hf_arch(source), "config.json says"
        for name, given, have in (("--num-heads", num_heads, arch["heads"]), ("--size", size, arch["size"]),
                                  ("--frames", frames, arch["frames"])):
            if given is not None and given != have:
                raise SaltCacheError(f"{source.path}: {name} {given} contradicts config.json ({have})")
        trained = {"size": arch["size"], "frames": arch["frames"]}
        trained_from = {"size": "config.json", "frames": "config.json"}
    else:
        arch, said = {}, "the checkpoint has"
        trained = {"size": size or fam.size, "frames": frames or fam.frames}
        trained_from = {"size": "--size" if size else f"default: {fam.name} trains at {fam.size} px",
                        "frames": "--frames" if frames else f"default: {fam.name} trains on {fam.frames} frames"}
    _check_weights(source.path, ours, arch, said)
    w = ours["patch_embed.weight"]
    width, chans, tubelet, patch = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    depth = len({k.split(".")[1] for k in ours if k.startswith("blocks.")})
    heads = arch.get("heads") or num_heads or fam.heads.get(width)
    if heads is None:
        raise SaltCacheError(f"{source.path}: cannot tell the number of heads of a {width}-wide {fam.name} encoder "
                             f"from its weights; pass --num-heads")
    if width % heads:
        raise SaltCacheError(f"{source.path}: width {width} is not divisible by {heads} heads")
    if fam.pos_embed == "rope" and width // heads < 6:
        raise SaltCacheError(f"{source.path}: head width {width // heads} is too small for 3D RoPE (need >= 6)")
    if source.fmt != "hf":
        arch["final_norm"] = "norm.weight" in ours
        arch["norm_eps"] = fam.norm_eps
    if arch["final_norm"] != ("norm.weight" in ours):
        why = f" (use_mean_pooling={not arch['final_norm']})" if source.family == "videomae" else ""
        raise SaltCacheError(f"{source.path}: config.json implies {'a' if arch['final_norm'] else 'no'} final layernorm"
                             f"{why}, but the weights {'lack it' if arch['final_norm'] else 'have one'}")
    ours, qkv_bias = _fuse_qkv(ours, depth, width, source.path)
    fc1 = ours.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise SaltCacheError(f"{source.path}: block 0 has no MLP weight (mlp.fc1)")
    config = ViTConfig(
        embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=_mlp_ratio(width, fc1.shape[0]),
        patch_size=patch, tubelet_size=tubelet, in_chans=chans, pos_embed=fam.pos_embed, qkv_bias=qkv_bias,
        name=f"{fam.name}-import", rope_layout=fam.rope_layout, norm_eps=float(arch["norm_eps"]),
        final_norm=bool(arch["final_norm"]))
    model = VideoViT(config)
    try:
        model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    except RuntimeError as e:
        # one line: the first missing / unexpected / mis-shaped key
        detail = " ".join(str(e).split())
        detail = re.sub(r"^Error\(s\) in loading state_dict for \w+:\s*", "", detail)
        raise SaltCacheError(f"{source.path}: weights do not fit a {width}-wide, {depth}-deep encoder "
                             f"({detail[:200]})") from None
    mean, std, norm_from = _normalization(source)
    teacher_input = {
        "patch_size": int(patch), "tubelet_size": int(tubelet), "mean": mean, "std": std,
        "normalization_from": norm_from, "size": int(trained["size"]), "frames": int(trained["frames"]),
        "trained_input_from": trained_from,
        # VideoMAE's 1-D table numbers tokens in a flat order that only means the same positions
        # on the grid it was trained on; V-JEPA 2's RoPE takes any grid
        "fixed_grid": fam.pos_embed == "sincos-1d",
    }
    meta = {
        "origin": "import-teacher",
        "import": {
            "format": source.fmt, "family": fam.name, "source": str(source.path.resolve()),
            "sha256": source.sha256, "files": source.files, "checkpoint_key": source.checkpoint_key,
            "prefix": source.prefix, "dropped": dropped, "hf_config": source.hf_config,
            "reference": fam.reference,
            "output": "last_hidden_state" + (", after the final LayerNorm" if config.final_norm else
                                             " = the last block's output (no per-token final norm)"),
        },
        "architecture": {"family": fam.name, "width": width, "depth": depth, "heads": heads,
                         "mlp_hidden": int(fc1.shape[0]), "patch_size": int(patch), "tubelet_size": int(tubelet),
                         "pos_embed": config.pos_embed, "rope_layout": config.rope_layout,
                         "qkv_bias": qkv_bias, "k_bias": source.family != "videomae" and qkv_bias,
                         "norm_eps": config.norm_eps, "final_norm": config.final_norm},
        "input": teacher_input,
    }
    out = save_encoder(Path(out), model, meta=meta)
    return ImportSummary(out=str(out), source=str(source.path), format=source.fmt, family=fam.name,
                         sha256=source.sha256, checkpoint_key=source.checkpoint_key,
                         config=config.to_dict(), input=teacher_input,
                         params=sum(p.numel() for p in model.parameters()), converted=len(ours), dropped=dropped)
