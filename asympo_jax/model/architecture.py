"""ModelConfig: the architecture of a decoder, read from (and written back to) a Hugging Face config.

One decoder covers the supported families; each family in `ARCHITECTURES` says how its HF config maps to
our fields (biases, per-head QK norm). Anything the decoder cannot reproduce exactly (another architecture,
sliding-window attention, another RoPE scaling, another activation) is refused here by name.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import ml_collections
import transformers

from asympo_jax.common.checks import check
from asympo_jax.model import attention

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots")


class UnsupportedModelError(ValueError):
  """A Hugging Face config that this decoder cannot reproduce; the message names the field."""


def validate(cfg_model: ml_collections.ConfigDict) -> None:
  """Checks the `model` config section; errors name the key."""
  check(cfg_model.param_dtype in DTYPES, "model.param_dtype", f"must be one of {DTYPES}")
  check(cfg_model.dtype in DTYPES, "model.dtype",
        f"must be one of {DTYPES} (the compute dtype; model.param_dtype is the storage dtype), got {cfg_model.dtype!r}")
  check(cfg_model.attention in attention.CHOICES, "model.attention",
        f"must be one of {attention.CHOICES}, got {cfg_model.attention!r}")
  check(cfg_model.remat in REMAT_POLICIES, "model.remat", f"must be one of {REMAT_POLICIES}")
  check(isinstance(cfg_model.scan_layers, bool), "model.scan_layers", "must be true or false")
  check(not cfg_model.hf_path or os.path.isfile(os.path.join(cfg_model.hf_path, "config.json")),
        "model.hf_path", f"{cfg_model.hf_path!r} is not a Hugging Face directory with a config.json")
  check(not cfg_model.config_json or os.path.isfile(cfg_model.config_json), "model.config_json",
        f"{cfg_model.config_json!r} is not a file (a model's published config.json)")


def options(cfg_model: ml_collections.ConfigDict, platform: str) -> dict[str, Any]:
  """The ModelConfig options a run's `model` section sets (for hf_io.load_model / ModelConfig.from_hf), for
  a model that runs on devices of `platform` (model.attention = auto resolves to that platform's kernel)."""
  return dict(param_dtype=cfg_model.param_dtype, dtype=cfg_model.dtype,
              attention=attention.resolve(cfg_model.attention, platform),
              remat=cfg_model.remat, scan_layers=cfg_model.scan_layers)


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  model_type: str  # qwen2 | qwen3 | llama
  vocab_size: int
  hidden_size: int  # D
  num_layers: int  # L
  num_heads: int  # H
  num_kv_heads: int  # K
  head_dim: int
  intermediate_size: int  # F
  rms_norm_eps: float
  rope_theta: float
  rope_scaling: Llama3RopeScaling | None
  qkv_bias: bool
  o_bias: bool
  mlp_bias: bool
  qk_norm: bool
  tie_embeddings: bool
  max_position_embeddings: int
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  initializer_range: float = 0.02
  param_dtype: str = "float32"  # float32 | bfloat16: the stored (master) parameters
  dtype: str = "float32"  # float32 | bfloat16: the compute dtype, of the weights where used and the activations
  attention: str = "plain"  # of the multi-token calls (train step, prefill): plain | chunked | splash | cudnn
  remat: str = "none"  # none | full | dots
  scan_layers: bool = False

  def __post_init__(self):
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise UnsupportedModelError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
    if self.attention not in attention.NAMES:
      raise UnsupportedModelError(f"attention must be one of {attention.NAMES}, got {self.attention!r}")
    if self.remat not in REMAT_POLICIES:
      raise UnsupportedModelError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if self.num_heads % self.num_kv_heads:
      raise UnsupportedModelError(
          f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")

  @classmethod
  def from_hf(cls, hf: transformers.PretrainedConfig, **options: Any) -> "ModelConfig":
    """Reads an HF config; `options` set param_dtype / dtype / attention / remat / scan_layers."""
    arch = _architecture(hf)
    if _get(hf, "hidden_act") != "silu":
      raise UnsupportedModelError(f"hidden_act={_get(hf, 'hidden_act')!r}: only 'silu' (SwiGLU) is supported")
    if getattr(hf, "use_sliding_window", False):
      raise UnsupportedModelError("use_sliding_window=True: sliding-window attention is not supported")
    layer_types = getattr(hf, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types):
      raise UnsupportedModelError(f"layer_types={layer_types}: only full_attention layers are supported")
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    if "rope_theta" not in rope:
      raise UnsupportedModelError("rope_parameters.rope_theta is missing")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise UnsupportedModelError("rope_parameters.partial_rotary_factor != 1 is not supported")
    eos = getattr(hf, "eos_token_id", None)
    fields = dict(
        model_type=hf.model_type,
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=_get(hf, "hidden_size"),
        num_layers=_get(hf, "num_hidden_layers"),
        num_heads=_get(hf, "num_attention_heads"),
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or _get(hf, "num_attention_heads"),
        head_dim=getattr(hf, "head_dim", None) or _get(hf, "hidden_size") // _get(hf, "num_attention_heads"),
        intermediate_size=_get(hf, "intermediate_size"),
        rms_norm_eps=float(_get(hf, "rms_norm_eps")),
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=_rope_scaling(rope),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        max_position_embeddings=_get(hf, "max_position_embeddings"),
        bos_token_id=getattr(hf, "bos_token_id", None),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        initializer_range=float(getattr(hf, "initializer_range", 0.02)),
    )
    fields.update(arch.read_flags(hf))
    return cls(**fields, **options)

  def to_hf(self) -> transformers.PretrainedConfig:
    """The HF config that transformers' AutoModelForCausalLM builds this model from."""
    arch = ARCHITECTURES[self.model_type]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope.update(rope_type="llama3", **dataclasses.asdict(self.rope_scaling))
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    hf = transformers.AutoConfig.for_model(
        self.model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim,
        intermediate_size=self.intermediate_size,
        rms_norm_eps=self.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=self.tie_embeddings,
        max_position_embeddings=self.max_position_embeddings,
        bos_token_id=self.bos_token_id,
        eos_token_id=eos,
        initializer_range=self.initializer_range,
        hidden_act="silu",
        architectures=[arch.hf_class],
        dtype=self.param_dtype,
        **arch.write_flags(self),
    )
    return hf


@dataclasses.dataclass(frozen=True)
class Architecture:
  hf_class: str
  read_flags: Callable[[transformers.PretrainedConfig], dict[str, bool]]  # -> qkv_bias, o_bias, mlp_bias, qk_norm
  write_flags: Callable[[ModelConfig], dict[str, Any]]


def _qwen2_flags(hf):
  return dict(qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False)


def _qwen3_flags(hf):
  bias = bool(getattr(hf, "attention_bias", False))
  return dict(qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm=True)


def _llama_flags(hf):
  bias = bool(getattr(hf, "attention_bias", False))
  return dict(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf, "mlp_bias", False)), qk_norm=False)


ARCHITECTURES: dict[str, Architecture] = {
    "qwen2": Architecture("Qwen2ForCausalLM", _qwen2_flags, lambda c: {}),
    "qwen3": Architecture("Qwen3ForCausalLM", _qwen3_flags, lambda c: {"attention_bias": c.qkv_bias}),
    "llama": Architecture("LlamaForCausalLM", _llama_flags,
                          lambda c: {"attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias}),
}


def _architecture(hf: transformers.PretrainedConfig) -> Architecture:
  model_type = getattr(hf, "model_type", None)
  names = list(getattr(hf, "architectures", None) or [])
  supported = ", ".join(a.hf_class for a in ARCHITECTURES.values())
  if model_type not in ARCHITECTURES:
    raise UnsupportedModelError(
        f"unsupported architecture {names[0] if names else model_type!r} (model_type={model_type!r}); "
        f"supported: {supported}")
  arch = ARCHITECTURES[model_type]
  if names and names[0] != arch.hf_class:
    raise UnsupportedModelError(f"unsupported architecture {names[0]!r} (architectures); supported: {supported}")
  return arch


def _get(hf: transformers.PretrainedConfig, name: str) -> Any:
  value = getattr(hf, name, None)
  if value is None:
    raise UnsupportedModelError(f"config field {name!r} is missing")
  return value


def _rope_scaling(rope: dict[str, Any]) -> Llama3RopeScaling | None:
  kind = rope.get("rope_type", "default")
  if kind == "default":
    return None
  if kind != "llama3":
    raise UnsupportedModelError(f"rope_parameters.rope_type={kind!r}: only 'default' and 'llama3' are supported")
  try:
    return Llama3RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
    )
  except KeyError as e:
    raise UnsupportedModelError(f"rope_parameters.{e.args[0]} is missing for rope_type='llama3'") from None
