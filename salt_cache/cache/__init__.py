"""The teacher-latent cache: build it once, verify it, read it by clip key.

    build_cache(BuildConfig(teacher, data, spec, out))  -> BuildSummary   (`salt-cache build`)
    run_verify(VerifyConfig(cache, data, teacher)) -> VerifyReport      (`salt-cache verify`)
    verify_cache(cache, **options) -> [Problem]
    describe_cache(cache) -> dict                             (`salt-cache inspect`)
    CacheReader(cache)                                        (Stage 2, probe)
    CacheHeader.read(cache)                                   cache.json, typed (every reader)

Modules: header (cache.json), manifest (new headers, resume checks, finished stores), store (one
Zarr store: layout, writer, done record), source (decoding the clips to encode), build, reader,
verify, describe, tables (rich tables of the results).
"""

from salt_cache.cache.build import BuildConfig, BuildSummary, build_cache
from salt_cache.cache.describe import describe_cache
from salt_cache.cache.header import CacheHeader, is_complete
from salt_cache.cache.reader import CacheReader, RowRef
from salt_cache.cache.verify import Problem, VerifyConfig, VerifyReport, run_verify, verify_cache

__all__ = [
    "BuildConfig", "BuildSummary", "CacheHeader", "CacheReader", "Problem", "RowRef", "VerifyConfig", "VerifyReport",
    "build_cache", "describe_cache", "is_complete", "run_verify", "verify_cache",
]
