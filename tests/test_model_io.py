"""Checkpoint IO: our save -> transformers and back, transformers' save -> ours, sharding,
pytorch_model.bin, and clear errors for mismatched checkpoints."""
import json

import pytest
import torch

from model_helpers import hf_twin, make_model, rel_err, tiny_config

from mpt_ext.models import MPTForCausalLM

transformers = pytest.importorskip("transformers")


def _assert_same_state(a: dict, b: dict):
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_save_then_transformers_loads_identical_weights(tmp_path):
    model = make_model(tiny_config(n_heads=6, d_model=96))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    hf = transformers.MptForCausalLM.from_pretrained(tmp_path)
    hf_state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    _assert_same_state(model.state_dict(), hf_state)
    ids = torch.randint(0, model.config.vocab_size, (2, 13))
    with torch.no_grad():
        assert rel_err(model(ids).logits, hf(ids).logits) < 1e-4


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_load_checkpoint_written_by_transformers(tmp_path, safe):
    hf = hf_twin(make_model(tiny_config()))
    if safe:
        hf.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
    else:
        # transformers 5 writes only safetensors; older checkpoints are a pickled
        # state_dict, tied lm_head.weight included.
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = MPTForCausalLM.from_pretrained(tmp_path)
    assert not model.training
    hf_state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    _assert_same_state(model.state_dict(), hf_state)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    with torch.no_grad():
        assert rel_err(model(ids).logits, hf(ids).logits) < 1e-4


def test_load_sharded_checkpoint_written_by_transformers(tmp_path):
    hf = hf_twin(make_model(tiny_config(n_layers=3)))
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model = MPTForCausalLM.from_pretrained(tmp_path)
    hf_state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    _assert_same_state(model.state_dict(), hf_state)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_round_trip(tmp_path, safe):
    model = make_model(tiny_config(no_bias=False, qk_ln=True, kv_n_heads=2,
                                   tie_word_embeddings=False), dtype=torch.bfloat16)
    model.save_pretrained(tmp_path, safe_serialization=safe, max_shard_size="30KB")
    index = json.loads((tmp_path / ("model.safetensors.index.json" if safe
                                    else "pytorch_model.bin.index.json")).read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert len(set(index["weight_map"].values())) > 1
    back = MPTForCausalLM.from_pretrained(tmp_path)
    assert back.dtype == torch.bfloat16 and back.config == model.config
    _assert_same_state(model.state_dict(), back.state_dict())
    # Saving again unsharded removes the stale shards.
    back.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_load_with_dtype_and_device(tmp_path):
    model = make_model(tiny_config())
    model.save_pretrained(tmp_path)
    back = MPTForCausalLM.from_pretrained(tmp_path, dtype=torch.float64, device="cpu")
    assert back.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in back.parameters())


def _write_state(tmp_path, config, state):
    from safetensors.torch import save_file
    config.save(tmp_path / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path):
    model = make_model(tiny_config())
    state = dict(model.state_dict())
    del state["transformer.blocks.1.ffn.up_proj.weight"]
    state["transformer.blocks.0.attn.rotary.weight"] = torch.zeros(3)
    state["transformer.norm_f.weight"] = torch.ones(65)
    _write_state(tmp_path, model.config, state)
    with pytest.raises(ValueError) as err:
        MPTForCausalLM.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing keys (1): transformer.blocks.1.ffn.up_proj.weight" in msg
    assert "unexpected keys (1): transformer.blocks.0.attn.rotary.weight" in msg
    assert "transformer.norm_f.weight: checkpoint (65,) vs model (64,)" in msg


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MPTForCausalLM.from_pretrained(tmp_path)
    tiny_config().save(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        MPTForCausalLM.from_pretrained(tmp_path)


def test_unsupported_config_in_checkpoint_raises(tmp_path):
    model = make_model(tiny_config())
    model.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d["attn_config"]["alibi"] = False
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="alibi"):
        MPTForCausalLM.from_pretrained(tmp_path)
