"""Video ViT encoder: 3D tubelet patches, 3D rotary (or sin-cos) positions, pre-norm blocks.

Tokens are ordered (t, h, w) row-major: flat index = t * H' * W' + h * W' + w, where
(T', H', W') = (T / tubelet, H / patch, W / patch). Every forward takes optional token indices
so a caller can encode only some tokens (the context) while each keeps its true 3D position.

Imported teachers (`salt_cache.models.imports`) use the same module with a few config switches,
each defaulting to what this project trains: `pos_embed="sincos-1d"` (VideoMAE's fixed table
over the flat token index), `rope_layout="vjepa2"` (V-JEPA 2's frequency layout), `norm_eps`
and `final_norm` (VideoMAE with mean pooling has no per-token final norm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

Grid = tuple[int, int, int]
POS_EMBEDS = ("rope", "sincos", "sincos-1d")
ROPE_LAYOUTS = ("paired", "vjepa2")


@dataclass(frozen=True)
class ViTConfig:
    """Everything needed to rebuild an encoder; stored inside every checkpoint."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    pos_embed: str = "rope"  # "rope" | "sincos" (3D table) | "sincos-1d" (VideoMAE: flat token index)
    qkv_bias: bool = True
    drop_path: float = 0.0
    name: str = ""
    # the fields below came with imported teachers; their defaults are this project's own encoder
    rope_layout: str = "paired"  # "paired" | "vjepa2": which frequency each rotated dim uses (Rope3D)
    norm_eps: float = 1e-6  # every LayerNorm (HF VideoMAE configs use 1e-12)
    final_norm: bool = True  # a LayerNorm after the last block (VideoMAE with mean pooling: none)

    def __post_init__(self) -> None:
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed: expected one of {', '.join(POS_EMBEDS)}, got {self.pos_embed!r}")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope_layout: expected one of {', '.join(ROPE_LAYOUTS)}, got {self.rope_layout!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


def grid_of(shape: tuple[int, ...], patch_size: int, tubelet_size: int) -> Grid:
    """Token grid (T', H', W') of a clip of shape [..., T, H, W]."""
    t, h, w = shape[-3:]
    if t % tubelet_size or h % patch_size or w % patch_size:
        raise ValueError(
            f"clip of {t}x{h}x{w} (frames x height x width) does not tile into tubelets of "
            f"{tubelet_size}x{patch_size}x{patch_size}"
        )
    return t // tubelet_size, h // patch_size, w // patch_size


def token_positions(idx: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Flat token indices [..., N] -> integer (t, h, w) positions [..., N, 3]."""
    _, gh, gw = grid
    t = idx // (gh * gw)
    h = (idx // gw) % gh
    w = idx % gw
    return torch.stack((t, h, w), dim=-1)


class Rope3D(nn.Module):
    """Rotary embedding over (t, h, w): the head dim is split in three even parts of axis_dim
    dims (t first, then h, then w); any remainder stays unrotated. Mirrors the factorized 3D RoPE
    of V-JEPA 2, with frequencies 1 / base^(i / (axis_dim / 2)), i < axis_dim / 2.

    Both layouts turn consecutive pairs (2i, 2i+1) of an axis part: out = x * cos + (-x[2i+1],
    x[2i]) * sin. "paired" (ours) gives both dims of pair i frequency i: a true rotation.
    "vjepa2" gives dim j frequency j mod (axis_dim / 2), as V-JEPA 2's released code does (its
    `rotate_queries_or_keys` repeats the frequencies instead of interleaving them; the models
    were trained that way, so an imported V-JEPA 2 teacher must use it)."""

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "paired"):
        super().__init__()
        axis_dim = 2 * (head_dim // 6)
        if axis_dim == 0:
            raise ValueError(f"head dim {head_dim} is too small for 3D rotary positions (need >= 6)")
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope layout: expected one of {', '.join(ROPE_LAYOUTS)}, got {layout!r}")
        self.axis_dim = axis_dim
        self.layout = layout
        inv_freq = 1.0 / (base ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos [B, N, 3] -> (cos, sin) each [B, 1, N, 3 * axis_dim / 2] ("paired": one angle per
        pair) or [B, 1, N, 3 * axis_dim] ("vjepa2": one angle per dim)."""
        ang = pos.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [B, N, 3, axis_dim/2]
        if self.layout == "vjepa2":
            ang = torch.cat((ang, ang), dim=-1)  # dim j of an axis part: frequency j mod axis_dim/2
        ang = ang.flatten(-2).unsqueeze(1)
        return ang.cos(), ang.sin()

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, heads, N, head_dim]: turn consecutive pairs of the first 3 * axis_dim dims."""
        n = 3 * self.axis_dim
        xr, rest = x[..., :n].float(), x[..., n:]
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        if self.layout == "vjepa2":
            out = xr * cos + torch.stack((-x2, x1), dim=-1).flatten(-2) * sin
        else:
            out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        return torch.cat((out.to(x.dtype), rest), dim=-1)


def sincos_3d(grid: Grid, dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos table [T'*H'*W', dim]: dim split between t, h and w (t gets the rest)."""
    d_hw = (dim // 3) // 2 * 2
    d_t = dim - 2 * d_hw

    def one_axis(n: int, d: int) -> torch.Tensor:
        half = d // 2
        omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
        ang = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        emb = torch.cat((ang.sin(), ang.cos()), dim=1)
        return F.pad(emb, (0, d - emb.shape[1]))

    gt, gh, gw = grid
    et, eh, ew = one_axis(gt, d_t), one_axis(gh, d_hw), one_axis(gw, d_hw)
    table = torch.cat(
        (
            et[:, None, None].expand(gt, gh, gw, d_t),
            eh[None, :, None].expand(gt, gh, gw, d_hw),
            ew[None, None, :].expand(gt, gh, gw, d_hw),
        ),
        dim=-1,
    )
    return table.reshape(gt * gh * gw, dim).float()


def sincos_1d(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed table [n, dim] over the flat token index p (t, h, w row-major): dim j
    holds sin (j even) or cos (j odd) of p / 10000^(2 * (j // 2) / dim). Built in float64, as
    VideoMAE builds it with numpy, then cast to float32. The spatial meaning of an index depends
    on H' * W', so such a teacher only fits clips of the size and frame count it was trained on."""
    j = torch.arange(dim, dtype=torch.float64)
    ang = torch.arange(n, dtype=torch.float64)[:, None] / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.remainder(2) == 0, ang.sin(), ang.cos())
    return table.float()


class Attention(nn.Module):
    """Fused qkv projection. A teacher without a k bias (VideoMAE) is imported with zeros there,
    which computes exactly q + q_bias, k, v + v_bias."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rope: bool = True,
                 rope_layout: str = "paired"):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = Rope3D(dim // num_heads, layout=rope_layout) if rope else None

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            cos, sin = self.rope.angles(pos)
            q, k = self.rope.rotate(q, cos, sin), self.rope.rotate(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block whose attention sees each token's 3D position."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, rope: bool,
                 norm_eps: float = 1e-6, rope_layout: str = "paired"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope, rope_layout=rope_layout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), pos))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class VideoViT(nn.Module):
    """Encoder: clip [B, C, T, H, W] (+ optional token indices [B, N]) -> tokens [B, N, D].

    The output is that of the final LayerNorm (of the last block when config.final_norm is
    False). Patch embedding is a strided Conv3d, so a token
    depends only on its own tubelet's pixels: gathering context tokens right after the embedding
    means masked pixels can never reach the encoder."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_dim = c.embed_dim
        self.patch_embed = nn.Conv3d(
            c.in_chans, c.embed_dim,
            kernel_size=(c.tubelet_size, c.patch_size, c.patch_size),
            stride=(c.tubelet_size, c.patch_size, c.patch_size),
        )
        rope = c.pos_embed == "rope"
        dpr = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, dpr[i], rope, norm_eps=c.norm_eps,
                  rope_layout=c.rope_layout)
            for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if c.final_norm else nn.Identity()
        self.apply(init_weights)
        w = self.patch_embed.weight.data
        trunc_normal_(w.view(w.shape[0], -1), std=0.02)

    def grid(self, clip_shape: tuple[int, ...]) -> Grid:
        return grid_of(clip_shape, self.config.patch_size, self.config.tubelet_size)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.grid(x.shape)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N_all, D]
        b, n_all, d = tokens.shape
        if idx is None:
            idx = torch.arange(n_all, device=x.device).expand(b, n_all)
        tokens = torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, d))
        if self.config.pos_embed == "sincos":
            table = sincos_3d(grid, d).to(tokens)
            tokens = tokens + table[idx]
        elif self.config.pos_embed == "sincos-1d":
            tokens = tokens + sincos_1d(n_all, d).to(tokens)[idx]
        pos = token_positions(idx, grid) if self.config.pos_embed == "rope" else None
        for blk in self.blocks:
            tokens = blk(tokens, pos)
        return self.norm(tokens)


class Predictor(nn.Module):
    """V-JEPA-style predictor.

    context [B, Nc, D_in] at indices ctx_idx [B, Nc], targets at tgt_idx [B, Nt] ->
    predictions [B, Nt, D_out]. Zero-initialized mask tokens sit at the target positions; all
    positions come from the flat indices, so the predictor sees the true 3D layout."""

    def __init__(self, in_dim: int, out_dim: int, embed_dim: int = 384, depth: int = 12,
                 num_heads: int = 16, mlp_ratio: float = 4.0, pos_embed: str = "rope"):
        super().__init__()
        self.config = dict(in_dim=in_dim, out_dim=out_dim, embed_dim=embed_dim, depth=depth,
                           num_heads=num_heads, mlp_ratio=mlp_ratio, pos_embed=pos_embed)
        self.pos_embed = pos_embed
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        rope = pos_embed == "rope"
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, True, 0.0, rope) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Linear(embed_dim, out_dim)
        self.apply(init_weights)

    def forward(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, grid: Grid) -> torch.Tensor:
        b, nt = tgt_idx.shape
        x = torch.cat((self.embed(ctx), self.mask_token.expand(b, nt, -1).to(ctx.dtype)), dim=1)
        idx = torch.cat((ctx_idx, tgt_idx), dim=1)
        pos = None
        if self.pos_embed == "sincos":
            x = x + sincos_3d(grid, x.shape[-1]).to(x)[idx]
        else:
            pos = token_positions(idx, grid)
        for blk in self.blocks:
            x = blk(x, pos)
        return self.proj(self.norm(x[:, -nt:]))


# width, depth, heads
SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (96, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1408, 40, 16),
}
# ViT-g uses a wider MLP (timm / V-JEPA 2: 48/11), which gives the paper's 1.01 B parameters
MLP_RATIOS: dict[str, float] = {"giant": 48 / 11}


def vit_config(name: str, **overrides) -> ViTConfig:
    """Config of a registered size, with optional overrides (patch_size, tubelet_size, ...)."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; expected one of {', '.join(SIZES)}")
    width, depth, heads = SIZES[name]
    overrides.setdefault("mlp_ratio", MLP_RATIOS.get(name, 4.0))
    return ViTConfig(embed_dim=width, depth=depth, num_heads=heads, name=name, **overrides)


def build_encoder(name_or_config: str | ViTConfig, **overrides) -> VideoViT:
    cfg = name_or_config if isinstance(name_or_config, ViTConfig) else vit_config(name_or_config, **overrides)
    return VideoViT(cfg)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
