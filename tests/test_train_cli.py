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
    rc = main(TINY + ["--max-steps", "4", "--resume", "latest", "--sample-tokens", "0",
                      "--allow-config-change"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "resumed from" in out.out and "max_steps: 3 -> 4" in out.out and ckpt.latest_checkpoint(run).name == "step-00000004"


def test_cli_packed_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--max-steps", "2", "--packed", "--sample-tokens", "0", "--name", "p"]) == 0
    log = [json.loads(line) for line in (tmp_path / "runs" / "p" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in log if "loss" in r)  # finite, not NaN


def test_cli_errors_are_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--seq-len", "0"]) == 2
    assert "seq_len" in capsys.readouterr().err
    assert main(TINY + ["--max-steps", "2", "--resume", "latest"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_help_shows_each_default_once():
    r = subprocess.run([sys.executable, "-m", "mpt_ext.train", "--help"], capture_output=True, text=True,
                       env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 0
    options = r.stdout.split("\n  -")
    for opt in options:
        assert opt.count("(default:") <= 1, opt
        assert "(default: None)" not in opt, opt
    for needle in ("--overwrite", "--allow-config-change"):
        assert needle in r.stdout


def one_line_error(err):
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpt-train: error: "), err
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--preset", "5b"], "5b"),
    (["--model", "foo=1"], "foo"),
    (["--model", "n_heads=3"], "n_heads"),
    (["--micro-batch", "3"], "--micro-batch 3"),
    (["--device", "gpu"], "device"),
    (["--warmup", "-1"], "warmup"),
])
def test_usage_mistakes_are_one_line_errors(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--max-steps", "1", "--sample-tokens", "0"] + args) == 2
    assert needle in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "runs" / "tiny-stdlib" / "metrics.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--max-steps", "1", "--device", "cuda"]) == 2
    assert "--device cuda" in one_line_error(capsys.readouterr().err)


def test_usage_errors_from_anywhere_are_one_line_but_bugs_keep_tracebacks(tmp_path, monkeypatch, capsys):
    from mpt_ext.errors import UsageError
    from mpt_ext.train import trainer as trainer_mod
    monkeypatch.chdir(tmp_path)

    def bad_data(*a, **k):
        raise UsageError("data source 'nowhere' does not exist")

    monkeypatch.setattr(trainer_mod, "build_shard", bad_data)
    assert main(TINY + ["--max-steps", "1"]) == 2
    assert "nowhere" in one_line_error(capsys.readouterr().err)

    def bug(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(trainer_mod, "build_shard", bug)
    with pytest.raises(KeyError):
        main(TINY + ["--max-steps", "1"])


def test_no_progress_bar_without_a_tty(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a for a in TINY if a != "--no-progress"]
    assert main(args + ["--max-steps", "3", "--sample-tokens", "0", "--log-interval", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "step/s" not in err and "it/s" not in err, err


def test_cli_says_when_the_held_out_set_is_too_short_and_which_files_had_bad_bytes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "texts"
    data.mkdir()
    (data / "a.txt").write_text("def f(x):\n    return x + 1\n" * 200)
    (data / "b.txt").write_bytes(b"caf\xe9 au lait\n" * 50)          # latin-1, not UTF-8
    rc = main(TINY + ["--data", str(data), "--val-fraction", "0.002", "--max-steps", "1",
                      "--sample-tokens", "0"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "held-out set has" in out.out and "evaluation is skipped" in out.out
    assert "undecodable" in out.out and "b.txt" in out.out
