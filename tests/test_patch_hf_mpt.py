"""mpt_ext.patch(model) on transformers' MptForCausalLM: same outputs, same state_dict,
generation through transformers' own cache, and no queries x keys sized tensors."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model_helpers import hf_twin, make_model, padded_batch, rel_err, tiny_config

import mpt_ext

transformers = pytest.importorskip("transformers")


def _pair(**overrides):
    """Two transformers MPTs with the same weights; the second is patched."""
    model = make_model(tiny_config(**overrides))
    return hf_twin(model), mpt_ext.patch(hf_twin(model)), model


@pytest.mark.parametrize("n_heads,d_model", [(4, 64), (6, 96)])
def test_patched_logits_equal_unpatched(n_heads, d_model):
    hf, patched, _ = _pair(n_heads=n_heads, d_model=d_model)
    ids = torch.randint(0, hf.config.vocab_size, (2, 29))
    with torch.no_grad():
        assert rel_err(patched(ids).logits, hf(ids).logits) < 1e-4


@pytest.mark.parametrize("left", [True, False], ids=["left_pad", "right_pad"])
def test_patched_padded_logits_equal_unpatched(left):
    hf, patched, _ = _pair(n_heads=6, d_model=96)
    ids, mask = padded_batch([19, 3, 11], 19, hf.config.vocab_size, left)
    with torch.no_grad():
        a = patched(ids, attention_mask=mask).logits
        b = hf(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert rel_err(a[keep], b[keep]) < 1e-4


def test_patch_keeps_parameters_and_swaps_norms():
    hf, patched, _ = _pair()
    before = {k: v for k, v in patched.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in before.items()}
    mpt_ext.patch(patched)  # idempotent
    after = patched.state_dict()
    assert list(after) == list(before)
    assert all(after[k].data_ptr() == ptrs[k] for k in after)
    norms = [m for m in patched.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(isinstance(m, mpt_ext.nn.LayerNorm) for m in norms)
    assert patched.config._attn_implementation == "mpt_ext"


def test_transformers_generate_through_patched_attention():
    hf, patched, _ = _pair()
    ids, mask = padded_batch([8, 5], 8, hf.config.vocab_size, left=True)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        a = patched.generate(ids, **kw)
        b = hf.generate(ids, **kw)
    assert torch.equal(a, b)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_quadratic_tensors_and_contexts_past_max_seq_len():
    hf, patched, ours = _pair(max_seq_len=64, vocab_size=31)
    seqlen = 300  # past max_seq_len: transformers' own bias cannot even broadcast here
    ids = torch.randint(0, 31, (1, seqlen))
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            hf(ids)
        small = torch.randint(0, 31, (1, 60))
        with _LargestTensor() as unpatched_mode:
            hf(small)
        assert unpatched_mode.largest >= 4 * 60 * 60  # heads x queries x keys scores
        with _LargestTensor() as mode:
            logits = patched(ids).logits
        assert mode.largest <= seqlen * 4 * ours.config.d_model  # ffn activations, O(seqlen)
        ours._warned_long = True
        assert rel_err(logits, ours(ids).logits) < 1e-4
