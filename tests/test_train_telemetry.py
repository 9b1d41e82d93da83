import pytest
import torch

from mpt_ext.train.config import TrainConfig
from mpt_ext.train.telemetry import Throughput, flops_per_token, format_metrics, peak_flops


def test_flops_per_token_is_llm_foundrys_formula():
    # 6 N per token for the matmuls with parameters, 12 L d s for QK^T and PV (fwd + bwd)
    assert flops_per_token(1_000, 2, 64, 128) == 6 * 1_000 + 12 * 2 * 64 * 128
    # MPT-1.3B at seq 2048: attention adds about 15% to the 6N matmul FLOPs
    n = 1_300_000_000
    assert flops_per_token(n, 24, 2048, 2048) / (6 * n) == pytest.approx(1.1549, abs=1e-3)


def test_peak_flops_cpu_is_unknown_and_env_overrides(monkeypatch):
    monkeypatch.delenv("MPT_EXT_PEAK_FLOPS", raising=False)
    assert peak_flops(torch.device("cpu"), "bf16") is None
    monkeypatch.setenv("MPT_EXT_PEAK_FLOPS", "1e12")
    assert peak_flops(torch.device("cpu"), "fp32") == 1e12


def test_peak_flops_by_gpu_name(monkeypatch):
    monkeypatch.delenv("MPT_EXT_PEAK_FLOPS", raising=False)
    for name, want in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H200", 989e12), ("Mystery GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d, n=name: n)
        assert peak_flops(torch.device("cuda", 0), "bf16") == want, name
    assert peak_flops(torch.device("cuda", 0), "fp32") is None


def test_throughput_and_mfu_line():
    t = Throughput(flops_per_tok=1e6, peak=1e9, world_size=2)
    t.add(1000)
    r = t.report()
    assert r["tokens_per_s"] > 0 and r["mfu"] == pytest.approx(r["tokens_per_s"] * 1e6 / 2e9)
    line = format_metrics({"step": 3, "loss": 2.5, "lr": 1e-3, **r})
    assert line.startswith("step 3 | loss 2.5000") and "MFU" in line and "n/a" not in line
    assert "MFU n/a" in format_metrics({"step": 1, "loss": 1.0, "lr": 1.0})


def test_config_derived_values_and_errors():
    cfg = TrainConfig(max_steps=None, max_tokens=10_000, seq_len=100, global_batch=8)
    assert cfg.total_steps() == 13 and cfg.warmup() == 1
    assert TrainConfig(max_steps=5000).warmup() == 100          # llm-foundry's 100 batches
    assert TrainConfig(max_steps=200).warmup() == 20            # scaled down for short runs
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    for bad in [dict(seq_len=0), dict(optimizer="sgd"), dict(precision="fp16"), dict(max_steps=None),
                dict(val_fraction=1.0), dict(threads=0), dict(strategy="zero3")]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown fields"):
        TrainConfig.from_dict({"nope": 1})


def test_progress_bar_only_on_a_terminal(monkeypatch):
    import io
    from mpt_ext.train.telemetry import progress_bar
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(10, 0, True) is None
