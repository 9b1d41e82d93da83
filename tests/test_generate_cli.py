"""mpt-generate: loads a checkpoint dir and a tokenizer, streams text, reports speed."""
import io
import subprocess
import sys

import pytest
import torch

from model_helpers import make_model, tiny_config

from mpt_ext.generate import StreamPrinter, main

# The tokenizers live in mpt_ext/data/tokenizer.py (the trainer's branch).
tokenizer_module = pytest.importorskip("mpt_ext.data.tokenizer")


def _hf_tokenizer_dir(path):
    """A small local byte-level BPE tokenizer dir, built with `tokenizers` (no download)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    text = ["the quick brown fox jumps over the lazy dog " * 20, "def main(): return 0\n" * 20]
    tok.train_from_iterator(text, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def test_cli_with_hf_tokenizer_dir_streams_greedy_text(tmp_path):
    fast = _hf_tokenizer_dir(tmp_path / "tok")
    model = make_model(tiny_config(vocab_size=len(fast)))
    model.save_pretrained(tmp_path / "ckpt")
    out, err = io.StringIO(), io.StringIO()
    prompt = "the quick brown"
    rc = main([str(tmp_path / "ckpt"), "--tokenizer", str(tmp_path / "tok"), "--prompt", prompt,
               "--max-new-tokens", "12", "--greedy", "--ignore-eos", "--device", "cpu"],
              out=out, err=err)
    assert rc == 0
    ids = torch.tensor([fast.encode(prompt, add_special_tokens=False)])
    expected = model.generate(ids, 12)[0, ids.shape[1]:].tolist()
    assert out.getvalue() == prompt + fast.decode(expected, skip_special_tokens=True) + "\n"
    assert "prefill" in err.getvalue() and "tokens/s" in err.getvalue()
    assert "12 new tokens" in err.getvalue()


def test_cli_byte_tokenizer_prompt_file_and_sampling(tmp_path):
    tok = tokenizer_module.ByteTokenizer()
    model = make_model(tiny_config(vocab_size=tok.vocab_size))
    model.save_pretrained(tmp_path)
    (tmp_path / "prompt.txt").write_text("héllo wörld")
    runs = []
    for _ in range(2):
        out, err = io.StringIO(), io.StringIO()
        main([str(tmp_path), "--prompt-file", str(tmp_path / "prompt.txt"), "--seed", "7",
              "--max-new-tokens", "9", "--top-k", "20", "--temperature", "1.3",
              "--device", "cpu"], out=out, err=err)
        runs.append(out.getvalue())
        assert "prefill" in err.getvalue()
    assert runs[0] == runs[1]  # seeded
    assert runs[0].startswith("héllo wörld")


def test_stream_printer_holds_back_split_characters():
    tok = tokenizer_module.ByteTokenizer()
    out = io.StringIO()
    printer = StreamPrinter(tok, out)
    data = "aé€".encode()
    for b in data:
        printer.add(b)
        assert "\ufffd" not in out.getvalue()
    assert printer.finish() == "aé€" and out.getvalue() == "aé€"


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "mpt_ext.generate", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--prompt-file" in r.stdout


def test_cli_preset_benchmark_mode(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--preset", "tiny", "--prompt-tokens", "40", "--max-new-tokens", "5",
               "--ignore-eos", "--quiet", "--device", "cpu"], out=out, err=err)
    assert rc == 0 and out.getvalue() == ""
    assert "prompt 40 tokens" in err.getvalue() and "5 new tokens" in err.getvalue()


def test_cli_needs_exactly_one_model_source(tmp_path):
    with pytest.raises(SystemExit):
        main(["--prompt", "x"], out=io.StringIO(), err=io.StringIO())
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--preset", "tiny"], out=io.StringIO(), err=io.StringIO())
