"""`describe_cache`: what a cache holds, from cache.json and the done records alone (no latent
is read): spec, fingerprint, row / view / clip counts, failed rows, bytes on disk vs raw fp32,
one line per store."""

from __future__ import annotations

from pathlib import Path

from salt_cache.cache.manifest import read_cache_json, stray_entries


def describe_cache(cache: Path) -> dict:
    """-> {"cache", "status", "spec", "fingerprint", "counts", "bytes", "stores": [...],
    "failures": [...], "missing_stores": [...], "stray": [...]}."""
    cache = Path(cache)
    doc = read_cache_json(cache)
    stores = doc.get("stores", {})
    shards = doc.get("data", {}).get("shards", [])
    views = int(doc["spec"].get("views", 1))
    tokens, dim = int(doc["tokens"]), int(doc["teacher_dim"])
    fp32_row = tokens * dim * 4
    rows = sum(s["rows"] for s in stores.values())
    on_disk = sum(s["bytes"] for s in stores.values())
    per_store = []
    for s in shards:
        e = stores.get(s["store"])
        per_store.append({
            "store": s["store"], "shard": s["name"], "done": e is not None,
            "rows": e["rows"] if e else None, "ok": e["ok"] if e else None, "failed": e["failed"] if e else None,
            "bytes": e["bytes"] if e else None, "bytes_per_row": (e["bytes"] / e["rows"]) if e and e["rows"] else None,
            "seconds": e.get("seconds") if e else None, "rank": e.get("rank") if e else None,
        })
    failures = [{"store": name, **f} for name, e in sorted(stores.items()) for f in e.get("failures", [])]
    teacher = doc.get("teacher", {})
    return {
        "cache": str(cache),
        "status": doc.get("status"),
        "cache_id": doc.get("cache_id"),
        "spec": doc["spec"],
        "fingerprint": {
            "teacher_file": teacher.get("file"), "teacher_sha256": teacher.get("sha256"),
            "teacher_model": teacher.get("config", {}).get("name") or None,
            "teacher_config": teacher.get("config"), "teacher_dim": dim, "grid": doc.get("grid"),
            "tokens": tokens, "token_order": doc.get("token_order"), "final_norm": doc.get("final_norm"),
            "dtype": doc["storage"]["dtype"], "stored_dtype": doc["storage"].get("stored_dtype"),
            "codec": doc["storage"].get("codec"), "level": doc["storage"].get("level"),
            "rows_per_shard": doc["storage"].get("rows_per_shard"), "codecs": doc["storage"].get("codecs"),
            "versions": doc.get("versions"), "build": doc.get("build"),
        },
        "counts": {
            "stores": len(shards), "stores_done": len(stores), "clips": sum(s["clips"] for s in stores.values()),
            "rows": rows, "views_per_clip": views, "ok": sum(s["ok"] for s in stores.values()),
            "failed": sum(s["failed"] for s in stores.values()),
        },
        "bytes": {"on_disk": on_disk, "raw_fp32": rows * fp32_row,
                  "bytes_per_row": on_disk / rows if rows else 0.0, "fp32_bytes_per_row": fp32_row,
                  "ratio_vs_fp32": on_disk / (rows * fp32_row) if rows else 0.0},
        "stores": per_store,
        "failures": failures,
        "missing_stores": [s["store"] for s in shards if s["store"] not in stores],
        "stray": stray_entries(cache, doc),
        "summary": doc.get("summary"),
    }
