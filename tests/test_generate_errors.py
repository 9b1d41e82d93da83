"""mpt-generate on a user's broken input: one line `mpt-generate: error: ...` on stderr and
exit 2, never a traceback and never garbage on stdout."""
import io
import subprocess
import sys

import pytest
import torch

from model_helpers import make_model, tiny_config

from mpt_ext.data.tokenizer import ByteTokenizer
from mpt_ext.generate import main
from mpt_ext.models.generation import NonFiniteLogitsError


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main([*map(str, argv), "--device", "cpu"], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def _one_line_error(rc, err, *fragments):
    assert rc == 2
    assert err.startswith("mpt-generate: error: ") and err.endswith("\n")
    assert err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err


@pytest.fixture
def ckpt(tmp_path):
    model = make_model(tiny_config(vocab_size=ByteTokenizer.vocab_size))
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_corrupt_safetensors_is_one_line_naming_the_file(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    rc, out, err = _run(ckpt, "--prompt", "x", "--max-new-tokens", "2")
    _one_line_error(rc, err, str(f))
    assert out == ""


def test_missing_dir_and_dir_without_config_are_one_line(tmp_path):
    rc, _, err = _run(tmp_path / "nowhere", "--prompt", "x")
    _one_line_error(rc, err, "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(tmp_path / "empty", "--prompt", "x")
    _one_line_error(rc, err, "empty", "config.json")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.pt").write_bytes(b"")
    rc, _, err = _run(tmp_path / "run", "--prompt", "x")
    _one_line_error(rc, err, "--export-hf")


def test_missing_prompt_file_and_tokenizer_are_one_line(ckpt, tmp_path):
    rc, _, err = _run(ckpt, "--prompt-file", tmp_path / "no-prompt.txt")
    _one_line_error(rc, err, "no-prompt.txt")
    rc, _, err = _run(ckpt, "--prompt", "x", "--tokenizer", tmp_path / "no-tok")
    _one_line_error(rc, err, "no-tok")


def _nan_model(ckpt):
    model = make_model(tiny_config(vocab_size=ByteTokenizer.vocab_size))
    with torch.no_grad():
        model.transformer.blocks[0].ffn.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(ckpt)
    return model


@pytest.mark.parametrize("mode", [["--greedy"], ["--seed", "1"]], ids=["greedy", "sampled"])
def test_nan_weights_stop_with_an_error_not_nul_bytes(ckpt, mode):
    _nan_model(ckpt)
    rc, out, err = _run(ckpt, "--prompt", "hello", "--max-new-tokens", "5", *mode)
    _one_line_error(rc, err, "NaN", "transformer.blocks.0.ffn.up_proj.weight")
    assert "\x00" not in out and "\ufffd" not in out
    assert out in ("hello", "hello\n")


def test_generate_raises_on_non_finite_logits(ckpt):
    model = _nan_model(ckpt).eval()
    ids = torch.tensor([[1, 2, 3]])
    streamed = []
    with pytest.raises(NonFiniteLogitsError, match="step 0"):
        model.generate(ids, 4, streamer=streamed.append)
    assert streamed == []


def test_exit_status_of_the_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mpt_ext.generate", str(tmp_path / "nowhere"),
                        "--prompt", "x"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("mpt-generate: error: ") and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("stream", [False, True], ids=["no-streamer", "streamer"])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_the_first_bad_step_is_reported_and_never_streamed(ckpt, stream, sample):
    # greedy steps are checked where the loop waits anyway (before streaming, at the end),
    # sampled steps before the draw: either way the first bad step is the one named
    model = _nan_model(ckpt)
    with torch.no_grad():
        model.transformer.blocks[0].ffn.up_proj.weight[0, 0] = 0.0
    model.eval()
    calls = []

    def nan_at_step_2(logits):
        calls.append(1)
        return logits.fill_(float("nan")) if len(calls) in (3, 4) else logits

    streamed = []
    with pytest.raises(NonFiniteLogitsError, match="step 2") as info:
        model.generate(torch.tensor([[1, 2, 3]]), 6, logits_processor=nan_at_step_2,
                       streamer=streamed.append if stream else None, do_sample=sample)
    assert info.value.step == 2 and info.value.rows == [0]
    assert len(streamed) == (2 if stream else 0)
