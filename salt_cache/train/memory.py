"""How much memory a training step needs on CPU, estimated before anything starts, so a run that
cannot fit is refused in one line instead of being killed by the kernel's out-of-memory killer
(which prints nothing).

Per process: the weights, their gradients and AdamW's two moments (4 x 4 bytes per parameter),
plus the activations kept for backward: ACT_BYTES per token, per block and per unit of width,
for the encoder (on CONTEXT_SHARE of the clip's tokens, the upper end of the default masks) and for
the decoder / predictor (on all of them), summed over the mask sets, which all stay alive until
the backward. ACT_BYTES is fitted to peaks measured on this project's models (fp32, one Stage 1
step of micro / small encoders with a 384-wide decoder, 16 x 112 and 16 x 224 clips, batch 2-8:
peaks of 270-910 MB), so that the estimate sits 1.1-1.4x above them.
"""

from __future__ import annotations

from salt_cache.errors import SaltCacheError

ACT_BYTES = 100
CONTEXT_SHARE = 0.3  # the default masks keep 14-29% of the tokens as context


def transformer_params(width: int, depth: int, mlp_ratio: float = 4.0) -> int:
    """Parameters of `depth` pre-norm transformer blocks of `width` (attention + MLP)."""
    return int(depth * (4 + 2 * mlp_ratio) * width * width)


def step_bytes(config, per_rank: int) -> int:
    """Estimated peak bytes of one training step of `config` (a TrainConfig whose `head()` is its
    decoder / predictor config) with `per_rank` clips per micro-batch."""
    vit = config.model.vit()
    head = config.head()
    tokens = config.grid[0] * config.grid[1] * config.grid[2]
    sets = len(config.masks)
    enc = CONTEXT_SHARE * tokens * vit.depth * vit.embed_dim
    dec = tokens * head.depth * head.embed_dim if head is not None else 0
    activations = ACT_BYTES * per_rank * sets * (enc + dec)
    params = transformer_params(vit.embed_dim, vit.depth, vit.mlp_ratio)
    if head is not None:
        params += transformer_params(head.embed_dim, head.depth, head.mlp_ratio)
    return int(activations + 16 * params)


def available_bytes() -> int | None:
    """Memory the system can still hand out (MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_cpu_memory(config, per_rank: int, local_world: int = 1, available: int | None = None) -> None:
    """Refuse, in one line naming --batch-size and the clip, a CPU run whose step would not fit
    in the memory available to the `local_world` processes of this machine."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    need = step_bytes(config, per_rank) * max(1, local_world)
    if need <= available:
        return
    fits = next((b for b in range(per_rank - 1, 0, -1) if step_bytes(config, b) * max(1, local_world) <= available), 0)
    steps = config.batch_size // per_rank  # micro-batches per optimizer step over all processes
    hint = f"--batch-size {fits * steps} or less" if fits else "a smaller clip or model"
    c = config.clip
    raise SaltCacheError(
        f"batch_size: {config.batch_size} clips of {c.frames} x {c.size} px need about {need / 2**30:.0f} GiB on CPU "
        f"({per_rank} per micro-batch; {available / 2**30:.0f} GiB available): use {hint}, fewer frames or a "
        f"smaller size (--set clip.frames=8 / --set clip.size=112), grad_accum, or a GPU (--device cuda)")
