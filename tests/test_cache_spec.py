"""Cache specs: the shipped ones load with the documented grids; bad specs name file and field."""

import pytest

from salt_cache.errors import SaltCacheError
from salt_cache.spec import CacheSpec, StorageSpec, list_specs, load_spec, specs_dir


def test_shipped_specs_load_with_their_grids():
    assert {"demo", "demo-probe", "vitl-16x224", "vitl-16x224-4view"} <= set(list_specs())
    demo = load_spec("demo")
    assert (demo.grid, demo.tokens, demo.views) == ((4, 8, 8), 256, 2)
    assert (demo.clip.frames, demo.clip.frame_step, demo.clip.size, demo.clip.crop) == (8, 2, 64, "random-resized")
    assert demo.clip.scale == (0.5, 1.0) and demo.clip.ratio == (0.75, 1.35)
    assert demo.storage == StorageSpec()  # float16, blosc-zstd level 5 byte shuffle, 64 rows per shard
    probe = load_spec("demo-probe")
    assert (probe.clip.crop, probe.views, probe.tokens) == ("center", 1, 256)
    paper = load_spec("vitl-16x224")
    assert (paper.grid, paper.tokens, paper.views) == ((8, 14, 14), 1568, 1)
    assert (paper.clip.frames, paper.clip.frame_step, paper.clip.size) == (16, 4, 224)
    assert paper.clip.scale == (0.3, 1.0) and paper.clip.ratio == (0.75, 1.35)
    assert load_spec("vitl-16x224-4view").views == 4
    # a path works as well as a bare name, and the two agree
    assert load_spec(specs_dir() / "demo.yaml") == demo


def test_overrides_and_default_name(tmp_path):
    s = load_spec("demo", ["storage.dtype=bfloat16", "storage.codec=zstd", "storage.level=9", "views=3"])
    assert (s.storage.dtype, s.storage.codec, s.storage.level, s.views) == ("bfloat16", "zstd", 9, 3)
    p = tmp_path / "mine.yaml"
    p.write_text("clip: {frames: 4, frame_step: 1, size: 32}\npatch_size: 8\n")
    s = load_spec(p)
    assert s.name == "mine" and s.grid == (2, 4, 4)
    assert CacheSpec.from_dict(s.to_dict()) == s  # round trip through plain data (cache.json)


@pytest.mark.parametrize("text,expected", [
    ("clip: {frames: 8, frame_step: 2, size: 64}\nstorage: {dtyp: float16}\n", "storage.dtyp: unknown field"),
    ("clip: {frames: 8, frame_step: 2, size: 64}\nstorage: {dtype: int4}\n", "storage.dtype: expected one of"),
    ("clip: {frames: 8, frame_step: 2, size: 36}\npatch_size: 16\n", "clip.size: 36 px is not divisible by patch_size 16"),
    ("clip: {frames: 7, frame_step: 2, size: 64}\n", "clip.frames: 7 is not divisible by tubelet_size 2"),
    ("clip: {frames: 8, frame_step: 2, size: 64, crop: middle}\n", "clip.crop: expected 'center' or 'random-resized'"),
    ("clip: {frames: 8, size: 64, fps: 4}\n", "clip.frame_step: give exactly one of frame_step and fps"),
    ("clip: {frames: 8, frame_step: 2, size: 64}\nviews: 0\n", "views: expected >= 1"),
    ("clip: {frames: 8, frame_step: 2, size: 64}\nstorage: {level: 12}\n", "storage.level: expected 0..9"),
    ("clip: {frames: 8, frame_step: 2, size: 64}\nstorage: {rows_per_shard: 0}\n", "storage.rows_per_shard: expected >= 1"),
    ("clip: {frames: 8, frame_step: 2, size: 64}\nveiws: 2\n", "veiws: unknown field"),
])
def test_bad_specs_name_file_and_field(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SaltCacheError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and expected in msg and "\n" not in msg


def test_unknown_spec_name_lists_the_known_ones():
    with pytest.raises(SaltCacheError, match=r"spec 'demoo'.*known: demo, demo-probe"):
        load_spec("demoo")
    with pytest.raises(SaltCacheError, match=r"no/such/spec.yaml: no such spec file \(known: demo, "):
        load_spec("no/such/spec.yaml")
