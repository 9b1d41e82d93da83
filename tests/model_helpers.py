"""Shared helpers for the MPT model tests: tiny configs and Hugging Face twins."""
from __future__ import annotations

import torch

from mpt_ext.models import MPTConfig, MPTForCausalLM


def tiny_config(**overrides) -> MPTConfig:
    base = dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=64,
                vocab_size=97)
    base.update(overrides)
    return MPTConfig.preset("tiny", **base)


@torch.no_grad()
def randomize_norms(model: torch.nn.Module) -> None:
    """Norm weights/biases away from 1/0 so that a norm applied wrongly shows up."""
    for name, p in model.named_parameters():
        if "norm" in name or "_ln" in name:
            p.copy_(1.0 + 0.5 * torch.randn_like(p) if name.endswith("weight")
                    else 0.2 * torch.randn_like(p))


def make_model(config: MPTConfig, dtype=torch.float32) -> MPTForCausalLM:
    model = MPTForCausalLM(config).to(dtype).eval()
    randomize_norms(model)
    return model


def hf_twin(model: MPTForCausalLM):
    """transformers.MptForCausalLM with our model's weights (HF MPT has no biases)."""
    import transformers  # noqa: PLC0415

    hf_config = transformers.MptConfig(**model.config.to_dict())
    hf = transformers.MptForCausalLM(hf_config).to(model.dtype).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    return hf


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def padded_batch(lengths, seqlen, vocab, left: bool):
    """input_ids and a 0/1 attention_mask with each row's tokens left- or right-aligned."""
    ids = torch.randint(0, vocab, (len(lengths), seqlen))
    mask = torch.zeros(len(lengths), seqlen, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, seqlen - n:] = 1
        else:
            mask[b, :n] = 1
    return ids, mask
