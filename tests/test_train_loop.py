"""The training loop on a small real MPT model (mpt_ext.models on the CPU kernels): loss
goes down, resume is bit-exact, checkpoints are atomic and verified, NaN stops the run."""
import json

import pytest
import torch

from mpt_ext.train import TrainConfig, Trainer, TrainingDiverged
from mpt_ext.train import checkpoint as ckpt


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: one intra-op thread is much faster on a shared CPU (no spinning workers)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def corpus(tmp_path_factory):
    # a small real-text corpus: a slice of the stdlib, cached once per test session dir
    return tmp_path_factory.getbasetemp() / "shard-cache"


TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2}


def make_cfg(tmp_path, corpus, **kw):
    base = dict(run_dir=str(tmp_path / "run"), cache_dir=str(corpus), stdlib_max_bytes=200_000,
                seq_len=32, global_batch=4, max_steps=8, log_interval=0, eval_interval=0, eval_batches=2,
                progress=False, sample_tokens=0, model=TINY, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def trainer(cfg, **kw):
    return Trainer(cfg, echo=lambda *_: None, **kw)


def params(t):
    return {k: v.clone() for k, v in t.module.state_dict().items()}


def test_short_run_loss_decreases(tmp_path, corpus):
    t = trainer(make_cfg(tmp_path, corpus, max_steps=40, lr=3e-3))
    before = t.evaluate()["eval_loss"]
    hist = t.train()
    assert [h["step"] for h in hist] == list(range(1, 41))
    first, last = sum(h["loss"] for h in hist[:5]) / 5, sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first - 1.0, (first, last)
    after = t.evaluate()["eval_loss"]
    assert after < before - 1.0
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41)) and all("lr" in r for r in log)


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_resume_is_bit_exact(tmp_path, corpus, optimizer):
    kw = dict(optimizer=optimizer, lr=1e-3, max_steps=8, micro_batch=2)
    full = trainer(make_cfg(tmp_path / "a", corpus, **kw))
    full_hist = full.train()

    part = trainer(make_cfg(tmp_path / "b", corpus, **kw))
    part.train(until_step=3)
    part.save()
    del part
    resumed = trainer(make_cfg(tmp_path / "b", corpus, resume="latest", **kw))
    assert resumed.step == 3
    resumed_hist = resumed.train()
    losses_full = [h["loss"] for h in full_hist]
    losses_split = [h["loss"] for h in resumed_hist]   # history holds steps 4..8 only
    assert losses_split == losses_full[3:]             # bitwise: float equality
    for k, v in params(full).items():
        assert torch.equal(v, params(resumed)[k]), k


def test_micro_batches_do_not_change_the_step(tmp_path, corpus):
    a = trainer(make_cfg(tmp_path / "a", corpus, max_steps=3))
    b = trainer(make_cfg(tmp_path / "b", corpus, max_steps=3, micro_batch=1))
    la, lb = [h["loss"] for h in a.train()], [h["loss"] for h in b.train()]
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-5, atol=1e-6)


def test_keep_last_and_crash_mid_write_keeps_previous(tmp_path, corpus, monkeypatch):
    t = trainer(make_cfg(tmp_path, corpus, keep_last=2, max_steps=4))
    for _ in range(3):
        t.train(until_step=t.step + 1)
        t.save()
    names = [p.name for p in ckpt.list_checkpoints(t.cfg.out_dir)]
    assert names == ["step-00000002", "step-00000003"]

    real_save = torch.save

    def crash_half_way(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash_half_way)
    t.train(until_step=4)
    with pytest.raises(OSError, match="simulated"):
        t.save()
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in ckpt.list_checkpoints(t.cfg.out_dir)] == names
    assert not list(t.cfg.out_dir.glob(".tmp-*"))
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(t.cfg.out_dir))
    assert state["step"] == 3


def test_corrupt_and_mismatched_checkpoints_raise_clearly(tmp_path, corpus):
    t = trainer(make_cfg(tmp_path, corpus, max_steps=2))
    t.train()
    path = t.save()
    data = bytearray((path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        trainer(make_cfg(tmp_path, corpus, max_steps=2, resume="latest"))
    (path / "state.pt").write_bytes(bytes(data[:100]))
    with pytest.raises(ckpt.CheckpointError, match="corrupt: state.pt has 100 bytes"):
        ckpt.load_checkpoint(path)
    (path / "meta.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        trainer(make_cfg(tmp_path / "empty", corpus, resume="latest"))

    t2 = trainer(make_cfg(tmp_path / "m", corpus, max_steps=2))
    t2.train()
    t2.save()
    with pytest.raises(ckpt.CheckpointError, match="another model: d_model"):
        trainer(make_cfg(tmp_path / "m", corpus, max_steps=2, resume="latest",
                         model={**TINY, "d_model": 64}))
    with pytest.raises(ckpt.CheckpointError, match="seq_len: 32 -> 16"):
        trainer(make_cfg(tmp_path / "m", corpus, max_steps=2, resume="latest", seq_len=16))


def test_nan_loss_stops_with_step_and_message(tmp_path, corpus):
    t = trainer(make_cfg(tmp_path, corpus, max_steps=5))
    t.train(until_step=2)
    with torch.no_grad():
        t.module.transformer.wte.weight[:, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="loss is nan at step 3"):
        t.train()
    assert t.step == 2


def test_export_hf_and_sample(tmp_path, corpus):
    t = trainer(make_cfg(tmp_path, corpus, max_steps=2, sample_tokens=5, sample_prompt="def "))
    t.train()
    out = t.finish()
    assert "eval_loss" in out
    t.export_hf(tmp_path / "hf")
    from mpt_ext.models import MPTForCausalLM
    back = MPTForCausalLM.from_pretrained(tmp_path / "hf")
    x = torch.randint(0, 259, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, t.module(x).logits, rtol=0, atol=0)
    assert json.loads((tmp_path / "hf" / "mpt_ext_tokenizer.json").read_text())["name"] == "byte"
    text = t.sample()
    assert text.startswith("def ")


def test_activation_checkpointing_gives_the_same_step(tmp_path, corpus):
    a = trainer(make_cfg(tmp_path / "a", corpus, max_steps=2))
    b = trainer(make_cfg(tmp_path / "b", corpus, max_steps=2, activation_checkpointing=True))
    la, lb = [h["loss"] for h in a.train()], [h["loss"] for h in b.train()]
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-6, atol=1e-6)


def test_bf16_autocast_runs_and_learns(tmp_path, corpus):
    t = trainer(make_cfg(tmp_path, corpus, max_steps=20, lr=3e-3, precision="bf16"))
    hist = [h["loss"] for h in t.train()]
    assert all(torch.isfinite(torch.tensor(hist)))
    assert sum(hist[-4:]) / 4 < sum(hist[:4]) / 4 - 0.5


def test_final_checkpoint_is_written_once(tmp_path, corpus, monkeypatch):
    saved = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda run_dir, step, *a, **k:
                        saved.append(step) or real(run_dir, step, *a, **k))
    t = trainer(make_cfg(tmp_path, corpus, max_steps=4, ckpt_interval=2))
    t.train()
    t.finish()
    assert saved == [2, 4]


def test_exported_files_have_normal_permissions(tmp_path, corpus):
    import os
    t = trainer(make_cfg(tmp_path, corpus, max_steps=1))
    t.export_hf(tmp_path / "hf")
    mask = os.umask(0o022)
    os.umask(mask)
    files = list((tmp_path / "hf").iterdir())
    assert any(f.name == "model.safetensors" for f in files)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o777 & ~mask
