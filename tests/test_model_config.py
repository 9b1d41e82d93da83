"""MPTConfig: presets, dict/JSON round trips (ours and Hugging Face's), unsupported values."""
import json

import pytest

from mpt_ext.models import PRESETS, MPTConfig

SHAPES = {"125m": (768, 12, 12), "350m": (1024, 16, 24), "760m": (1536, 12, 24),
          "1b": (2048, 16, 24), "3b": (2560, 20, 32), "7b": (4096, 32, 32),
          "13b": (5120, 40, 40), "30b": (7168, 56, 48)}


@pytest.mark.parametrize("name", SHAPES)
def test_presets_have_llm_foundry_shapes(name):
    c = MPTConfig.preset(name)
    assert (c.d_model, c.n_heads, c.n_layers) == SHAPES[name]
    assert (c.expansion_ratio, c.max_seq_len, c.vocab_size) == (4, 2048, 50368)
    assert c.attn_config.alibi and c.norm_type == "low_precision_layernorm" and c.no_bias


def test_tiny_preset_and_overrides():
    assert set(PRESETS) == set(SHAPES) | {"tiny"}
    c = MPTConfig.preset("tiny")
    assert c.d_model <= 256 and c.n_layers <= 4 and c.vocab_size >= 256
    c = MPTConfig.preset("tiny", kv_n_heads=2, qk_ln=True, no_bias=False, vocab_size=300)
    assert c.kv_n_heads == 2 and c.attn_config.attn_type == "grouped_query_attention"
    assert c.attn_config.qk_ln and not c.no_bias and c.vocab_size == 300
    with pytest.raises(ValueError, match="unknown preset"):
        MPTConfig.preset("2b")


def test_round_trip_through_json():
    c = MPTConfig.preset("tiny", clip_qkv=6.0, logit_scale=0.5, norm_type="rmsnorm",
                         kv_n_heads=1)
    d = json.loads(c.to_json_string())
    assert d["model_type"] == "mpt" and d["architectures"] == ["MptForCausalLM"]
    back = MPTConfig.from_dict(d)
    assert back.to_dict() == c.to_dict()
    assert back == c


def test_hugging_face_config_reads_ours_and_we_read_theirs(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = MPTConfig.preset("tiny", n_heads=8, max_seq_len=99)
    ours.save(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == "MptConfig"
    assert (hf.d_model, hf.n_heads, hf.n_layers, hf.max_seq_len) == (128, 8, 4, 99)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir)
    back = MPTConfig.load(hf_dir / "config.json")
    for f in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size", "no_bias",
              "norm_type", "layer_norm_epsilon", "expansion_ratio"):
        assert getattr(back, f) == getattr(ours, f), f
    assert back.attn_config.alibi_bias_max == 8 and back.kv_n_heads == 8


def test_mpt7b_style_config_loads():
    """The shape of mosaicml/mpt-7b's config.json (llm-foundry extras included)."""
    d = {"architectures": ["MPTForCausalLM"], "attn_config": {
        "alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
        "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
        "prefix_lm": False, "qk_ln": False, "softmax_scale": None, "kv_n_heads": 1,
        "rope": False, "sliding_window_size": -1},
        "d_model": 4096, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4,
        "init_config": {"emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in",
                        "init_div_is_residual": True, "init_gain": 0, "init_nonlinearity": "relu",
                        "init_std": 0.02, "name": "kaiming_normal_", "verbose": 0},
        "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 2048,
        "model_type": "mpt", "n_heads": 32, "n_layers": 32, "no_bias": True,
        "norm_type": "low_precision_layernorm", "resid_pdrop": 0, "tokenizer_name":
        "EleutherAI/gpt-neox-20b", "torch_dtype": "bfloat16", "use_cache": False, "verbose": 0,
        "vocab_size": 50432}
    c = MPTConfig.from_dict(d)
    assert c.kv_n_heads == 32 and c.head_dim == 128
    assert c.to_dict()["tokenizer_name"] == "EleutherAI/gpt-neox-20b"


@pytest.mark.parametrize("overrides,field", [
    (dict(alibi=False), "alibi"),
    (dict(prefix_lm=True), "prefix_lm"),
    (dict(attn_uses_sequence_id=True), "attn_uses_sequence_id"),
    (dict(attn_pdrop=0.1), "attn_pdrop"),
    (dict(d_model=100, n_heads=3), "d_model"),
    (dict(norm_type="batchnorm"), "norm_type"),
    (dict(kv_n_heads=3), "kv_n_heads"),
    (dict(attn_type="cross_attention"), "attn_type"),
    (dict(n_layers=0), "n_layers"),
    (dict(logit_scale="big"), "logit_scale"),
    (dict(attn_config={"rope": True}), "rope"),
    (dict(attn_config={"qk_gn": True}), "qk_gn"),
    (dict(ffn_config={"ffn_type": "mptglu"}), "ffn_type"),
])
def test_unsupported_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        if "ffn_config" in overrides:
            d = MPTConfig.preset("tiny").to_dict()
            d.update(overrides)
            MPTConfig.from_dict(d)
        else:
            MPTConfig.preset("tiny", **overrides)


def test_from_dict_rejects_other_models():
    with pytest.raises(ValueError, match="model_type"):
        MPTConfig.from_dict({"model_type": "llama"})
