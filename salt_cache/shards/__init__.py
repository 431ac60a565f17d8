"""Video shards: webdataset tars of original video bytes + a JSON record per sample.

    read   the one reader: webdataset's key rule, tar-header index, the sample stream, shard
           lists (folder, brace pattern, comma list), labels and the data's name
    pack   videos (a folder or a CSV / JSONL manifest) -> shard-NNNNNN.tar + index.json
"""

from salt_cache.shards.pack import PackSummary, ShardsConfig, Source, is_packed, list_sources, make_keys, write_shards
from salt_cache.shards.read import (
    INDEX_NAME, Member, Sample, TarSample, index_shard, iter_shard, read_member, read_meta, read_samples,
    resolve_shards, shard_keys, shard_labels, split_member, task_info,
)

__all__ = [
    "INDEX_NAME", "Member", "PackSummary", "Sample", "ShardsConfig", "Source", "is_packed", "TarSample", "index_shard", "iter_shard",
    "list_sources", "make_keys", "read_member", "read_meta", "read_samples", "resolve_shards", "shard_keys",
    "shard_labels", "split_member", "task_info", "write_shards",
]
