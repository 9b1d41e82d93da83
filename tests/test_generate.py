"""KV-cache generation: greedy equals repeated full forwards, padded batches equal each
prompt alone, eos, sampling filters, long contexts."""
import pytest
import torch

from model_helpers import make_model, padded_batch, tiny_config

from mpt_ext.models.generation import sample_next

DTYPE = torch.float64  # greedy comparisons must not hinge on float32 near-ties


def _model(**overrides):
    return make_model(tiny_config(**overrides), dtype=DTYPE)


@torch.no_grad()
def _greedy_by_full_forward(model, ids, n):
    for _ in range(n):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


@pytest.mark.parametrize("overrides", [dict(), dict(n_heads=6, d_model=96, kv_n_heads=2),
                                       dict(qk_ln=True, no_bias=False, clip_qkv=0.5)],
                         ids=["mha", "gqa_6_heads", "qk_ln_bias_clip"])
def test_greedy_equals_argmax_of_full_forward(overrides):
    model = _model(**overrides)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    out = model.generate(ids, 12)
    assert out.shape == (2, 19)
    assert torch.equal(out, _greedy_by_full_forward(model, ids, 12))


def test_padded_batch_equals_each_prompt_alone():
    model = _model()
    lengths = [9, 1, 5]
    ids, mask = padded_batch(lengths, 9, model.config.vocab_size, left=True)
    out = model.generate(ids, 10, attention_mask=mask)
    assert torch.equal(out[:, :9], ids)
    for b, n in enumerate(lengths):
        alone = model.generate(ids[b:b + 1, 9 - n:], 10)
        assert torch.equal(out[b, 9:], alone[0, n:]), b


def test_eos_stops_each_sequence():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    free = model.generate(ids, 8)
    eos = int(free[0, 6 + 2])  # sequence 0 emits this token by its third step

    def stop(row):  # new tokens up to and including the first eos
        hits = (free[row, 6:] == eos).nonzero()
        return int(hits[0]) + 1 if len(hits) else 8

    out = model.generate(ids, 8, eos_token_id=eos, pad_token_id=-1)
    assert out.shape[1] == 6 + max(stop(0), stop(1))
    for row in (0, 1):
        n = stop(row)
        assert torch.equal(out[row, 6:6 + n], free[row, 6:6 + n])
        assert torch.all(out[row, 6 + n:] == -1)
    # A list of eos ids; a single finished sequence ends generation early.
    assert model.generate(ids[:1], 8, eos_token_id=[eos, -5]).shape[1] == 6 + stop(0)


def test_streamer_sees_every_new_token():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (2, 4))
    seen = []
    out = model.generate(ids, 5, streamer=seen.append)
    assert torch.equal(torch.stack(seen, 1), out[:, 4:])


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (3, 5))
    a = model.generate(ids, 6, temperature=0.8, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, 6, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    greedy = model.generate(ids, 6)
    assert torch.equal(model.generate(ids, 6, do_sample=True, top_k=1), greedy)
    assert torch.equal(model.generate(ids, 6, do_sample=True, top_p=1e-6), greedy)
    assert torch.equal(model.generate(ids, 6, temperature=0.0), greedy)


def test_sample_next_filters_and_distribution():
    logits = torch.randn(1, 50).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    top = set(torch.topk(logits[0], 5).indices.tolist())
    picks = sample_next(logits, True, top_k=5, generator=g)
    assert set(picks.tolist()) <= top
    probs = logits[0].softmax(-1)
    order = probs.argsort(descending=True)
    n_keep = int((probs[order].cumsum(0) < 0.6).sum()) + 1  # smallest set reaching 0.6
    picks = sample_next(logits, True, top_p=0.6, generator=g)
    assert set(picks.tolist()) <= set(order[:n_keep].tolist())
    # Plain sampling at temperature 2 follows softmax(logits / 2).
    picks = sample_next(logits, True, temperature=2.0, generator=g)
    freq = torch.bincount(picks, minlength=50).double() / len(picks)
    expected = (logits[0] / 2).softmax(-1).double()
    assert (freq - expected).abs().max() < 0.03


def test_generation_past_max_seq_len_warns_and_matches_full_forward():
    model = _model(max_seq_len=16)
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with pytest.warns(UserWarning, match="max_seq_len"):
        out = model.generate(ids, 10)
    model._warned_long = True
    assert torch.equal(out, _greedy_by_full_forward(model, ids, 10))


def test_bad_arguments_raise():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (2, 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, -1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids, 2, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(ids, 2, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(ids, 2, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))
    assert torch.equal(model.generate(ids, 0), ids)
