"""Data for training: tokenizers, the embedded default corpus, token shards and samplers."""
from .corpus import stdlib_documents
from .sampler import WindowSampler, cu_seqlens, eval_batches
from .shards import ShardError, TokenShard, build_shard, open_shard, split_tokens
from .tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "stdlib_documents", "ShardError",
           "TokenShard", "build_shard", "open_shard", "split_tokens", "WindowSampler",
           "eval_batches", "cu_seqlens"]
