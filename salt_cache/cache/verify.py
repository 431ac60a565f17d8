"""`verify_cache`: check a latent cache, cheapest checks first, one Problem per finding.

Order: cache.json and spec parse; build complete; every manifest store present with its done
record, file list and sizes; no stray or partial stores; per-store arrays and row structure (keys
unique, statuses written, failed rows carry reasons, views parse and belong to their row); with
`data`, keys are exactly the clips of those shards; per-store digest; per-row checksum, finite
values and stats, and with student-ready views the digest of each row's decoded frames; with
`teacher`, its sha256 against the fingerprint and `sample` random ok rows re-encoded from their
stored views (the stored frames when the cache has them, else the source video), compared by
cosine and relative error (TOLERANCES).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from salt_cache.cache.config import VerifyConfig
from salt_cache.cache.header import CACHE_JSON, CacheHeader
from salt_cache.cache.manifest import stray_entries
from salt_cache.cache.store import (
    OPTIONAL_ARRAYS, ROW_ARRAYS, STATUS_FAILED, STATUS_NAMES, STATUS_OK, STORES_DIR, done_path, from_storage, open_group, read_done,
    fidelity_summary, row_checksum, stats_problem, store_digest, store_files, stored_dtype,
)
from salt_cache.errors import SaltCacheError

# re-encoding tolerances: (max relative L2 error, min cosine) of a stored row against the teacher
# recomputed in fp32 from the stored view. The storage dtype bounds the rounding of each value
# (float16 ~ 5e-4, bfloat16 ~ 4e-3 relative); batch composition and kernels add ~1e-6 in fp32.
# bf16 autocast (CUDA builds or CUDA verification) dominates everything else.
TOLERANCES = {
    "float32": (1e-3, 0.99999),
    "float16": (2e-3, 0.9999),
    "bfloat16": (1e-2, 0.9995),
    "int8": (2.5e-2, 0.999),  # per-channel scales: ~1% relative error on ViT-like rows (see the build's fidelity)
    "autocast": (5e-2, 0.995),
}
LIST_LIMIT = 50  # missing / extra keys listed one per line up to this many, then a count


@dataclass
class Problem:
    """One finding. store/row/key are None when the problem is not about one store/row/clip."""

    what: str
    store: str | None = None
    row: int | None = None
    key: str | None = None

    def line(self) -> str:
        where = []
        if self.store is not None:
            where.append(f"store {self.store}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.key is not None:
            where.append(f"key {self.key}")
        return (" ".join(where) + ": " if where else "") + self.what

    __str__ = line


@dataclass
class VerifyReport:
    cache: str
    problems: list[Problem] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    stores: int = 0
    rows_checked: int = 0
    reencoded: list[dict] = field(default_factory=list)
    tolerance: dict | None = None
    fidelity: dict | None = None  # the stored rows against the fp32 teacher output, as the build measured
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["problems"] = [{**asdict(p), "line": p.line()} for p in self.problems]
        return d


def report_passed(path: Path) -> bool:
    """A report that `run_verify` wrote to `path` says the cache was sound."""
    try:
        return json.loads(Path(path).read_text()).get("ok") is True
    except (OSError, ValueError, AttributeError):
        return False


def verify_cache(cache, progress=None, **options) -> list[Problem]:
    """All problems found in `cache` (an empty list when it is sound); `options`: the other
    fields of VerifyConfig."""
    return run_verify(VerifyConfig(cache=cache, **options), progress).problems


def run_verify(config: VerifyConfig, progress=None) -> VerifyReport:
    """Verify a cache as `config` says -> VerifyReport (also written to `config.out`)."""
    rep = _verify(config, progress)
    if config.out is not None:
        from salt_cache.console import write_json

        write_json(Path(config.out), rep.to_dict())
    return rep


def _verify(config: VerifyConfig, progress) -> VerifyReport:
    cache, data, teacher, sample = Path(config.cache), config.data, config.teacher, config.sample
    seed, device, digest, rows = config.seed, config.device, config.digest, config.rows
    t0 = time.time()
    rep = VerifyReport(cache=str(cache))
    P = rep.problems.append

    # 1. cache.json and spec
    rep.checks.append("cache.json")
    try:
        header = CacheHeader.read(cache)
    except SaltCacheError as e:
        P(Problem(str(e)))
        rep.seconds = round(time.time() - t0, 3)
        return rep
    spec, dtype, tokens, dim = header.spec, header.dtype, header.tokens, header.teacher_dim
    manifest = header.stores
    if tokens != spec.tokens or list(header.grid) != list(spec.grid):
        P(Problem(f"{CACHE_JSON}: grid {list(header.grid)} / tokens {tokens} do not follow from the spec ({list(spec.grid)}, {spec.tokens})"))
    expected_names = header.store_names
    if not header.complete:
        P(Problem(f"build incomplete: {len(manifest)} of {len(expected_names)} stores finished (re-run the build to resume)"))
    for name in sorted(set(manifest) - set(expected_names)):
        P(Problem("listed in the manifest but not a store of the cache's data", store=name))

    # 2. stores present, done records, files and sizes; strays
    rep.checks.append("stores")
    root = cache / STORES_DIR
    sound: dict[str, dict] = {}
    for name in expected_names:
        if name not in manifest:
            continue
        path = root / name
        if not path.is_dir():
            P(Problem("store missing (listed in the manifest, not on disk)", store=name))
            continue
        done = read_done(path)
        if done is None:
            P(Problem(f"no readable done record {done_path(path).name} (store never finished)", store=name))
            continue
        entry = manifest[name]
        for k in ("rows", "ok", "failed", "bytes", "digest"):
            if done.get(k) != entry.get(k):
                P(Problem(f"done record {k}={done.get(k)!r} disagrees with the manifest's {entry.get(k)!r}", store=name))
        on_disk = store_files(path)
        listed = done.get("files", {})
        bad = False
        for rel, size in sorted(listed.items()):
            if rel not in on_disk:
                P(Problem(f"file {rel} missing", store=name))
                bad = True
            elif on_disk[rel] != size:
                P(Problem(f"file {rel} is {on_disk[rel]} bytes, expected {size} (truncated or overwritten)", store=name))
                bad = True
        for rel in sorted(set(on_disk) - set(listed)):
            P(Problem(f"unexpected file {rel}", store=name))
        sound[name] = {"done": done, "files_ok": not bad}
    for stray in stray_entries(cache, header):
        P(Problem("stray entry in stores/ (partial or foreign; a re-run of the build clears partial stores)", store=stray))
    rep.stores = len(sound)

    # 3. per-store arrays and row structure
    rep.checks.append("structure")
    opened: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for name, info in sound.items():
        arrays = _open_arrays(root / name, info["done"], tokens, dim, dtype, P, name, spec.student_views.stored)
        if arrays is None:
            continue
        opened[name] = arrays
        _check_structure(name, arrays, spec.views, P)
        for key in dict.fromkeys(arrays["key"].tolist()):
            if key in owner:
                P(Problem(f"key also in store {owner[key]}", store=name, key=key))
            else:
                owner[key] = name

    fid = [a["fidelity"][a["status"] == STATUS_OK] for a in opened.values() if "fidelity" in a]
    rep.fidelity = fidelity_summary(np.concatenate(fid)) if fid else None

    # 4. keys against the data
    if data is not None:
        rep.checks.append("keys-vs-data")
        _check_keys(data, owner, P)

    # 5. per-store digest (reads every byte)
    if digest:
        rep.checks.append("digest")
        for name, info in sound.items():
            if info["files_ok"]:
                got = store_digest(root / name, info["done"]["files"])
                if got != info["done"].get("digest"):
                    P(Problem(f"digest mismatch ({got[:19]}... vs recorded {str(info['done'].get('digest'))[:19]}...): store bytes changed", store=name))

    # 6. per-row checksum, finiteness, stats
    if rows:
        rep.checks.append("rows")
        task = progress.add_task("checking rows", total=sum(len(a["status"]) for a in opened.values())) if progress else None
        for name, arrays in opened.items():
            rep.rows_checked += _check_rows(name, arrays, dtype, P, progress, task, spec)

    # 7. teacher fingerprint and re-encoding
    if teacher is not None:
        rep.checks.append("teacher")
        _check_teacher(header, opened, Path(teacher), sample, seed, device, data, rep, P)
    rep.seconds = round(time.time() - t0, 3)
    return rep


def _open_arrays(path: Path, done: dict, tokens: int, dim: int, dtype: str, P, name: str,
                 frames: bool = False) -> dict | None:
    try:
        g = open_group(path)
        lat = g["latents"]
        arrays = {"latents": lat, "path": path}
        for a in ROW_ARRAYS:
            arrays[a] = np.asarray(g[a][...]) if a not in ("key", "view", "reason", "meta") else np.asarray(g[a][...], dtype=object)
        if frames:  # the stored frames' checksum covers the view
            arrays["frames"] = g["frames"]
            arrays["frames_checksum"] = np.asarray(g["frames_checksum"][...])
        elif "view_crc" in g:  # the source decode's CRC covers it (absent from older stores)
            arrays["view_crc"] = np.asarray(g["view_crc"][...])
        if dtype == "int8":
            arrays["latent_scales"] = g["latent_scales"]
        if "fidelity" in g:
            arrays["fidelity"] = np.asarray(g["fidelity"][...])
    except Exception as e:
        P(Problem(f"cannot open store arrays ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})", store=name))
        return None
    n = done.get("rows")
    if tuple(lat.shape) != (n, tokens, dim):
        P(Problem(f"latents shape {tuple(lat.shape)}, expected {(n, tokens, dim)}", store=name))
        return None
    if lat.dtype != stored_dtype(dtype):
        P(Problem(f"latents dtype {lat.dtype}, expected {stored_dtype(dtype)} for {dtype}", store=name))
        return None
    for a in ROW_ARRAYS + tuple(k for k in OPTIONAL_ARRAYS if k in arrays):
        if arrays[a].shape[0] != n:
            P(Problem(f"{a} has {len(arrays[a])} rows, expected {n}", store=name))
            return None
    return arrays


def _check_structure(name: str, a: dict, views: int, P) -> None:
    status, keys, vidx = a["status"], a["key"], a["view_index"]
    n = len(status)
    if n % views:
        P(Problem(f"{n} rows is not a multiple of {views} views", store=name))
    clips = Counter()
    for row in range(n):
        key, s = keys[row], int(status[row])
        if s not in (STATUS_OK, STATUS_FAILED):
            P(Problem(f"status {STATUS_NAMES.get(s, s)} (row never written)", store=name, row=row, key=key or None))
            continue
        if int(vidx[row]) != row % views:
            P(Problem(f"view index {int(vidx[row])}, expected {row % views} (rows out of order)", store=name, row=row, key=key))
        if row % views and key != keys[row - row % views]:
            P(Problem(f"key differs from row {row - row % views} of the same clip (views not consecutive)", store=name, row=row, key=key))
        if row % views == 0:
            clips[key] += 1
        if s == STATUS_FAILED and not a["reason"][row]:
            P(Problem("failed row without a reason", store=name, row=row, key=key))
        if s == STATUS_OK:
            try:
                view = json.loads(a["view"][row])
                if view.get("key") != key or int(view.get("index", -1)) != int(vidx[row]):
                    P(Problem(f"stored view is for {view.get('key')} view {view.get('index')}", store=name, row=row, key=key))
            except (ValueError, TypeError, AttributeError):
                P(Problem("stored view is not valid JSON", store=name, row=row, key=key))
            try:
                json.loads(a["meta"][row] or "{}")
            except ValueError:
                P(Problem("stored meta is not valid JSON", store=name, row=row, key=key))
    for key, c in clips.items():
        if c > 1:
            P(Problem(f"key appears {c} times in this store", store=name, key=key))


def _check_keys(data, owner: dict[str, str], P) -> None:
    from salt_cache.shards import index_shard, resolve_shards

    try:
        paths = resolve_shards(data)
        want = [s.key for p in paths for s in index_shard(p)]
    except SaltCacheError as e:
        P(Problem(f"--data: {e}"))
        return
    have = set(owner)
    missing = [k for k in want if k not in have]
    extra = sorted(have - set(want))
    for label, keys in (("missing from the cache (in the data)", missing), ("in the cache but not in the data", extra)):
        for k in keys[:LIST_LIMIT]:
            P(Problem(label, key=k))
        if len(keys) > LIST_LIMIT:
            P(Problem(f"... and {len(keys) - LIST_LIMIT} more keys {label}"))


def _stored_frames(a: dict, r: int, spec):
    """uint8 [T, S, S, 3] of row r's stored view, decoded as Stage 2 decodes it."""
    from salt_cache.cache.chunks import ChunkReader
    from salt_cache.cache.frames import decode_frames

    if "frame_reader" not in a:
        a["frame_reader"] = ChunkReader(a["path"] / "frames")
    return decode_frames(a["frame_reader"].read(r), spec.student_views.format, spec.clip.size)


def _check_frames(name: str, a: dict, r: int, spec, P) -> None:
    from salt_cache.cache.frames import frames_digest

    try:
        frames = _stored_frames(a, r, spec)
    except Exception as e:  # a damaged chunk, an undecodable JPEG
        P(Problem(f"stored frames unreadable ({_short(e)})", store=name, row=r, key=a["key"][r]))
        return
    got, want = frames_digest(frames), int(a["frames_checksum"][r])
    if got != want:
        P(Problem(f"stored frames decode to other pixels than the teacher encoded (crc32c {got:08x}, recorded {want:08x})",
                  store=name, row=r, key=a["key"][r]))


def _check_rows(name: str, a: dict, dtype: str, P, progress, task, spec=None) -> int:
    lat, status = a["latents"], a["status"]
    n = len(status)
    step = lat.shards[0] if getattr(lat, "shards", None) else 64
    checked = 0
    for start in range(0, n, step):
        stop = min(start + step, n)
        try:
            block = lat[start:stop]
            scales = a["latent_scales"][start:stop] if "latent_scales" in a else None
            rows_of = {r: (block[r - start], None if scales is None else scales[r - start]) for r in range(start, stop)}
        except Exception:
            rows_of = {}
            for r in range(start, stop):  # find which rows are damaged
                try:
                    rows_of[r] = (lat[r], a["latent_scales"][r] if "latent_scales" in a else None)
                except Exception as e:
                    if status[r] == STATUS_OK:
                        P(Problem(f"latents unreadable ({_short(e)})", store=name, row=r, key=a["key"][r]))
        for r in range(start, stop):
            if status[r] != STATUS_OK or r not in rows_of:
                continue
            checked += 1
            if "frames" in a:
                _check_frames(name, a, r, spec, P)
            stored, scale = rows_of[r]
            key = a["key"][r]
            crc = row_checksum(stored, scale)
            if crc != int(a["checksum"][r]):
                P(Problem(f"checksum mismatch (stored crc32 {int(a['checksum'][r]):08x}, computed {crc:08x})", store=name, row=r, key=key))
                continue
            x = from_storage(stored, dtype, scale)
            if not torch.isfinite(x).all():
                P(Problem(f"{int((~torch.isfinite(x)).sum())} non-finite values", store=name, row=r, key=key))
                continue
            why = stats_problem(a["stats"][r], x, dtype)
            if why:
                P(Problem(why, store=name, row=r, key=key))
        if progress:
            progress.advance(task, stop - start)
    return checked


def _short(e: BaseException) -> str:
    """One short line for an exception from zarr / numcodecs (their messages can carry raw bytes)."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = text.split(". Stored")[0]  # crc32c mismatch: the raw checksums add nothing
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


def _check_teacher(header: CacheHeader, opened: dict, teacher: Path, sample: int, seed: int,
                   device: str, data, rep: VerifyReport, P) -> None:
    from salt_cache.checkpoint import file_sha256, load_encoder

    if not teacher.is_file():
        P(Problem(f"{teacher}: teacher checkpoint not found"))
        return
    sha = file_sha256(teacher)
    recorded = header.teacher.sha256
    if sha != recorded:
        P(Problem(f"teacher {teacher} has sha256 {sha[:12]}..., the cache was built with {str(recorded)[:12]}..."))
    if sample <= 0:
        return
    candidates = [(name, r) for name, a in sorted(opened.items()) for r in np.flatnonzero(a["status"] == STATUS_OK).tolist()]
    if not candidates:
        P(Problem("no ok rows to re-encode"))
        return
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(candidates), size=min(sample, len(candidates)), replace=False).tolist())
    try:
        dev = torch.device(device)
        model, _ = load_encoder(teacher, dev)
    except (SaltCacheError, RuntimeError) as e:
        P(Problem(f"cannot re-encode: {e}"))
        return
    shard_paths = _shard_paths(header, data)
    autocast = dev.type == "cuda" or any(
        (header.stores.get(name, {}).get("autocast")) for name, _ in (candidates[i] for i in picks))
    tol_rel, tol_cos = TOLERANCES["autocast" if autocast else header.dtype]
    rep.tolerance = {"max_relative_error": tol_rel, "min_cosine": tol_cos,
                     "basis": "autocast" if autocast else header.dtype}
    from salt_cache.shards import index_shard, read_member
    from salt_cache.video import View, decode_view_uint8, normalize_clip, normalize_frames, view_crc

    index_cache: dict[str, dict] = {}
    for i in picks:
        name, r = candidates[i]
        a = opened[name]
        key = a["key"][r]
        if "frames" in a:  # the teacher's input is the stored view itself
            try:
                view = View.from_dict(json.loads(a["view"][r]))
                x = normalize_frames(_stored_frames(a, r, header.spec), view.mean, view.std)
            except Exception as e:
                P(Problem(f"cannot re-encode ({_short(e)})", store=name, row=r, key=key))
                continue
            _compare_reencoded(model, x, a, r, name, key, dev, header, tol_rel, tol_cos, rep, P)
            continue
        shard = shard_paths.get(name)
        if shard is None or not Path(shard).is_file():
            P(Problem(f"cannot re-encode: shard {shard} not found (pass --data)", store=name, row=r, key=key))
            continue
        if shard not in index_cache:
            try:
                index_cache[shard] = {s.key: s for s in index_shard(Path(shard))}
            except SaltCacheError as e:
                P(Problem(f"cannot re-encode: {e}", store=name, row=r, key=key))
                index_cache[shard] = {}
                continue
        tar = index_cache[shard].get(key)
        if tar is None or tar.video_ext is None:
            P(Problem(f"cannot re-encode: clip not in {Path(shard).name}", store=name, row=r, key=key))
            continue
        try:
            view = View.from_dict(json.loads(a["view"][r]))
            pixels = decode_view_uint8(read_member(Path(shard), tar.members[tar.video_ext]), view)
        except Exception as e:  # an undecodable view
            P(Problem(f"cannot re-encode ({_short(e)})", store=name, row=r, key=key))
            continue
        if "view_crc" in a and view_crc(pixels) != int(a["view_crc"][r]):
            P(Problem(f"decoded view differs from the pixels the teacher saw (CRC {view_crc(pixels):08x}, built "
                      f"{int(a['view_crc'][r]):08x}): repacked shards or another decoder build", store=name, row=r, key=key))
            continue
        x = normalize_clip(pixels, view.mean, view.std)
        _compare_reencoded(model, x, a, r, name, key, dev, header, tol_rel, tol_cos, rep, P)


def _compare_reencoded(model, x, a: dict, r: int, name: str, key: str, dev, header: CacheHeader,
                       tol_rel: float, tol_cos: float, rep: VerifyReport, P) -> None:
    """Teacher forward on clip x [C, T, S, S] vs the stored row r, by relative error and cosine."""
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            y = model(x[None].to(dev))[0].float().cpu()
        stored = from_storage(a["latents"][r], header.dtype, a["latent_scales"][r] if "latent_scales" in a else None)
    except Exception as e:  # a clip that does not tile, a damaged chunk
        P(Problem(f"cannot re-encode ({_short(e)})", store=name, row=r, key=key))
        return
    if y.shape != stored.shape:
        P(Problem(f"teacher output {tuple(y.shape)} vs stored {tuple(stored.shape)}", store=name, row=r, key=key))
        return
    rel = float((stored - y).norm() / y.norm().clamp_min(1e-12))
    cos = float(torch.nn.functional.cosine_similarity(stored.flatten(), y.flatten(), dim=0))
    rep.reencoded.append({"store": name, "row": r, "key": key, "relative_error": rel, "cosine": cos})
    if rel > tol_rel or cos < tol_cos:
        P(Problem(f"re-encoded row differs: relative error {rel:.3g} (max {tol_rel:g}), cosine {cos:.6f} (min {tol_cos:g})",
                  store=name, row=r, key=key))


def _shard_paths(header: CacheHeader, data) -> dict[str, str]:
    """Store name -> shard path: a shard of `data` with the recorded name and size when given,
    else the path recorded at build time."""
    out = {s.store: s.path for s in header.shards}
    if data is not None:
        from salt_cache.shards import resolve_shards

        try:
            given = {(p.name, p.stat().st_size): str(p) for p in resolve_shards(data)}
        except SaltCacheError:
            return out
        for s in header.shards:
            out[s.store] = given.get((s.name, s.bytes), out[s.store])
    return out
