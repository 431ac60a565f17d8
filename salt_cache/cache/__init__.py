"""The teacher-latent cache: build it once, verify it, read it by clip key.

    build_cache(BuildConfig(teacher, data, spec, out))  -> BuildSummary   (`salt-cache build`)
    run_verify(VerifyConfig(cache, data, teacher)) -> VerifyReport      (`salt-cache verify`)
    verify_cache(cache, **options) -> [Problem]
    describe_cache(cache) -> dict                             (`salt-cache inspect`)
    CacheReader(cache)                                        (Stage 2, probe)
    CacheHeader.read(cache)                                   cache.json, typed (every reader)

Modules: config (BuildConfig, VerifyConfig), header (cache.json), manifest (new headers, resume checks, finished stores), store (one
Zarr store: layout, writer, done record), source (decoding the clips to encode), build, reader,
verify, describe, tables (rich tables of the results).
"""

from __future__ import annotations

import importlib

# what `from salt_cache.cache import X` gives, loaded on first use: the configs (cache.config)
# load without torch, so the CLI that shows their defaults starts fast
_EXPORTS = {
    "BuildConfig": "config", "VerifyConfig": "config", "BuildSummary": "build", "build_cache": "build",
    "describe_cache": "describe", "CacheHeader": "header", "is_complete": "header", "CacheReader": "reader",
    "RowRef": "reader", "Problem": "verify", "VerifyReport": "verify", "run_verify": "verify", "verify_cache": "verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'salt_cache.cache' has no attribute {name!r}")
    return getattr(importlib.import_module(f"salt_cache.cache.{_EXPORTS[name]}"), name)
