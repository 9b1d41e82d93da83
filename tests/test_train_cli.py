"""mpt-train's command line on tiny settings (the no-argument default run itself is
exercised by CI's own script)."""
import json
import subprocess
import sys

import pytest
import torch

from mpt_ext.train.cli import build_parser, config_from_args, main
from mpt_ext.train import checkpoint as ckpt

TINY = ["--seq-len", "32", "--global-batch", "4", "--stdlib-max-bytes", "100000",
        "--model", "d_model=32", "--model", "n_layers=1", "--model", "n_heads=2",
        "--eval-batches", "1", "--no-progress", "--log-interval", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_help_is_clear():
    r = subprocess.run([sys.executable, "-m", "mpt_ext.train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for needle in ("stdlib", "--resume", "--max-steps", "--strategy", "--export-hf", "default: tiny"):
        assert needle in r.stdout, needle


def test_defaults_are_the_readme_run():
    cfg = config_from_args([])
    assert (cfg.preset, cfg.data, cfg.tokenizer, cfg.threads) == ("tiny", ["stdlib"], "byte", None)
    assert str(cfg.out_dir) == "runs/tiny-stdlib"
    assert config_from_args(["--max-tokens", "1000"]).max_steps is None
    assert config_from_args(["--model", "norm_type=rmsnorm", "--model", "n_layers=2"]).model == \
        {"norm_type": "rmsnorm", "n_layers": 2}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "no_equals_sign"])


def test_cli_tiny_run_then_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(TINY + ["--max-steps", "3", "--sample-tokens", "8", "--prompt", "import ",
                      "--export-hf", str(tmp_path / "hf")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "---- sample" in out.out and "\nimport " in out.out
    assert "step 3 | loss" in out.out and "MFU n/a" in out.out
    run = tmp_path / "runs" / "tiny-stdlib"
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000003"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3] and "eval_loss" in log[-1]
    assert (tmp_path / "hf" / "config.json").is_file()
    # a longer run resumes from step 3
    rc = main(TINY + ["--max-steps", "4", "--resume", "latest", "--sample-tokens", "0"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "resumed from" in out.out and ckpt.latest_checkpoint(run).name == "step-00000004"


def test_cli_packed_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--max-steps", "2", "--packed", "--sample-tokens", "0", "--name", "p"]) == 0
    log = [json.loads(line) for line in (tmp_path / "runs" / "p" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in log if "loss" in r)  # finite, not NaN


def test_cli_errors_are_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--seq-len", "0"]) == 2
    assert "seq_len" in capsys.readouterr().err
    assert main(TINY + ["--max-steps", "2", "--resume", "latest"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
