"""Models: the video ViT encoder family and the V-JEPA-style predictor."""

from salt_cache.models.vit import (
    SIZES,
    Predictor,
    VideoViT,
    ViTConfig,
    build_encoder,
    grid_of,
    param_count,
    token_positions,
    vit_config,
)

__all__ = [
    "SIZES", "Predictor", "VideoViT", "ViTConfig", "build_encoder", "grid_of", "param_count",
    "token_positions", "vit_config",
]
