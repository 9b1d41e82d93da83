"""Data for training: tokenizers, the embedded default corpus, token shards and samplers."""
from .corpus import stdlib_documents
from .sampler import WindowSampler, cu_seqlens, eval_batches
from .shards import (DataSourceNotFound, DataWarning, ShardError, SourceReport, TokenShard,
                     build_shard, heldout_problem, open_shard, split_tokens)
from .tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "stdlib_documents", "ShardError",
           "DataSourceNotFound", "DataWarning", "SourceReport", "TokenShard", "build_shard",
           "heldout_problem", "open_shard", "split_tokens", "WindowSampler", "eval_batches",
           "cu_seqlens"]
