"""The model on a GPU in bf16: parity with transformers' MPT and KV-cache decoding."""
import pytest
import torch

from model_helpers import hf_twin, make_model, padded_batch, tiny_config

pytestmark = pytest.mark.cuda


def _max_err(a, b):
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("n_heads,d_model", [(4, 256), (6, 384)])
@pytest.mark.parametrize("padded", [False, True])
def test_bf16_logits_within_twice_transformers_bf16_error(n_heads, d_model, padded):
    model = make_model(tiny_config(n_heads=n_heads, d_model=d_model, n_layers=3,
                                   vocab_size=512, max_seq_len=512))
    hf32 = hf_twin(model).cuda()
    hf16 = hf_twin(model).to(torch.bfloat16).cuda()
    ours = model.to(torch.bfloat16).cuda()
    ids, mask = padded_batch([300, 120, 1], 300, 512, left=True)
    ids, mask = ids.cuda(), mask.cuda()
    kw = dict(attention_mask=mask) if padded else {}
    with torch.no_grad():
        ref = hf32(ids, **kw).logits.float()
        theirs = hf16(ids, **kw).logits
        mine = ours(ids, **kw).logits
    keep = mask.bool() if padded else torch.ones_like(mask, dtype=torch.bool)
    err_hf = _max_err(theirs[keep], ref[keep])
    err_ours = _max_err(mine[keep], ref[keep])
    assert err_ours <= 2 * err_hf + 1e-2, (err_ours, err_hf)


def test_bf16_kv_cache_decode_matches_full_forward():
    model = make_model(tiny_config(d_model=256, n_heads=4, vocab_size=512), torch.bfloat16).cuda()
    ids = torch.randint(0, 512, (2, 50), device="cuda")
    out = model.generate(ids, 8)
    with torch.no_grad():
        full = model(out[:, :-1]).logits.float()
    # Each generated token is the argmax of the full forward, up to bf16 near-ties.
    chosen = full[:, 49:].gather(-1, out[:, 50:, None]).squeeze(-1)
    best = full[:, 49:].max(-1).values
    assert torch.all(best - chosen <= 0.05 * best.abs().clamp_min(1.0))
