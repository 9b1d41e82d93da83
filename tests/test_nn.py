"""mpt_ext.nn modules against their torch.nn counterparts, and mpt_ext.patch on real
transformers models."""

import pytest
import torch

import mpt_ext
import mpt_ext.nn as mnn
from mpt_ext.reference import layer_norm_ref

from norm_testing import assert_close_rule

LAYER_NORM_ARGS = [
    dict(normalized_shape=64),
    dict(normalized_shape=7, eps=1e-6),
    dict(normalized_shape=64, elementwise_affine=False),
    dict(normalized_shape=64, bias=False),
    dict(normalized_shape=(4, 16)),
]
RMS_NORM_ARGS = [
    dict(normalized_shape=64),
    dict(normalized_shape=64, eps=1e-6),
    dict(normalized_shape=7, elementwise_affine=False),
    dict(normalized_shape=(4, 16)),
]


def _randomise(module):
    """Non-trivial parameters, so a swapped weight or bias would show."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def _compare_modules(ours, theirs, x_shape, dtype=torch.float32):
    x = torch.randn(x_shape, dtype=dtype) * 2 + 0.5
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    assert ya.shape == yb.shape and ya.dtype == yb.dtype
    torch.testing.assert_close(ya, yb, atol=2e-5, rtol=1e-5)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
    for (na, pa), (nb, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert na == nb
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4)


def _state_dicts_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("cls", [mnn.LayerNorm, mnn.LPLayerNorm])
@pytest.mark.parametrize("kwargs", LAYER_NORM_ARGS, ids=str)
def test_layer_norm_module_matches_torch(cls, kwargs):
    ours = _randomise(cls(**kwargs))
    theirs = torch.nn.LayerNorm(**kwargs)
    theirs.load_state_dict(ours.state_dict())
    _state_dicts_equal(ours, theirs)
    shape = kwargs["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else shape
    _compare_modules(ours, theirs, (3, 5) + tuple(shape))


@pytest.mark.parametrize("kwargs", RMS_NORM_ARGS, ids=str)
def test_rms_norm_module_matches_torch(kwargs):
    ours = _randomise(mnn.RMSNorm(**kwargs))
    theirs = torch.nn.RMSNorm(**kwargs)
    theirs.load_state_dict(ours.state_dict())
    _state_dicts_equal(ours, theirs)
    shape = kwargs["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else shape
    _compare_modules(ours, theirs, (2, 9) + tuple(shape))


def test_module_rejects_wrong_trailing_shape():
    with pytest.raises(ValueError, match="normalized_shape"):
        mnn.LayerNorm(64, elementwise_affine=False)(torch.randn(3, 32))


def test_layer_norm_module_keeps_low_precision():
    """bf16 activations with fp32 parameters: the output stays bf16 (no fp32 copy)."""
    ln = _randomise(mnn.LayerNorm(256))
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    y = ln(x)
    assert y.dtype == torch.bfloat16
    ref = layer_norm_ref(x, ln.weight.detach(), ln.bias.detach())
    torch_bf16 = torch.nn.functional.layer_norm(x, (256,), ln.weight.detach().bfloat16(),
                                                ln.bias.detach().bfloat16())
    assert_close_rule("y", y, ref, torch_bf16)


def test_lp_layer_norm_under_autocast_runs_in_autocast_dtype():
    ln = _randomise(mnn.LPLayerNorm(128))
    x = torch.randn(6, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x)
    assert y.dtype == torch.bfloat16
    # llm-foundry's semantics: input and parameters cast to bf16, the norm computed there.
    w, b = ln.weight.detach().bfloat16(), ln.bias.detach().bfloat16()
    ref = layer_norm_ref(x.detach().bfloat16(), w, b)
    torch_bf16 = torch.nn.functional.layer_norm(x.detach().bfloat16(), (128,), w, b)
    assert_close_rule("y", y, ref, torch_bf16)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and ln.weight.grad.dtype == torch.float32
    assert torch.isfinite(x.grad).all() and torch.isfinite(ln.weight.grad).all()
    # Without autocast it is a plain LayerNorm in the input's dtype.
    assert ln(x.detach()).dtype == torch.float32


# ---- patch ---------------------------------------------------------------------------------
def _norm_types(model):
    return {type(m) for m in model.modules()
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))}


def _outputs_and_grads(model, input_ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids).logits
    loss = logits.float().pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _check_patch_preserves(model, input_ids):
    model.eval()  # no dropout: the two runs must see the same function
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    logits0, grads0 = _outputs_and_grads(model, input_ids)
    norm_count = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert norm_count > 0

    param_ids = [id(p) for p in model.parameters()]
    assert mpt_ext.patch(model) is model
    assert _norm_types(model) <= {mnn.LayerNorm, mnn.RMSNorm}
    assert sum(isinstance(m, mnn.LayerNorm) for m in model.modules()) == norm_count
    assert [id(p) for p in model.parameters()] == param_ids  # same Parameter objects

    after_sd = model.state_dict()
    assert list(after_sd) == list(before_sd)
    for k in before_sd:
        assert torch.equal(after_sd[k], before_sd[k]), k

    logits1, grads1 = _outputs_and_grads(model, input_ids)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)
    assert grads1.keys() == grads0.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")


def test_patch_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97,
                                     n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    _check_patch_preserves(model, torch.randint(0, 97, (2, 13)))


def test_patch_hf_mpt():
    transformers = pytest.importorskip("transformers")
    config = transformers.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=97,
                                    max_seq_len=32)
    model = transformers.MptForCausalLM(config)
    _check_patch_preserves(model, torch.randint(0, 97, (2, 11)))


def test_patch_rms_norm_and_root_module():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.RMSNorm(32),
                                torch.nn.Linear(32, 8), torch.nn.LayerNorm(8))
    _randomise(model)
    x = torch.randn(5, 16)
    expected = model(x)
    mpt_ext.patch(model)
    assert type(model[1]) is mnn.RMSNorm and type(model[3]) is mnn.LayerNorm
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)

    root = _randomise(torch.nn.LayerNorm(8))
    expected = root(torch.ones(2, 8).cumsum(-1))
    assert mpt_ext.patch(root) is root and type(root) is mnn.LayerNorm
    torch.testing.assert_close(root(torch.ones(2, 8).cumsum(-1)), expected)


def test_patch_leaves_subclasses_alone():
    class MyNorm(torch.nn.LayerNorm):
        pass

    model = torch.nn.Sequential(MyNorm(8))
    mpt_ext.patch(model)
    assert type(model[0]) is MyNorm


def test_modules_compile_fullgraph():
    torch._dynamo.reset()
    model = torch.nn.Sequential(mnn.LayerNorm(32), torch.nn.Linear(32, 32), mnn.RMSNorm(32),
                                mnn.LPLayerNorm(32))
    _randomise(model)
    x = torch.randn(3, 32)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected)
