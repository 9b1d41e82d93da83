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


@pytest.mark.parametrize("max_shard_size", [None, "30KB"], ids=["one", "sharded"])
def test_saved_files_get_the_modes_a_plain_open_gives(tmp_path, max_shard_size):
    # safetensors writes through a 0600 temporary file (issue 13: exports were 0600)
    import os
    make_model(tiny_config()).save_pretrained(tmp_path, max_shard_size=max_shard_size)
    mask = os.umask(0o022)
    os.umask(mask)
    files = list(tmp_path.iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


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


# ---- a user's broken checkpoint: one clear error (UsageError) before any large allocation ----

def _saved(tmp_path, **overrides):
    model = make_model(tiny_config(**overrides))
    model.save_pretrained(tmp_path)
    return model


def _edit_config(tmp_path, **changes):
    d = json.loads((tmp_path / "config.json").read_text())
    d.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(d))


def test_config_layer_count_mismatch_fails_before_building_the_model(tmp_path, monkeypatch):
    """config.json says 3000 layers, the weights hold 2: fail on the weights' header, not
    after constructing 3000 blocks (or, at 10^6 layers, never finishing)."""
    from mpt_ext.errors import UsageError
    from mpt_ext.models import modeling

    _saved(tmp_path)
    _edit_config(tmp_path, n_layers=3000)
    built = []
    real_init = modeling.MPTBlock.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(modeling.MPTBlock, "__init__", counting_init)
    with pytest.raises(UsageError) as err:
        MPTForCausalLM.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "config.json" in msg and "n_layers=3000" in msg and "2 blocks" in msg
    assert "missing keys (" in msg and "transformer.blocks.2." in msg
    assert len(built) <= 1


@pytest.mark.parametrize("field,value", [
    ("n_layers", 1_000_000), ("n_layers", 1e6), ("n_layers", -2), ("n_layers", "4"),
    ("d_model", 2**40), ("vocab_size", 0), ("expansion_ratio", "4"),
    ("expansion_ratio", float("inf")), ("max_seq_len", 2**63),
])
def test_absurd_config_values_are_rejected_naming_the_field(tmp_path, field, value):
    from mpt_ext.errors import UsageError

    _saved(tmp_path)
    _edit_config(tmp_path, **{field: value})
    with pytest.raises(UsageError, match=rf"config.json.*{field}="):
        MPTForCausalLM.from_pretrained(tmp_path)


def test_huge_model_config_is_rejected():
    from mpt_ext.models import MPTConfig
    with pytest.raises(ValueError, match="parameters"):
        MPTConfig(d_model=65536, n_heads=64, n_layers=4096, vocab_size=50000)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors_is_a_usage_error_naming_the_file(tmp_path, damage):
    from mpt_ext.errors import UsageError

    _saved(tmp_path)
    f = tmp_path / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes({"garbage": b"\xff" * 64 + raw[64:], "truncated": raw[:len(raw) // 2],
                   "empty": b""}[damage])
    with pytest.raises(UsageError, match="model.safetensors"):
        MPTForCausalLM.from_pretrained(tmp_path)


def test_corrupt_bin_and_config_json_are_usage_errors(tmp_path):
    from mpt_ext.errors import UsageError

    model = make_model(tiny_config())
    model.save_pretrained(tmp_path, safe_serialization=False)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="pytorch_model.bin"):
        MPTForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"d_model": 64,')
    with pytest.raises(UsageError, match=r"config.json.*line 1"):
        MPTForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        MPTForCausalLM.from_pretrained(tmp_path / "nowhere")
