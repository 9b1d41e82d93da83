"""Data for training: tokenizers, the embedded default corpus, token shards and samplers."""
from .tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer"]
