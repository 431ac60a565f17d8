"""The teacher-latent cache: build it once, verify it, read it by clip key.

    build_cache(teacher, data, spec, out)  -> BuildSummary   (`salt-cache build`)
    verify_cache(cache, data, teacher, sample) -> [Problem]  (`salt-cache verify`)
    describe_cache(cache) -> dict                             (`salt-cache inspect`)
    CacheReader(cache)                                        (Stage 2, probe)
"""

from salt_cache.cache.build import BuildSummary, build_cache
from salt_cache.cache.describe import describe_cache
from salt_cache.cache.reader import CacheReader, RowRef
from salt_cache.cache.verify import Problem, VerifyReport, run_verify, verify_cache

__all__ = [
    "BuildSummary", "CacheReader", "Problem", "RowRef", "VerifyReport", "build_cache", "describe_cache",
    "run_verify", "verify_cache",
]
