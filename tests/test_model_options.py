"""llm-foundry options that transformers' MPT lacks (biases, qk_ln, clip_qkv, GQA/MQA,
rmsnorm, softmax_scale, logit_scale, expansion_ratio, alibi_bias_max), checked against a
float64 plain-PyTorch MPT written from the state_dict; plus init, dropout and training."""
import math

import pytest
import torch
import torch.nn.functional as F

from model_helpers import make_model, padded_batch, rel_err, tiny_config

from mpt_ext.models import MPTForCausalLM


def _slopes(n_heads, bias_max):
    n = 2 ** math.ceil(math.log2(n_heads))
    s = [2.0 ** (-bias_max * (i + 1) / n) for i in range(n)]
    if n != n_heads:
        s = s[1::2] + s[::2]
    return torch.tensor(s[:n_heads], dtype=torch.float64)


def reference_logits(model: MPTForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    eps = cfg.layer_norm_epsilon

    def norm(x, name):
        w, b = sd[name + ".weight"], sd.get(name + ".bias")
        if "rmsnorm" in cfg.norm_type:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def lin(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    B, S = ids.shape
    H, KH, D = cfg.n_heads, cfg.kv_n_heads, cfg.head_dim
    i = torch.arange(S).view(-1, 1)
    j = torch.arange(S).view(1, -1)
    bias = -_slopes(H, cfg.attn_config.alibi_bias_max).view(H, 1, 1) * (i - j).abs()
    bias = bias.masked_fill(j > i, float("-inf"))
    x = sd["transformer.wte.weight"][ids]
    for layer in range(cfg.n_layers):
        p = f"transformer.blocks.{layer}."
        qkv = lin(norm(x, p + "norm_1"), p + "attn.Wqkv")
        if cfg.attn_config.clip_qkv:
            qkv = qkv.clamp(-cfg.attn_config.clip_qkv, cfg.attn_config.clip_qkv)
        q, k, v = qkv.split([H * D, KH * D, KH * D], -1)
        if cfg.attn_config.qk_ln:
            q, k = norm(q, p + "attn.q_ln"), norm(k, p + "attn.k_ln")
        q = q.view(B, S, H, D)
        k = k.view(B, S, KH, D).repeat_interleave(H // KH, 2)
        v = v.view(B, S, KH, D).repeat_interleave(H // KH, 2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * cfg.softmax_scale + bias
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, S, H * D)
        x = x + lin(out, p + "attn.out_proj")
        h = lin(norm(x, p + "norm_2"), p + "ffn.up_proj")
        x = x + lin(F.gelu(h), p + "ffn.down_proj")
    x = norm(x, "transformer.norm_f")
    w = sd["transformer.wte.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    logits = x @ w.T
    return logits * cfg.logit_scale_value if cfg.logit_scale is not None else logits


OPTIONS = {
    "bias": dict(no_bias=False),
    "qk_ln": dict(qk_ln=True, no_bias=False),
    "clip_qkv": dict(clip_qkv=0.3),
    "gqa": dict(kv_n_heads=2),
    "mqa": dict(attn_type="multiquery_attention", n_heads=6, d_model=96),
    "rmsnorm_qk_ln": dict(norm_type="rmsnorm", qk_ln=True),
    "layernorm": dict(norm_type="layernorm", no_bias=False),
    "softmax_scale": dict(softmax_scale=0.05),
    "logit_scale": dict(logit_scale="inv_sqrt_d_model"),
    "expansion": dict(expansion_ratio=2.5),
    "alibi_bias_max": dict(alibi_bias_max=4, n_heads=6, d_model=96),
    "untied": dict(tie_word_embeddings=False),
}


@pytest.mark.parametrize("option", OPTIONS, ids=list(OPTIONS))
def test_options_match_float64_reference(option):
    model = make_model(tiny_config(**OPTIONS[option]))
    if not model.config.no_bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") and "norm" not in name and "_ln" not in name:
                    p.normal_(0, 0.1)
    ids = torch.randint(0, model.config.vocab_size, (2, 21))
    with torch.no_grad():
        ours = model(ids).logits
    assert rel_err(ours, reference_logits(model, ids)) < 1e-4


def test_option_parameters_have_llm_foundry_names():
    cfg = tiny_config(no_bias=False, qk_ln=True, kv_n_heads=2, tie_word_embeddings=False)
    keys = set(MPTForCausalLM(cfg).state_dict())
    assert {"transformer.blocks.0.attn.q_ln.weight", "transformer.blocks.0.attn.k_ln.bias",
            "transformer.blocks.1.attn.Wqkv.bias", "transformer.blocks.1.ffn.down_proj.bias",
            "transformer.blocks.0.norm_1.bias", "transformer.norm_f.bias",
            "lm_head.weight"} <= keys
    wqkv = MPTForCausalLM(cfg).transformer.blocks[0].attn.Wqkv.weight
    assert wqkv.shape == (64 + 2 * 2 * 16, 64)


def test_state_dict_keys_are_hugging_face_keys():
    cfg = tiny_config(n_layers=2)
    keys = list(MPTForCausalLM(cfg).state_dict())
    expected = ["transformer.wte.weight"]
    for i in range(2):
        expected += [f"transformer.blocks.{i}.{n}.weight" for n in
                     ("norm_1", "attn.Wqkv", "attn.out_proj", "norm_2", "ffn.up_proj",
                      "ffn.down_proj")]
    expected.append("transformer.norm_f.weight")
    assert keys == expected


def test_initialisation_follows_llm_foundry():
    cfg = tiny_config(d_model=256, n_heads=4, n_layers=3, vocab_size=500, no_bias=False)
    model = MPTForCausalLM(cfg)
    std = math.sqrt(2 / 256)  # kaiming_normal_, fan_in, relu
    blk = model.transformer.blocks[1]
    for w, expected in [(model.transformer.wte.weight, std), (blk.attn.Wqkv.weight, std),
                        (blk.ffn.up_proj.weight, std),
                        (blk.attn.out_proj.weight, std / math.sqrt(6)),
                        (blk.ffn.down_proj.weight, math.sqrt(2 / 1024) / math.sqrt(6))]:
        w = w.detach()
        assert abs(float(w.std()) / expected - 1) < 0.05, (w.shape, float(w.std()), expected)
        assert abs(float(w.mean())) < 0.1 * expected
    assert torch.all(blk.attn.Wqkv.bias == 0) and torch.all(blk.ffn.down_proj.bias == 0)
    assert torch.all(blk.norm_1.weight == 1) and torch.all(blk.norm_1.bias == 0)
    # Re-initialising draws fresh values.
    before = blk.attn.Wqkv.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, blk.attn.Wqkv.weight)


def test_dropout_only_in_training():
    model = make_model(tiny_config(resid_pdrop=0.5, emb_pdrop=0.5))
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        a, b = model(ids).logits, model(ids).logits
        assert torch.equal(a, b)
        model.train()
        assert not torch.equal(model(ids).logits, a)


def test_training_step_reduces_loss_and_grads_reach_every_parameter():
    model = MPTForCausalLM(tiny_config(no_bias=False, qk_ln=True)).train()
    ids = torch.randint(0, model.config.vocab_size, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        if not losses:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5


def test_gradient_checkpointing_gives_the_same_gradients():
    model = MPTForCausalLM(tiny_config()).train()
    ids, mask = padded_batch([12, 5], 12, model.config.vocab_size, left=True)
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], rtol=1e-5, atol=1e-7), n


def test_bad_inputs_raise():
    model = make_model(tiny_config())
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="contiguous"):
        model(ids, attention_mask=torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids[:, :3])


def test_long_context_warns_and_runs():
    model = make_model(tiny_config(max_seq_len=8))
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with pytest.warns(UserWarning, match="max_seq_len"):
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert rel_err(logits, reference_logits(model, ids)) < 1e-4


def test_cu_seqlens_packed_documents_equal_each_document_alone():
    model = make_model(tiny_config())
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    # Row 0 holds documents of 3 and 7 tokens, row 1 one of 10: boundaries never cross rows.
    cu = torch.tensor([0, 3, 10, 20], dtype=torch.int32)
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu, max_seqlen=10).logits
        flat = ids.reshape(-1)
        for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
            alone = model(flat[lo:hi][None]).logits[0]
            assert rel_err(packed.reshape(20, -1)[lo:hi], alone) < 1e-4
    # A document may also continue from one row into the next.
    with torch.no_grad():
        across = model(ids, cu_seqlens=torch.tensor([0, 4, 20], dtype=torch.int32)).logits
        alone = model(flat[4:20][None]).logits[0]
    assert rel_err(across.reshape(20, -1)[4:], alone) < 1e-4


def test_cu_seqlens_bad_values_raise():
    model = make_model(tiny_config())
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    for cu, match in [(torch.tensor([0, 3, 9], dtype=torch.int32), "batch \\* seqlen"),
                      (torch.tensor([0, 6, 4, 10], dtype=torch.int32), "rise"),
                      (torch.tensor([0, 10]), "int32")]:
        with pytest.raises(ValueError, match=match):
            model(ids, cu_seqlens=cu)
    with pytest.raises(ValueError, match="max_seqlen"):
        model(ids, cu_seqlens=torch.tensor([0, 10], dtype=torch.int32), max_seqlen=4)
    with pytest.raises(ValueError, match="not both"):
        model(ids, attention_mask=torch.ones_like(ids),
              cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))
