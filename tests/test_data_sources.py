"""Data sources a new user points the trainer at: undecodable and binary files, empty
folders, interrupted tokenisation, a short held-out set, and the errors for bad input
(all UsageError, the one type the CLIs print as one line)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from mpt_ext.data import ByteTokenizer, DataWarning, build_shard, heldout_problem, load_tokenizer
from mpt_ext.data.shards import iter_documents
from mpt_ext.errors import UsageError


def _build(sources, cache, log=None):
    messages = [] if log is None else log
    shard, hit = build_shard(sources, ByteTokenizer(), cache, log=messages.append)
    return shard, hit, messages


def test_one_invalid_byte_keeps_the_file_and_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text("good text\n")
    (src / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))  # one bad byte
    shard, _, messages = _build([src], tmp_path / "cache")
    tok = ByteTokenizer()
    text = tok.decode(shard.tokens.tolist())
    assert "caf\ufffd au lait" in text and "good text" in text
    assert any("1 file" in m and "undecodable" in m and "latin1.txt" in m for m in messages), messages


def test_binary_files_are_skipped_with_a_count(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("some text\n")
    (src / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (src / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + os.urandom(64))
    names = [n for n, _ in iter_documents([src])]
    assert [n.split("/")[-1] for n in names] == ["a.txt"]
    _, _, messages = _build([src], tmp_path / "cache")
    assert any("skipped 2 binary file" in m for m in messages), messages


@pytest.mark.parametrize("kind", ["empty", "binary_only", "empty_files"])
def test_folder_without_text_fails_the_same_way_every_run(tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    if kind == "binary_only":
        (src / "blob.bin").write_bytes(b"\0\1\2" * 100)
    elif kind == "empty_files":
        (src / "a.txt").write_text("")
        (src / "b.txt").write_text("")
    errors = []
    for _ in range(3):
        with pytest.raises(UsageError) as e:
            _build([src], tmp_path / "cache")
        errors.append(str(e.value))
    assert errors[0] == errors[1] == errors[2]
    assert str(src) in errors[0] and "no text" in errors[0]
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # nothing was cached


def test_stale_temp_shard_of_a_killed_run_is_removed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    old_style = cache / f".tokens-0123456789abcdef01234567.bin.tmp{dead_pid}"
    old_style.write_bytes(b"\0" * 100)
    stale = cache / ".tokens-aaaaaaaaaaaaaaaaaaaaaaaa.bin.tmp-otherhost-1"
    stale.write_bytes(b"\0" * 100)
    old = time.time() - 3 * 24 * 3600
    os.utime(stale, (old, old))
    fresh_other_host = cache / ".tokens-bbbbbbbbbbbbbbbbbbbbbbbb.bin.tmp-otherhost-1"
    fresh_other_host.write_bytes(b"\0" * 100)   # maybe a live run on another node: kept
    (tmp_path / "a.txt").write_text("text\n")
    shard, _, messages = _build([tmp_path / "a.txt"], cache)
    assert not old_style.exists() and not stale.exists()
    assert fresh_other_host.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted([shard.path.name, fresh_other_host.name])
    assert any("stale" in m for m in messages), messages


def test_killed_tokenisation_leaves_no_shard_and_next_run_cleans_up(tmp_path):
    """kill -9 in the middle of write_shard: the next build removes the temp file."""
    cache = tmp_path / "cache"
    (tmp_path / "a.txt").write_text("x" * 1000)
    code = ("import os, signal, sys\n"
            "from mpt_ext.data import shards, ByteTokenizer\n"
            "def docs():\n"
            "    yield 'a', 'some text'\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            f"shards.write_shard(shards.Path({str(cache / 'tokens-x.bin')!r}), docs(), ByteTokenizer())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert [p.name for p in cache.iterdir()][0].startswith(".tokens-x.bin.tmp")
    shard, _, _ = _build([tmp_path / "a.txt"], cache)
    assert [p.name for p in cache.iterdir()] == [shard.path.name]


def test_short_heldout_set_is_detectable():
    assert heldout_problem(np.zeros(10, np.uint16), seq_len=64, val_fraction=0.01) is not None
    msg = heldout_problem(np.zeros(10, np.uint16), seq_len=64, val_fraction=0.01)
    assert "10 tokens" in msg and "65" in msg and "evaluation" in msg
    assert heldout_problem(np.zeros(65, np.uint16), seq_len=64, val_fraction=0.01) is None
    assert heldout_problem(np.zeros(0, np.uint16), seq_len=64, val_fraction=0.0) is None  # asked for none


def test_bad_inputs_are_usage_errors_naming_the_path(tmp_path):
    with pytest.raises(UsageError, match="missing"):
        list(iter_documents([tmp_path / "missing"]))
    with pytest.raises(UsageError, match="at least one"):
        list(iter_documents([]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(UsageError, match=r"bad.jsonl:2: "):
        list(iter_documents([bad]))
    bad.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(UsageError, match=r"bad.jsonl:1: 'text' must be a string"):
        list(iter_documents([bad]))
    with pytest.raises(UsageError, match="nope"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        load_tokenizer(tmp_path / "file")


def test_jsonl_with_an_invalid_byte_is_kept(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "caf\xe9"}\n{"text": "two"}\n')
    docs = list(iter_documents([f]))
    assert [t for _, t in docs] == ["caf\ufffd", "two"]


def test_notices_are_warnings_without_a_log_function(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9\n")
    with pytest.warns(DataWarning, match="undecodable"):
        build_shard([tmp_path / "a.txt"], ByteTokenizer(), tmp_path / "cache")


def test_a_folder_that_is_not_a_tokenizer_is_a_usage_error(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "notes.txt").write_text("not a tokenizer")
    with pytest.raises(UsageError, match="tok"):
        load_tokenizer(tmp_path / "tok")


def test_too_little_data_for_seq_len_is_a_usage_error():
    from mpt_ext.data import WindowSampler
    with pytest.raises(UsageError, match="fewer than seq_len"):
        WindowSampler(np.zeros(8, np.uint16), 8, 1, seed=0)
    sampler = WindowSampler(np.zeros(100, np.uint16), 8, 1, seed=0)
    with pytest.raises(UsageError, match="saved with seq_len=8"):
        WindowSampler(np.zeros(100, np.uint16), 16, 1, seed=0).load_state_dict(sampler.state_dict())
