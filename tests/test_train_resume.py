"""mpt-train and run dirs: a fresh run never mixes with an old one, resume refuses changed
optimiser settings unless told, a finished run exports without retraining, and broken
checkpoints are one-line errors (exit 2)."""
import json

import pytest
import torch

from mpt_ext.train import TrainConfig, Trainer
from mpt_ext.train import checkpoint as ckpt
from mpt_ext.train.cli import main
from mpt_ext.train.optim import warmup_cosine_factor

TINY = ["--seq-len", "16", "--global-batch", "2", "--stdlib-max-bytes", "20000",
        "--model", "d_model=32", "--model", "n_layers=1", "--model", "n_heads=2",
        "--eval-batches", "1", "--no-progress", "--log-interval", "1", "--sample-tokens", "0"]


@pytest.fixture(autouse=True)
def one_thread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def run(capsys, *args):
    rc = main(TINY + list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(err):
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpt-train: error: "), err
    return lines[0]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


RUN = "runs/tiny-stdlib"


def test_fresh_run_refuses_a_used_run_dir_and_overwrite_replaces_it(tmp_path, capsys):
    run_dir = tmp_path / RUN
    assert run(capsys, "--max-steps", "2")[0] == 0
    before = (run_dir / "metrics.jsonl").read_text()
    rc, _, err = run(capsys, "--max-steps", "2")
    assert rc == 2
    line = one_line_error(err)
    assert "--resume latest" in line and "--overwrite" in line and "--name" in line
    assert (run_dir / "metrics.jsonl").read_text() == before        # untouched
    rc, _, err = run(capsys, "--max-steps", "3", "--overwrite", "--lr", "1e-3")
    assert rc == 0, err
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [1, 2, 3]   # not mixed
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000003"]
    rc, _, err = run(capsys, "--max-steps", "3", "--overwrite", "--resume", "latest")
    assert rc == 2 and "overwrite" in one_line_error(err)


def test_export_of_a_finished_run_does_not_retrain(tmp_path, capsys):
    run_dir = tmp_path / RUN
    assert run(capsys, "--max-steps", "2")[0] == 0
    before = (run_dir / "metrics.jsonl").read_text()
    state = run_dir / "step-00000002" / "state.pt"
    mtime = state.stat().st_mtime_ns
    rc, out, err = run(capsys, "--max-steps", "2", "--resume", "latest", "--export-hf", "runs/tiny-hf")
    assert rc == 0, err
    assert "nothing to train" in out and "resumed from" in out
    assert (run_dir / "metrics.jsonl").read_text() == before        # no step, no second eval
    assert state.stat().st_mtime_ns == mtime                        # checkpoint not rewritten
    assert (tmp_path / "runs" / "tiny-hf" / "model.safetensors").is_file()


def test_resume_refuses_changed_optimizer_settings_naming_each(tmp_path, capsys):
    assert run(capsys, "--max-steps", "2")[0] == 0
    rc, _, err = run(capsys, "--resume", "latest", "--max-steps", "4", "--lr", "1e-3",
                     "--optimizer", "lion", "--betas", "0.9", "0.99")
    assert rc == 2
    line = one_line_error(err)
    for needle in ("optimizer: adamw -> lion", "lr: 0.002 -> 0.001", "max_steps: 2 -> 4",
                   "betas: [0.9, 0.95] -> [0.9, 0.99]", "--allow-config-change"):
        assert needle in line, (needle, line)
    assert ckpt.latest_checkpoint(tmp_path / RUN).name == "step-00000002"


def test_resume_with_allowed_changes_applies_them_and_says_so(tmp_path, capsys):
    run_dir = tmp_path / RUN
    assert run(capsys, "--max-steps", "2", "--warmup", "1")[0] == 0
    rc, out, err = run(capsys, "--resume", "latest", "--max-steps", "4", "--warmup", "1",
                       "--lr", "1e-3", "--allow-config-change")
    assert rc == 0, err
    assert "resumed from" in out and "step 2" in out
    assert "lr: 0.002 -> 0.001" in out and "max_steps: 2 -> 4" in out
    lrs = {r["step"]: r["lr"] for r in metrics(run_dir) if "loss" in r}
    # the new peak lr and the new schedule (4 steps) from step 3 on, not the old ones
    assert lrs[3] == pytest.approx(1e-3 * warmup_cosine_factor(2, 1, 4, 0.1), rel=1e-12)
    assert lrs[4] == pytest.approx(1e-3 * warmup_cosine_factor(3, 1, 4, 0.1), rel=1e-12)


def test_resume_past_max_steps_is_an_error(tmp_path, capsys):
    assert run(capsys, "--max-steps", "3")[0] == 0
    rc, _, err = run(capsys, "--resume", "latest", "--max-steps", "2")
    assert rc == 2 and "max_steps: 3 -> 2" in one_line_error(err)
    rc, _, err = run(capsys, "--resume", "latest", "--max-steps", "2", "--allow-config-change")
    assert rc == 2
    line = one_line_error(err)
    assert "step 3" in line and "past" in line


def test_switching_optimizer_never_feeds_adamw_state_to_lion(tmp_path):
    base = dict(run_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"), stdlib_max_bytes=20_000,
                seq_len=16, global_batch=2, max_steps=2, log_interval=0, eval_interval=0,
                progress=False, sample_tokens=0, model={"d_model": 32, "n_layers": 1, "n_heads": 2})
    t = Trainer(TrainConfig(**base), echo=lambda *_: None)
    t.train()
    t.save()
    lines = []
    t2 = Trainer(TrainConfig(**{**base, "max_steps": 3, "optimizer": "lion", "resume": "latest",
                                "allow_config_change": True}), echo=lines.append)
    assert t2.step == 2 and not t2.optimizer.state           # fresh Lion state, no exp_avg_sq
    assert any("adamw -> lion" in line and "fresh" in line for line in lines), lines
    assert t2.optimizer.param_groups[0]["lr"] == pytest.approx(
        t2.cfg.lr * warmup_cosine_factor(2, t2.cfg.warmup(), 3, t2.cfg.alpha_f))
    t2.train()
    assert t2.step == 3
    assert all(set(s) == {"exp_avg"} for s in t2.optimizer.state.values())


def test_broken_checkpoints_are_one_line_errors(tmp_path, capsys):
    run_dir = tmp_path / RUN
    assert run(capsys, "--max-steps", "1")[0] == 0
    meta = run_dir / "step-00000001" / "meta.json"
    good = meta.read_text()
    meta.write_text("[1, 2]")
    rc, _, err = run(capsys, "--max-steps", "1", "--resume", "latest")
    assert rc == 2 and "meta.json is corrupt" in one_line_error(err)
    meta.write_text(good)
    # a verified state.pt that lacks what mpt-train writes
    ckpt.save_checkpoint(run_dir, 5, {"step": 5}, keep_last=5)
    rc, _, err = run(capsys, "--max-steps", "1", "--resume", "latest")
    assert rc == 2 and "model_config" in one_line_error(err)
    rc, _, err = run(capsys, "--max-steps", "1", "--resume", str(tmp_path / "nowhere"))
    assert rc == 2 and "not a checkpoint directory" in one_line_error(err)
