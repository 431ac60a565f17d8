"""Reading webdataset tar shards: the one place that knows how tar members make samples.

Key rule, webdataset's own (`webdataset.tariterators.base_plus_ext`): member `dir/clip.v1.mp4`
belongs to the sample with key `dir/clip`, as its field `v1.mp4`. The key ends at the FIRST dot
of the file name (dots in folder names stay in the key); fields are lower-cased. A field's kind
is its LAST dotted part, as webdataset's decoders read it: `v1.mp4` is a video, `v1.json` the
sample's record. Members webdataset skips (`__*__` metadata, anything not a regular file) are
skipped here too. So a foreign shard (e.g. video2dataset output) gives the same keys to the
cache build, which indexes tar headers, and to Stage 2, which streams the shard with webdataset.

Two ways in, one rule:
    index_shard(path) -> [TarSample]     tar headers only: keys and where each field lies
                                         (cache build, verify, key and label lists)
    read_samples(paths) -> Iterator[Sample]  the webdataset stream: key, video bytes, record
                                         (training; nothing is decoded)

A new shard format (another container, another record) is added here and nowhere else.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from salt_cache.errors import SaltCacheError
from salt_cache.video import VIDEO_EXTENSIONS

INDEX_NAME = "index.json"
SKIP_META = r"__[^/]*__($|/)"  # webdataset's tar_file_iterator skip_meta


def split_member(name: str) -> tuple[str | None, str | None]:
    """Tar member name -> (sample key, field) by webdataset's rule; (None, None) for a name
    without a dot in its file name (webdataset drops such members)."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return (key, ext.lower()) if key is not None else (None, None)


def field_kind(name: str) -> str:
    """The kind of a sample field: its last dotted part (`v1.mp4` -> `mp4`)."""
    return name.rsplit(".", 1)[-1]


def video_field(fields: Iterable[str]) -> str | None:
    """The field holding the sample's video: the first (in VIDEO_EXTENSIONS order, then by name)
    whose kind is a video extension; None when there is none."""
    fields = sorted(fields)
    for ext in VIDEO_EXTENSIONS:
        for f in fields:
            if field_kind(f) == ext[1:]:
                return f
    return None


def meta_field(fields: Iterable[str]) -> str | None:
    """The field holding the sample's JSON record: `json`, else the first `*.json` by name."""
    fields = sorted(fields)
    if "json" in fields:
        return "json"
    return next((f for f in fields if field_kind(f) == "json"), None)


def parse_meta(raw: bytes | str | dict | None, key: str) -> dict:
    """A sample's JSON record -> dict ({} when absent); SaltCacheError naming the key otherwise."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SaltCacheError(f"{key}: the sample's record is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SaltCacheError(f"{key}: the sample's record is not a JSON object")
    return meta


# ---------------------------------------------------------------- tar headers


@dataclass(frozen=True)
class Member:
    offset: int
    size: int


@dataclass(frozen=True)
class TarSample:
    """One sample of a shard: its key and where its fields lie in the tar file."""

    key: str
    members: dict = field(default_factory=dict)  # field (lower case) -> Member

    @property
    def video_ext(self) -> str | None:
        """The field holding the video (see `video_field`)."""
        return video_field(self.members)

    @property
    def meta_ext(self) -> str | None:
        return meta_field(self.members)


def index_shard(path: Path) -> list[TarSample]:
    """Samples of one tar shard in tar order, from the headers only (no member data is read).

    Raises SaltCacheError for an unreadable tar or a key that appears twice."""
    path = Path(path)
    samples: list[TarSample] = []
    seen: set[str] = set()
    try:
        with tarfile.open(path, "r:") as tf:
            current: TarSample | None = None
            for m in tf:
                if not m.isfile() or re.match(SKIP_META, m.name):
                    continue
                key, ext = split_member(m.name)
                if key is None:
                    continue
                if current is None or key != current.key:
                    if key in seen:
                        raise SaltCacheError(f"{path}: key {key!r} appears twice in this shard")
                    seen.add(key)
                    current = TarSample(key=key, members={})
                    samples.append(current)
                current.members[ext] = Member(m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SaltCacheError(f"{path}: unreadable shard ({e})") from None
    return samples


def read_member(path: Path, member: Member) -> bytes:
    with open(path, "rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise OSError(f"{path}: short read at offset {member.offset}")
    return data


def read_meta(path: Path, sample: TarSample) -> dict:
    """The JSON record of an indexed sample ({} when it has none)."""
    ext = sample.meta_ext
    return parse_meta(read_member(Path(path), sample.members[ext]) if ext else None, f"{Path(path).name}: {sample.key}")


def shard_keys(path: Path) -> list[str]:
    """Keys of one shard in tar order, from the tar headers only (no video bytes are read)."""
    return [s.key for s in index_shard(path)]


def shard_labels(path: Path) -> dict[str, object]:
    """{clip key: label or None} from the records of one shard (no video bytes are read)."""
    return {s.key: read_meta(path, s).get("label") for s in index_shard(path)}


# ---------------------------------------------------------------- the webdataset stream


@dataclass(frozen=True)
class Sample:
    """One shard sample before decoding: key, the compressed video bytes, the json record."""

    key: str
    video: bytes
    meta: dict


def to_sample(fields: dict) -> Sample:
    """A webdataset sample dict ({"__key__", field: bytes, ...}) -> Sample."""
    key = fields["__key__"]
    ext = video_field(f for f in fields if not f.startswith("__"))
    if ext is None:
        raise SaltCacheError(f"{key}: sample has no video member (expected one of {', '.join(VIDEO_EXTENSIONS)})")
    meta = meta_field(f for f in fields if not f.startswith("__"))
    return Sample(key=key, video=fields[ext], meta=parse_meta(fields[meta] if meta else None, key))


def read_samples(shards: list[Path]) -> Iterator[Sample]:
    """Samples of the shards in order, video bytes untouched (webdataset's tar stream)."""
    import webdataset as wds

    urls = [str(p) for p in shards]
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    try:
        for s in pipeline:
            yield to_sample(s)
    except (OSError, ValueError, tarfile.TarError) as e:
        # webdataset puts the shard's url last in the exception's args
        where = next((a for a in reversed(e.args) if isinstance(a, str) and a in urls), None)
        reason = str(e.args[0]) if e.args else type(e).__name__
        if where is None:
            where, reason = f"one of {', '.join(Path(p).name for p in shards)}", str(e)
        raise SaltCacheError(f"{where}: unreadable shard ({reason})") from None


def read_range(path: Path, start: int, stop: int, count: int | None = None) -> Iterator[Sample]:
    """Samples `start` to `stop` (tar order, stop excluded) of one shard of `count` samples. A
    whole shard streams through webdataset; a part of one is read by seeking to its members
    (tar headers indexed first), so a split that owns the tail of a shard never reads its head."""
    if start >= stop:
        return
    if start == 0 and count is not None and stop >= count:
        yield from read_samples([Path(path)])
        return
    picked = index_shard(Path(path))[start:stop]
    try:
        with open(path, "rb") as f:
            for s in picked:
                fields = {"__key__": s.key}
                for name, m in s.members.items():
                    f.seek(m.offset)
                    fields[name] = f.read(m.size)
                    if len(fields[name]) != m.size:
                        raise OSError(f"short read at offset {m.offset}")
                yield to_sample(fields)
    except OSError as e:
        raise SaltCacheError(f"{path}: unreadable shard ({e})") from None


def shard_sample_counts(shards: list[Path]) -> list[int]:
    """Samples per shard, from each folder's index.json where it lists the shard (what
    `salt-cache shards` writes), else from the shard's tar headers (no member data is read)."""
    listed: dict[Path, dict[str, int]] = {}
    out = []
    for p in shards:
        p = Path(p)
        folder = p.parent
        if folder not in listed:
            listed[folder] = {}
            try:
                doc = json.loads((folder / INDEX_NAME).read_text())
                listed[folder] = {str(s["name"]): int(s["samples"]) for s in doc.get("shards", [])
                                  if isinstance(s, dict) and "samples" in s}
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                pass
        n = listed[folder].get(p.name)
        out.append(n if n is not None else len(index_shard(p)))
    return out


def iter_shard(path: Path) -> Iterator[tuple[str, bytes, dict]]:
    """(key, video bytes, record) for every sample of one shard, in tar order."""
    for s in read_samples([Path(path)]):
        yield s.key, s.video, s.meta


# ---------------------------------------------------------------- shard lists and the data's name


TASK_NAME = "task.json"


def task_info(folder: Path) -> dict:
    """What the data in shard folder `folder` is, for titles and class names:
    {"name": str, "classes": list[str] | None, "from": where the name came from}.

    Looked up in order: `task.json` at the data root (the folder's parent; demo tasks write
    {"name": ..., "classes": [...]} there), a "task" or "name" field of the folder's index.json,
    else the folder's own path (and no classes)."""
    folder = Path(folder)
    for path, fields in ((folder.parent / TASK_NAME, ("name", "task")), (folder / INDEX_NAME, ("task", "name"))):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        name = next((doc[f] for f in fields if isinstance(doc.get(f), str) and doc[f].strip()), None)
        if name is not None:
            classes = doc.get("classes")
            ok = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            return {"name": name, "classes": list(classes) if ok else None, "from": str(path)}
    return {"name": str(folder), "classes": None, "from": "folder path"}


def resolve_shards(spec) -> list[Path]:
    """SHARDS as a folder (its index.json, else shard-*.tar), a brace pattern, a comma list, or a
    list of any of these -> existing tar paths, in a stable order."""
    from braceexpand import braceexpand

    items = spec if isinstance(spec, (list, tuple)) else [spec]
    paths: list[Path] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            p = Path(part)
            if p.is_dir():
                index = p / INDEX_NAME
                if index.exists():
                    names = [s["name"] for s in json.loads(index.read_text())["shards"]]
                    found = [p / n for n in names]
                else:
                    found = sorted(p.glob("*.tar"))
                if not found:
                    raise SaltCacheError(f"{p}: no .tar shards in this folder")
                paths.extend(found)
            else:
                for q in braceexpand(part):
                    paths.append(Path(q))
    if not paths:
        raise SaltCacheError(f"no shards given ({spec!r})")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SaltCacheError(f"{missing[0]}: shard file not found")
    if len(set(paths)) != len(paths):
        raise SaltCacheError("the same shard is listed twice")
    return paths
