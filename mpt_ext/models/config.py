"""MPTConfig: the fields of transformers' MptConfig plus llm-foundry's extras, with a JSON
form that Hugging Face's config.json reader accepts (model_type "mpt").

Supported (everything else raises ValueError naming the field): ALiBi attention (no learned
or rotary positions), causal LM without prefix-LM or sequence-id masking, no attention
dropout (the kernels have none), fused Wqkv, the MPT MLP with exact GELU. Sizes past
MAX_SIZES or MAX_PARAMETERS are rejected as absurd (a typo, not a model) before anything
is allocated. The error is mpt_ext.errors.UsageError (a ValueError): a config is user input.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import UsageError

__all__ = ["MPTConfig", "AttnConfig", "PRESETS", "MAX_SIZES", "MAX_PARAMETERS", "check_preset"]

#: upper bounds of the integer sizes: far past any trained model (MPT-30B: 48 layers,
#: d_model 7168), low enough that a typo (n_layers: 1000000) fails here and not after
#: minutes of allocation
MAX_SIZES = {"d_model": 2**17, "n_heads": 2**12, "n_layers": 2**12, "max_seq_len": 2**31 - 1,
             "vocab_size": 2**24}
#: upper bound of the parameter count the sizes give (10 trillion)
MAX_PARAMETERS = 10**13

_ATTN_TYPES = ("multihead_attention", "multiquery_attention", "grouped_query_attention")
_NORM_TYPES = ("low_precision_layernorm", "layernorm", "rmsnorm", "low_precision_rmsnorm")

# Keys transformers' PreTrainedConfig.to_dict() adds to every (sub)config; they carry no
# model semantics, so reading ignores them inside attn_config.
_HF_GENERIC_KEYS = frozenset({
    "architectures", "output_hidden_states", "output_attentions", "return_dict", "dtype",
    "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "_name_or_path", "model_type", "transformers_version",
})

# llm-foundry attention options we accept only at their "off" value.
_ATTN_OFF_VALUES = {
    "qk_gn": (False,), "fused_qkv": (True,), "rope": (False,),
    "sliding_window_size": (-1, None), "attn_logit_softcapping": (None,),
}
# Top-level llm-foundry options we accept only at their "off" value.
_TOP_OFF_VALUES = {
    "block_overrides": (None, {}), "final_logit_softcapping": (None,),
    "fc_type": ("torch", {"name": "torch"}, None),
}


@dataclass
class AttnConfig:
    """attn_config of an MPT config.json (transformers' MptAttentionConfig + llm-foundry's
    kv_n_heads). attn_impl is recorded but ignored: mpt_ext's kernels always run."""
    attn_type: str = "multihead_attention"
    attn_pdrop: float = 0
    attn_impl: str = "torch"
    clip_qkv: Optional[float] = None
    softmax_scale: Optional[float] = None
    prefix_lm: bool = False
    qk_ln: bool = False
    attn_uses_sequence_id: bool = False
    alibi: bool = True
    alibi_bias_max: float = 8
    # Used only with attn_type "grouped_query_attention" (llm-foundry's rule; its saved
    # configs carry kv_n_heads=1 alongside multihead_attention).
    kv_n_heads: Optional[int] = None
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Union[dict, "AttnConfig", None]) -> "AttnConfig":
        if d is None:
            return cls()
        if isinstance(d, AttnConfig):
            return copy.deepcopy(d)
        if not isinstance(d, dict):
            raise ValueError(f"attn_config must be a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _HF_GENERIC_KEYS}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if d["kv_n_heads"] is None:
            del d["kv_n_heads"]
        for k in ("attn_pdrop", "alibi_bias_max"):
            d[k] = _int_if_integral(d[k])
        for k in ("clip_qkv", "softmax_scale"):  # typed float | None by transformers
            if d[k] is not None:
                d[k] = float(d[k])
        d.update(self.extra)
        return d


@dataclass
class MPTConfig:
    """Configuration of an MPT causal LM (HF MptConfig fields + llm-foundry extras)."""
    d_model: int = 2048
    n_heads: int = 16
    n_layers: int = 24
    expansion_ratio: float = 4
    max_seq_len: int = 2048
    vocab_size: int = 50368
    resid_pdrop: float = 0.0
    emb_pdrop: float = 0.0
    learned_pos_emb: bool = True  # ignored under ALiBi, as in MPT's own code (no wpe)
    attn_config: AttnConfig = field(default_factory=AttnConfig)
    init_device: str = "cpu"
    logit_scale: Optional[Union[float, str]] = None
    no_bias: bool = True
    verbose: int = 0
    embedding_fraction: float = 1.0
    norm_type: str = "low_precision_layernorm"
    use_cache: bool = False
    initializer_range: float = 0.02
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Union[int, list]] = None
    # llm-foundry's init_config (name kaiming_normal_, fan_in, relu, residual division).
    init_config: dict = field(default_factory=lambda: dict(_DEFAULT_INIT))
    # Unknown keys of a loaded config.json, written back unchanged by to_dict().
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.attn_config = AttnConfig.from_dict(self.attn_config)
        self.init_config = {**_DEFAULT_INIT, **(self.init_config or {})}
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_n_heads(self) -> int:
        """Number of key/value heads actually used (n_heads for MHA, 1 for MQA)."""
        a = self.attn_config
        if a.attn_type == "multiquery_attention":
            return 1
        if a.attn_type == "grouped_query_attention":
            return int(a.kv_n_heads)
        return self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return int(self.d_model * self.expansion_ratio)

    @property
    def softmax_scale(self) -> float:
        s = self.attn_config.softmax_scale
        return float(s) if s is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def logit_scale_value(self) -> Optional[float]:
        if self.logit_scale is None:
            return None
        if self.logit_scale == "inv_sqrt_d_model":
            return 1.0 / math.sqrt(self.d_model)
        return float(self.logit_scale)

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(name, value, expected):
            raise UsageError(f"MPTConfig.{name}={value!r} is not supported: {expected}")

        def number(name, value):
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value)):
                bad(name, value, "expected a finite number")

        for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, v, "expected a positive int")
            if v > MAX_SIZES[name]:
                bad(name, v, f"expected at most {MAX_SIZES[name]} (is it a typo?)")
        if self.d_model % self.n_heads:
            bad("d_model", self.d_model, f"must be divisible by n_heads={self.n_heads}")
        number("expansion_ratio", self.expansion_ratio)
        if not self.expansion_ratio > 0 or self.ffn_hidden_size < 1:
            bad("expansion_ratio", self.expansion_ratio, "expected > 0")
        for name in ("resid_pdrop", "emb_pdrop", "embedding_fraction", "layer_norm_epsilon",
                     "initializer_range"):
            number(name, getattr(self, name))
        if self.norm_type not in _NORM_TYPES:
            bad("norm_type", self.norm_type, f"expected one of {_NORM_TYPES}")
        for name in ("resid_pdrop", "emb_pdrop"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                bad(name, getattr(self, name), "expected a probability in [0, 1)")
        if not 0.0 < float(self.embedding_fraction) <= 1.0:
            bad("embedding_fraction", self.embedding_fraction, "expected in (0, 1]")
        if not (self.logit_scale is None or self.logit_scale == "inv_sqrt_d_model"
                or isinstance(self.logit_scale, (int, float))):
            bad("logit_scale", self.logit_scale, "expected None, a number or 'inv_sqrt_d_model'")
        if not self.layer_norm_epsilon >= 0:
            bad("layer_norm_epsilon", self.layer_norm_epsilon, "expected >= 0")
        a = self.attn_config
        if a.attn_type not in _ATTN_TYPES:
            bad("attn_config.attn_type", a.attn_type, f"expected one of {_ATTN_TYPES}")
        if not a.alibi:
            bad("attn_config.alibi", a.alibi,
                "mpt_ext's MPT uses ALiBi positions only (no learned or rotary embeddings)")
        if a.prefix_lm:
            bad("attn_config.prefix_lm", a.prefix_lm, "only causal LM attention is implemented")
        if a.attn_uses_sequence_id:
            bad("attn_config.attn_uses_sequence_id", a.attn_uses_sequence_id,
                "pack sequences through attention_mask / varlen instead")
        if float(a.attn_pdrop or 0) != 0.0:
            bad("attn_config.attn_pdrop", a.attn_pdrop, "the attention kernels have no dropout")
        if not float(a.alibi_bias_max) > 0:
            bad("attn_config.alibi_bias_max", a.alibi_bias_max, "expected > 0")
        if a.clip_qkv is not None and not float(a.clip_qkv) > 0:
            bad("attn_config.clip_qkv", a.clip_qkv, "expected None or > 0")
        if a.softmax_scale is not None and not float(a.softmax_scale) > 0:
            bad("attn_config.softmax_scale", a.softmax_scale, "expected None or > 0")
        if a.attn_type == "grouped_query_attention":
            kv = a.kv_n_heads
            if not isinstance(kv, int) or kv < 1 or self.n_heads % kv:
                bad("attn_config.kv_n_heads", kv,
                    f"expected a positive divisor of n_heads={self.n_heads}")
        for key, allowed in _ATTN_OFF_VALUES.items():
            if key in a.extra and a.extra[key] not in allowed:
                bad(f"attn_config.{key}", a.extra[key], f"only {allowed[0]!r} is implemented")
        for key, allowed in _TOP_OFF_VALUES.items():
            if key in self.extra and self.extra[key] not in allowed:
                bad(key, self.extra[key], f"only {allowed[0]!r} is implemented")
        ffn = self.extra.get("ffn_config")
        if ffn:
            if ffn.get("ffn_type", "mptmlp") != "mptmlp":
                bad("ffn_config.ffn_type", ffn.get("ffn_type"), "only 'mptmlp' is implemented")
            act = ffn.get("ffn_act_fn")
            if act not in (None, {"name": "gelu", "approximate": "none"}):
                bad("ffn_config.ffn_act_fn", act, "only exact GELU is implemented")
            if ffn.get("ffn_hidden_size") not in (None, self.ffn_hidden_size):
                bad("ffn_config.ffn_hidden_size", ffn["ffn_hidden_size"],
                    "set expansion_ratio instead")
        init = self.init_config
        if init.get("name") not in ("kaiming_normal_", "baseline_"):
            bad("init_config.name", init.get("name"), "expected 'kaiming_normal_' or 'baseline_'")
        n = self.approx_parameters()
        if n > MAX_PARAMETERS:
            bad("n_layers", self.n_layers, f"with d_model={self.d_model}, expansion_ratio="
                f"{self.expansion_ratio} and vocab_size={self.vocab_size} the model would have "
                f"~{n:.3g} parameters, more than {MAX_PARAMETERS:.0e}")

    def approx_parameters(self) -> int:
        """The weight count these sizes give (biases and norms left out)."""
        d, hd = self.d_model, self.head_dim
        attn = d * (d + 2 * self.kv_n_heads * hd) + d * d
        ffn = 2 * d * self.ffn_hidden_size
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.n_layers * (attn + ffn) + emb

    # ---- dict / json ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A config.json dict that both transformers' MptConfig and from_dict read."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
             if f.name not in ("attn_config", "extra")}
        d["attn_config"] = self.attn_config.to_dict()
        # transformers' strict MptConfig types these as int.
        d["expansion_ratio"] = _int_if_integral(d["expansion_ratio"])
        for k, v in self.extra.items():
            d.setdefault(k, copy.deepcopy(v))
        d["model_type"] = "mpt"
        d["architectures"] = ["MptForCausalLM"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MPTConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        if d.get("model_type", "mpt") != "mpt":
            raise ValueError(f"config model_type={d.get('model_type')!r}: expected 'mpt'")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        # dtype describes the stored weights, not the model: hf_io reads and writes it.
        extra = {k: v for k, v in d.items() if k not in names and k not in
                 ("model_type", "architectures", "dtype", "torch_dtype")}
        return cls(**known, extra=extra)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w") as f:
            f.write(self.to_json_string())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "MPTConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MPTConfig":
        """One of PRESETS (llm-foundry's MPT shapes, plus 'tiny' for CPU runs) with
        overrides. Overrides may name attn_config fields directly (qk_ln=True,
        kv_n_heads=4 -- which selects grouped-query attention)."""
        check_preset(name)
        d = copy.deepcopy(PRESETS[name])
        attn = dict(d.pop("attn_config", {}))
        attn_names = {f.name for f in dataclasses.fields(AttnConfig)} - {"extra"}
        for k, v in overrides.items():
            if k in attn_names:
                attn[k] = v
            elif k == "attn_config":
                attn.update(v if isinstance(v, dict) else v.to_dict())
            else:
                d[k] = v
        if "kv_n_heads" in overrides and "attn_type" not in overrides:
            attn["attn_type"] = "grouped_query_attention"
        return cls(**d, attn_config=attn)


def check_preset(name: str) -> None:
    """A UsageError, in the words of the CLIs' --preset, unless name is one of PRESETS."""
    if name not in PRESETS:
        raise UsageError(f"--preset {name}: unknown preset; expected one of {', '.join(PRESETS)}")


def _int_if_integral(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


_DEFAULT_INIT = {
    "name": "kaiming_normal_", "fan_mode": "fan_in", "init_nonlinearity": "relu",
    "init_div_is_residual": True, "emb_init_std": None, "emb_init_uniform_lim": None,
    "init_std": None, "init_gain": 0.0,
}

_COMMON = dict(expansion_ratio=4, max_seq_len=2048, vocab_size=50368)
PRESETS: dict[str, dict] = {
    # Trains in about a minute on a CPU with a byte-level vocabulary.
    "tiny": dict(d_model=128, n_heads=4, n_layers=4, expansion_ratio=4, max_seq_len=256,
                 vocab_size=512),
    "125m": dict(d_model=768, n_heads=12, n_layers=12, **_COMMON),
    "350m": dict(d_model=1024, n_heads=16, n_layers=24, **_COMMON),
    "760m": dict(d_model=1536, n_heads=12, n_layers=24, **_COMMON),
    "1b": dict(d_model=2048, n_heads=16, n_layers=24, **_COMMON),
    "3b": dict(d_model=2560, n_heads=20, n_layers=32, **_COMMON),
    "7b": dict(d_model=4096, n_heads=32, n_layers=32, **_COMMON),
    "13b": dict(d_model=5120, n_heads=40, n_layers=40, **_COMMON),
    "30b": dict(d_model=7168, n_heads=56, n_layers=48, **_COMMON),
}
