import pytest
import torch

from salt_cache.checkpoint import load_checkpoint, load_encoder, save_encoder
from salt_cache.errors import SaltCacheError
from salt_cache.models import SIZES, Predictor, build_encoder, param_count

# Table 3 of the paper (encoder parameters); ours differ only by the 3D patch embedding
PAPER_PARAMS = {"base": 86e6, "large": 303e6, "huge": 632e6, "giant": 1012e6}


@pytest.mark.parametrize("name", list(SIZES))
def test_every_size_builds(name):
    width, depth, heads = SIZES[name]
    if name in ("micro", "tiny", "small"):
        model = build_encoder(name)
        x = torch.randn(1, 3, 4, 32, 32)
        assert model(x).shape == (1, 2 * 2 * 2, width)
    else:
        with torch.device("meta"):  # structure and parameter count, no memory
            model = build_encoder(name)
    assert len(model.blocks) == depth and model.blocks[0].attn.num_heads == heads
    if name in PAPER_PARAMS:
        assert abs(param_count(model) / PAPER_PARAMS[name] - 1) < 0.02


@pytest.mark.parametrize("pos", ["rope", "sincos"])
def test_context_tokens_ignore_masked_pixels(pos):
    torch.manual_seed(0)
    model = build_encoder("micro", pos_embed=pos).eval()
    x = torch.randn(2, 3, 8, 64, 64)  # grid 4 x 4 x 4
    ctx = torch.tensor([[0, 3, 17, 40, 63], [5, 6, 7, 21, 50]])
    y = x.clone()
    # overwrite every tubelet that is not a context token
    for b in range(2):
        for t in range(4):
            for h in range(4):
                for w in range(4):
                    if t * 16 + h * 4 + w not in ctx[b]:
                        y[b, :, 2 * t:2 * t + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16] = torch.randn(3, 2, 16, 16) * 5
    with torch.no_grad():
        assert torch.equal(model(x, ctx), model(y, ctx))
        assert not torch.allclose(model(x), model(y))  # the full encode does see them


def test_positions_matter():
    torch.manual_seed(0)
    model = build_encoder("micro").eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        a = model(x, torch.tensor([[0, 1, 2]]))
        b = model(x, torch.tensor([[0, 2, 1]]))
    # permuting tokens permutes the outputs: each token keeps its own position
    assert torch.allclose(a[:, [0, 2, 1]], b, atol=1e-5)


def test_predictor_shapes_and_zero_mask_tokens():
    pred = Predictor(in_dim=96, out_dim=192, embed_dim=64, depth=2, num_heads=4)
    assert torch.count_nonzero(pred.mask_token) == 0
    out = pred(torch.randn(2, 5, 96), torch.arange(5).expand(2, 5), torch.arange(5, 12).expand(2, 7), (2, 2, 4))
    assert out.shape == (2, 7, 192)


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = build_encoder("micro", patch_size=8, tubelet_size=1, pos_embed="sincos").eval()
    save_encoder(tmp_path / "m.pt", model, meta={"note": "x"})
    loaded, ckpt = load_encoder(tmp_path / "m.pt")
    assert loaded.config == model.config and ckpt["meta"] == {"note": "x"}
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoints_never_run_pickled_code(tmp_path):
    torch.save({"format": "salt-cache", "kind": "encoder", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SaltCacheError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(SaltCacheError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"just": "a dict"}, tmp_path / "other.pt")
    with pytest.raises(SaltCacheError, match="not a salt-cache checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
