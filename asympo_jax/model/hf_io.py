"""Hugging Face checkpoint import and export.

`load_model(path, mesh=...)` reads a local HF directory (config.json, model.safetensors or sharded
model-*.safetensors with model.safetensors.index.json) into a `Decoder`. Every parameter is built with
`jax.make_array_from_callback`: each device's shard is read from the safetensors files one HF tensor at a time,
reading only the rows/columns of that shard (`read_block`), so with a mesh no host ever holds the whole model;
shapes are checked against the config before anything is read.
`save_model(model, path, tokenizer)` writes config.json, safetensors (sharded above `max_shard_bytes`) and the
tokenizer, so that transformers' AutoModelForCausalLM.from_pretrained(path) loads it.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy
import transformers
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding, SingleDeviceSharding

from asympo_jax.model.decoder import Decoder, ParamSpec, layer_param_specs, top_param_specs
from asympo_jax.model.architecture import ModelConfig
from asympo_jax.common.sharding import logical_sharding

# Our parameter name -> (HF tensor name, layout). Layout n > 0: an HF Linear weight [out, in] whose `in` is our
# first n dims (we store it transposed, heads split out); 0: flattened (biases, norms); None: the same shape.
_LAYER_NAMES: dict[str, tuple[str, int | None]] = {
    "input_norm": ("input_layernorm.weight", 0),
    "post_norm": ("post_attention_layernorm.weight", 0),
    "q": ("self_attn.q_proj.weight", 1),
    "k": ("self_attn.k_proj.weight", 1),
    "v": ("self_attn.v_proj.weight", 1),
    "o": ("self_attn.o_proj.weight", 2),
    "q_bias": ("self_attn.q_proj.bias", 0),
    "k_bias": ("self_attn.k_proj.bias", 0),
    "v_bias": ("self_attn.v_proj.bias", 0),
    "o_bias": ("self_attn.o_proj.bias", 0),
    "q_norm": ("self_attn.q_norm.weight", 0),
    "k_norm": ("self_attn.k_norm.weight", 0),
    "gate": ("mlp.gate_proj.weight", 1),
    "up": ("mlp.up_proj.weight", 1),
    "down": ("mlp.down_proj.weight", 1),
    "gate_bias": ("mlp.gate_proj.bias", 0),
    "up_bias": ("mlp.up_proj.bias", 0),
    "down_bias": ("mlp.down_proj.bias", 0),
}
_TOP_NAMES: dict[str, tuple[str, int | None]] = {
    "embed": ("model.embed_tokens.weight", None),
    "final_norm": ("model.norm.weight", 0),
    "lm_head": ("lm_head.weight", 1),
}


class CheckpointError(ValueError):
  """A checkpoint that does not match its config; the message names the tensor."""


def hf_shape(shape: tuple[int, ...], layout: int | None) -> tuple[int, ...]:
  if layout is None:
    return shape
  if layout == 0:
    return (math.prod(shape),)
  return (math.prod(shape[layout:]), math.prod(shape[:layout]))


def to_ours(w: np.ndarray, shape: tuple[int, ...], layout: int | None) -> np.ndarray:
  return (w.T if layout else w).reshape(shape)


def to_hf(w: np.ndarray, layout: int | None) -> np.ndarray:
  shape = hf_shape(w.shape, layout)
  return np.ascontiguousarray(w.reshape(shape[::-1]).T if layout else w.reshape(shape))


def _groups(ndim: int, layout: int | None) -> list[list[int]]:
  """For each HF dim, in HF order, our dims that it flattens (most significant first)."""
  if layout is None:
    return [[d] for d in range(ndim)]
  if layout == 0:
    return [list(range(ndim))]
  return [list(range(layout, ndim)), list(range(layout))]


def read_block(hf_tensor: Any, shape: tuple[int, ...], layout: int | None, index: tuple[slice, ...]) -> np.ndarray:
  """Block `index` (unit-step slices) of our [shape] parameter, reading from the lazily sliceable HF tensor
  only the contiguous rows/columns that hold it: an HF dim is cut when the block spans all of the inner dims it
  flattens (the usual case: head_dim is never sharded), otherwise read whole."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  ranges = [idx.indices(n)[:2] for idx, n in zip(index, shape)]
  hf_index, part_shape, rest_index = [], list(shape), list(index)
  for group in _groups(len(shape), layout):
    first, inner_dims = group[0], group[1:]
    if all(ranges[d] == (0, shape[d]) for d in inner_dims):
      inner = math.prod(shape[d] for d in inner_dims)
      start, stop = ranges[first]
      hf_index.append(slice(start * inner, stop * inner))
      part_shape[first] = stop - start
      rest_index[first] = slice(None)
    else:
      hf_index.append(slice(None))
  return to_ours(hf_tensor[tuple(hf_index)], tuple(part_shape), layout)[tuple(rest_index)]


def _entries(cfg: ModelConfig) -> list[tuple[tuple[str, ...], ParamSpec, list[str], int | None]]:
  """(our state path, spec, HF names (one per layer for stacked params), layout) for every parameter."""
  out = []
  for name, spec in top_param_specs(cfg).items():
    hf_name, layout = _TOP_NAMES[name]
    out.append(((name,), spec, [hf_name], layout))
  for name, spec in layer_param_specs(cfg).items():
    suffix, layout = _LAYER_NAMES[name]
    out.append((("layers", name), spec, [f"model.layers.{i}.{suffix}" for i in range(cfg.num_layers)], layout))
  return out


def load_config(path: str, **options: Any) -> ModelConfig:
  """The ModelConfig of an HF directory; `options` set param_dtype / dtype / attention / remat / scan_layers."""
  return ModelConfig.from_hf(transformers.AutoConfig.from_pretrained(path), **options)


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  return transformers.AutoTokenizer.from_pretrained(path)


class _Tensors:
  """The tensors of an HF directory's safetensors files, opened lazily (memory-mapped)."""

  def __init__(self, path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        self.files = {name: os.path.join(path, file) for name, file in json.load(f)["weight_map"].items()}
    else:
      single = os.path.join(path, "model.safetensors")
      if not os.path.exists(single):
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
      with safetensors.safe_open(single, "numpy") as f:
        self.files = {name: single for name in f.keys()}
    self._open: dict[str, Any] = {}
    self.path = path

  def _handle(self, name: str) -> Any:
    if name not in self.files:
      raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
    file = self.files[name]
    if file not in self._open:
      self._open[file] = safetensors.safe_open(file, "numpy")
    return self._open[file]

  def lazy(self, name: str) -> Any:
    """The tensor as a safetensors slice: indexing it reads only the selected part."""
    return self._handle(name).get_slice(name)


def load_model(path: str, mesh: Mesh | None = None, **options: Any) -> Decoder:
  """A Decoder with the weights of the HF directory `path`, each parameter sharded by the rules on `mesh`."""
  cfg = load_config(path, **options)
  tensors = _Tensors(path)
  entries = _entries(cfg)
  for _, spec, hf_names, layout in entries:
    want = hf_shape(spec.shape, layout)
    for hf_name in hf_names:
      got = tuple(tensors.lazy(hf_name).get_shape())
      if got != want:
        raise CheckpointError(f"{path}: tensor {hf_name!r} has shape {got}, the config implies {want}")
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  dtype = np.dtype(cfg.param_dtype) if cfg.param_dtype != "bfloat16" else jax.numpy.bfloat16
  for key, spec, hf_names, layout in entries:
    stacked = key[0] == "layers"
    shape = (len(hf_names), *spec.shape) if stacked else spec.shape
    axes = ("layers", *spec.axes) if stacked else spec.axes
    sharding: Sharding = (SingleDeviceSharding(jax.devices()[0]) if mesh is None
                          else logical_sharding(axes, shape, mesh))

    def read(index, hf_names=hf_names, spec=spec, layout=layout, stacked=stacked):
      if not stacked:
        return read_block(tensors.lazy(hf_names[0]), spec.shape, layout, index).astype(dtype)
      layers = range(len(hf_names))[index[0]]
      return np.stack([read_block(tensors.lazy(hf_names[i]), spec.shape, layout, index[1:]).astype(dtype)
                       for i in layers])

    _at(state, key).set_value(jax.make_array_from_callback(shape, sharding, read))
  return nnx.merge(graphdef, state)


def _at(state: nnx.State, key: tuple[str, ...]) -> nnx.Variable:
  for part in key:
    state = state[part]
  return state


def _host_array(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_model(model: Decoder, path: str, tokenizer: transformers.PreTrainedTokenizerBase | None = None,
               max_shard_bytes: int = 2 * 1024**3) -> None:
  """Writes an HF directory (config.json, safetensors, tokenizer files) that transformers loads.

  Tensors are gathered one at a time and written one shard file at a time; only process 0 writes.
  """
  cfg = model.cfg
  state = nnx.state(model)
  itemsize = np.dtype(jax.numpy.dtype(cfg.param_dtype)).itemsize
  shards: list[list[tuple[str, Any]]] = [[]]
  size = 0
  for key, spec, hf_names, layout in _entries(cfg):
    for i, hf_name in enumerate(hf_names):
      nbytes = math.prod(spec.shape) * itemsize
      if shards[-1] and size + nbytes > max_shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append((hf_name, (key, i if key[0] == "layers" else None, layout)))
      size += nbytes
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
    cfg.to_hf().save_pretrained(path)
    if tokenizer is not None:
      tokenizer.save_pretrained(path)
  names = ["model.safetensors"] if len(shards) == 1 else [
      f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for file, shard in zip(names, shards):
    tensors = {}
    for hf_name, (key, layer, layout) in shard:
      value = _at(state, key)[...]
      tensors[hf_name] = to_hf(_host_array(value if layer is None else value[layer]), layout)
    if writer:
      safetensors.numpy.save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
  if writer and len(shards) > 1:
    weight_map = {hf_name: file for file, shard in zip(names, shards) for hf_name, _ in shard}
    total = sum(math.prod(hf_shape(spec.shape, layout)) * len(hf_names) * itemsize
                for _, spec, hf_names, layout in _entries(cfg))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
