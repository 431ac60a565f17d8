"""`describe_cache`: what a cache holds, from cache.json and the done records (spec,
fingerprint, row / view / clip counts, failed rows, bytes on disk vs raw fp32, one line per
store), plus the RankMe / effective rank of a sample of its latents (`latent_ranks`), so a
teacher can be judged before Stage 2 is paid for: a collapsed teacher's latents have a rank of a
few, whatever its loss said."""

from __future__ import annotations

from pathlib import Path

from salt_cache.cache.header import CacheHeader
from salt_cache.cache.manifest import stray_entries
from salt_cache.cache.store import merge_fidelity
from salt_cache.diagnostics import MAX_TOKEN_ROWS

RANK_SAMPLE = 256  # rows read for the rank diagnostics


def latent_ranks(cache: Path, rows: int = RANK_SAMPLE, max_rows: int = MAX_TOKEN_ROWS) -> dict | None:
    """RankMe and effective rank of the cached latents, on `rows` ok rows spread evenly over all
    ok rows in (store, row) order (so every store contributes in proportion to its rows; the
    same rows every time): token level (each row gives an equal share of `max_rows` token rows)
    and row level (each row's mean token). -> {"rows", "ok_rows", "tokens", "dim",
    "rankme_token", "rankme_row", "erank_token", "erank_row"}; None when rows is 0 or nothing is ok."""
    from salt_cache.cache.reader import CacheReader
    from salt_cache.diagnostics import RankSample, even_sample

    if rows <= 0:
        return None
    reader = CacheReader(cache)
    refs = sorted((r for key in reader.keys() for r in reader.rows(key)), key=lambda r: (r.store, r.row))
    picked = [refs[i] for i in even_sample(len(refs), rows)]
    if not picked:
        return None
    sample = RankSample(len(picked), max_rows)
    for i, ref in enumerate(picked):  # one row at a time: memory stays one row + the sample
        sample.add(reader.read(ref)[None], i)
    r = sample.ranks()
    return {"rows": len(picked), "ok_rows": len(refs), "tokens": reader.tokens, "dim": reader.teacher_dim,
            "rankme_token": r["rankme_token"], "rankme_row": r["rankme_clip"],
            "erank_token": r["erank_token"], "erank_row": r["erank_clip"]}


def describe_cache(cache: Path, rank_sample: int = RANK_SAMPLE) -> dict:
    """-> {"cache", "status", "spec", "fingerprint", "counts", "bytes", "fidelity" (the stored
    latents against the fp32 teacher output, worst row and mean; None for older caches), "stores": [...],
    "failures": [...], "missing_stores": [...], "stray": [...], "ranks": `latent_ranks` of
    `rank_sample` rows (None for 0)}."""
    cache = Path(cache)
    h = CacheHeader.read(cache)
    stores = h.stores
    views = h.spec.views
    tokens, dim = h.tokens, h.teacher_dim
    fp32_row = tokens * dim * 4
    rows = sum(s["rows"] for s in stores.values())
    on_disk = sum(s["bytes"] for s in stores.values())
    per_store = []
    for s in h.shards:
        e = stores.get(s.store)
        per_store.append({
            "store": s.store, "shard": s.name, "done": e is not None,
            "rows": e["rows"] if e else None, "ok": e["ok"] if e else None, "failed": e["failed"] if e else None,
            "bytes": e["bytes"] if e else None, "bytes_per_row": (e["bytes"] / e["rows"]) if e and e["rows"] else None,
            "seconds": e.get("seconds") if e else None, "rank": e.get("rank") if e else None,
        })
    failures = [{"store": name, **f} for name, e in sorted(stores.items()) for f in e.get("failures", [])]
    t = h.teacher
    return {
        "cache": str(cache),
        "status": h.status,
        "cache_id": h.cache_id,
        "spec": h.spec.to_dict(),
        "fingerprint": {
            "teacher_file": t.file, "teacher_sha256": t.sha256,
            "teacher_model": t.config.get("name") or None,
            "teacher_config": dict(t.config), "teacher_dim": dim, "grid": list(h.grid),
            "tokens": tokens, "token_order": h.token_order, "final_norm": h.final_norm,
            "dtype": h.dtype, "stored_dtype": h.storage.get("stored_dtype"),
            "codec": h.storage.get("codec"), "level": h.storage.get("level"),
            "rows_per_shard": h.storage.get("rows_per_shard"), "codecs": h.storage.get("codecs"),
            "shuffle": h.spec.storage.shuffle,
            "student_views": (f"{h.spec.student_views.format}" + (f" quality {h.spec.student_views.quality}"
                              if h.spec.student_views.format == "jpeg" else "")) if h.spec.student_views.stored else None,
            "versions": dict(h.versions), "build": dict(h.build),
        },
        "counts": {
            "stores": len(h.shards), "stores_done": len(stores), "clips": sum(s["clips"] for s in stores.values()),
            "rows": rows, "views_per_clip": views, "ok": sum(s["ok"] for s in stores.values()),
            "failed": sum(s["failed"] for s in stores.values()),
        },
        "bytes": {"on_disk": on_disk, "raw_fp32": rows * fp32_row,
                  "bytes_per_row": on_disk / rows if rows else 0.0, "fp32_bytes_per_row": fp32_row,
                  "ratio_vs_fp32": on_disk / (rows * fp32_row) if rows else 0.0},
        "fidelity": merge_fidelity(e.get("fidelity") for e in stores.values()),
        "stores": per_store,
        "failures": failures,
        "missing_stores": [s.store for s in h.shards if s.store not in stores],
        "stray": stray_entries(cache, h),
        "summary": h.summary,
        "ranks": latent_ranks(cache, rank_sample) if rows else None,
    }
