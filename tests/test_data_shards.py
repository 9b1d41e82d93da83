import json
import struct

import numpy as np
import pytest
import torch

from mpt_ext.data import (ByteTokenizer, ShardError, WindowSampler, build_shard, cu_seqlens,
                          open_shard, split_tokens, stdlib_documents)
from mpt_ext.data.shards import HEADER, iter_documents


class OtherTokenizer(ByteTokenizer):
    name = "other"
    fingerprint = "0123456789abcdef"


def _corpus(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "b.txt").write_text("second doc é\n")
    (tmp_path / "src" / "a.txt").write_text("first doc\n")
    (tmp_path / "src" / ".hidden").write_text("skipped")
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "json one"}) + "\n\n"
                                         + json.dumps({"text": "json two"}) + "\n")
    return [tmp_path / "src", tmp_path / "docs.jsonl"]


def test_documents_order_and_shard_contents(tmp_path):
    sources = _corpus(tmp_path)
    names = [n for n, _ in iter_documents(sources)]
    assert [n.split("/")[-1] for n in names] == ["a.txt", "b.txt", "docs.jsonl:1", "docs.jsonl:3"]
    tok = ByteTokenizer()
    shard, hit = build_shard(sources, tok, tmp_path / "cache")
    assert not hit
    expected = []
    for text in ["first doc\n", "second doc é\n", "json one", "json two"]:
        expected += tok.encode(text) + [tok.eos_token_id]
    assert shard.tokens.dtype == np.uint16
    assert shard.tokens.tolist() == expected
    assert shard.tokenizer_name == "byte" and shard.tokenizer_fingerprint == tok.fingerprint


def test_shard_cache_hit_and_content_change_rebuilds(tmp_path):
    sources = _corpus(tmp_path)
    tok = ByteTokenizer()
    first, hit1 = build_shard(sources, tok, tmp_path / "cache")
    mtime = first.path.stat().st_mtime_ns
    again, hit2 = build_shard(sources, tok, tmp_path / "cache")
    assert (hit1, hit2) == (False, True)
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    (tmp_path / "src" / "a.txt").write_text("changed\n")
    changed, hit3 = build_shard(sources, tok, tmp_path / "cache")
    assert not hit3 and changed.path != first.path
    # another tokenizer never reuses the byte tokenizer's shard
    other, hit4 = build_shard(sources, OtherTokenizer(), tmp_path / "cache")
    assert not hit4 and other.path != changed.path


def test_shard_header_mismatch_and_corruption_raise(tmp_path):
    shard, _ = build_shard(_corpus(tmp_path), ByteTokenizer(), tmp_path / "cache")
    with pytest.raises(ShardError, match="built with tokenizer 'byte'"):
        open_shard(shard.path, OtherTokenizer())
    raw = bytearray(shard.path.read_bytes())
    bad_magic = tmp_path / "bad_magic.bin"
    bad_magic.write_bytes(b"NOTTOKS\0" + raw[8:])
    with pytest.raises(ShardError, match="not an mpt_ext token shard"):
        open_shard(bad_magic)
    bad_version = tmp_path / "bad_version.bin"
    bad_version.write_bytes(raw[:8] + struct.pack("<I", 99) + raw[12:])
    with pytest.raises(ShardError, match="format version 99"):
        open_shard(bad_version)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(raw[:-3])
    with pytest.raises(ShardError, match="truncated"):
        open_shard(truncated)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(raw[:HEADER.size - 1])
    with pytest.raises(ShardError, match="truncated"):
        open_shard(tiny)


def test_bad_sources_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        list(iter_documents([tmp_path / "missing"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'text'"):
        list(iter_documents([bad]))
    with pytest.raises(ValueError, match="at least one"):
        list(iter_documents([]))


def test_stdlib_corpus_is_deterministic_and_capped():
    a = list(stdlib_documents(max_bytes=200_000))
    b = list(stdlib_documents(max_bytes=200_000))
    assert a == b and len(a) > 3
    total = sum(len(t.encode()) for _, t in a)
    assert 200_000 <= total < 200_000 + max(len(t.encode()) for _, t in a) + 1
    assert [n for n, _ in a] == sorted(n for n, _ in a)


def test_split_is_at_a_document_start():
    eos = 9
    tokens = np.array([1, 2, eos, 3, 4, 5, eos, 6, 7, eos, 8, eos], dtype=np.uint16)
    train, val = split_tokens(tokens, 0.4, eos)
    assert len(train) + len(val) == len(tokens)
    assert train[-1] == eos and len(val) > 0
    assert split_tokens(tokens, 0.0, eos)[1].size == 0
    with pytest.raises(ValueError, match="val_fraction"):
        split_tokens(tokens, 1.0, eos)


def test_sampler_windows_are_shifted_views_of_the_stream():
    tokens = np.arange(1000, dtype=np.uint16)
    s = WindowSampler(tokens, seq_len=17, global_batch=5, seed=3)
    x, y = s.next_batch()
    assert x.shape == y.shape == (5, 17) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)                 # arange: labels are the next tokens
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows


def test_sampler_determinism_and_resume():
    tokens = np.random.default_rng(0).integers(0, 259, 5000).astype(np.uint16)
    a = WindowSampler(tokens, 32, 4, seed=11)
    full = [a.next_batch() for _ in range(6)]
    b = WindowSampler(tokens, 32, 4, seed=11)
    for _ in range(2):
        b.next_batch()
    state = b.state_dict()
    c = WindowSampler(tokens, 32, 4, seed=999)   # a different seed: the state overrides it
    c.load_state_dict(state)
    for i in range(2, 6):
        x, y = c.next_batch()
        assert torch.equal(x, full[i][0]) and torch.equal(y, full[i][1])
    d = WindowSampler(tokens, 64, 4, seed=11)
    with pytest.raises(ValueError, match="seq_len=32"):
        d.load_state_dict(state)
    assert not torch.equal(WindowSampler(tokens, 32, 4, seed=12).next_batch()[0], full[0][0])


def test_sampler_ranks_partition_the_global_batch():
    tokens = np.arange(3000, dtype=np.uint32)
    whole = WindowSampler(tokens, 8, 6, seed=5).next_batch()[0]
    parts = [WindowSampler(tokens, 8, 6, seed=5, rank=r, world_size=3).next_batch()[0] for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="divisible"):
        WindowSampler(tokens, 8, 6, seed=5, rank=0, world_size=4)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        WindowSampler(tokens[:8], 8, 1, seed=0)


def test_packed_labels_and_cu_seqlens():
    eos = 0
    x = torch.tensor([[5, 6, eos, 7, 8], [eos, 1, 2, 3, eos]])
    cu, max_len = cu_seqlens(x, eos)
    # row 0: [5 6 eos] [7 8]; row 1: [eos] [1 2 3 eos]
    assert cu.tolist() == [0, 3, 5, 6, 10] and cu.dtype == torch.int32 and max_len == 4
    tokens = np.array([5, 6, eos, 7, 8, eos] * 50, dtype=np.uint16)
    s = WindowSampler(tokens, 12, 3, seed=1, packed=True, eos_token_id=eos)
    xb, yb = s.next_batch()
    assert torch.all(yb[xb == eos] == -100)
    assert torch.all(yb[xb != eos] != -100)
