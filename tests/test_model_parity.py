"""MPTForCausalLM against transformers.MptForCausalLM on the same weights (float32, CPU)."""
import pytest
import torch

from model_helpers import hf_twin, make_model, padded_batch, rel_err, tiny_config

transformers = pytest.importorskip("transformers")

TOL = 1e-4


@pytest.mark.parametrize("n_heads,d_model", [(4, 64), (6, 96), (3, 48)])
@pytest.mark.parametrize("seqlen", [1, 17, 40])
def test_logits_match_transformers(n_heads, d_model, seqlen):
    model = make_model(tiny_config(n_heads=n_heads, d_model=d_model, n_layers=3))
    hf = hf_twin(model)
    ids = torch.randint(0, model.config.vocab_size, (2, seqlen))
    with torch.no_grad():
        ours = model(ids).logits
        ref = hf(ids).logits
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize("left", [True, False], ids=["left_pad", "right_pad"])
@pytest.mark.parametrize("n_heads,d_model", [(4, 64), (6, 96)])
def test_padded_logits_match_transformers(left, n_heads, d_model):
    model = make_model(tiny_config(n_heads=n_heads, d_model=d_model))
    hf = hf_twin(model)
    seqlen = 23
    ids, mask = padded_batch([23, 1, 9, 16], seqlen, model.config.vocab_size, left)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        ref = hf(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert rel_err(ours[keep], ref[keep]) < TOL
    assert torch.all(ours[~keep] == 0)


def test_padded_rows_equal_unpadded_rows():
    model = make_model(tiny_config())
    ids, mask = padded_batch([11, 4], 11, model.config.vocab_size, left=True)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, -4:]).logits
    assert rel_err(batched[1, -4:], alone[0]) < TOL


def test_loss_matches_transformers():
    model = make_model(tiny_config())
    hf = hf_twin(model)
    ids = torch.randint(0, model.config.vocab_size, (3, 19))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        ours = model(ids, labels=labels).loss
        ref = hf(ids, labels=labels).loss
    assert abs(float(ours) - float(ref)) < TOL * abs(float(ref))


def test_padded_loss_ignores_padding():
    model = make_model(tiny_config())
    ids, mask = padded_batch([13, 7], 13, model.config.vocab_size, left=True)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, labels=ids).loss
        # The same tokens, each row alone: mean over the same 12 + 6 predictions.
        a = model(ids[:1], labels=ids[:1]).loss
        b = model(ids[1:, -7:], labels=ids[1:, -7:]).loss
    expected = (12 * a + 6 * b) / 18
    assert abs(float(padded) - float(expected)) < TOL * abs(float(expected))
