"""The train batch: what the rollout hands the learner, one row per sampled response (docs/design.md §4).

With P prompts per step (per process), G samples per prompt, Tp = rollout.max_prompt_len and
N = rollout.max_new_tokens, a batch has B = P * G rows and T = Tp + N columns. Row p*G + g is prompt p,
left-padded to Tp columns, then its sample g, right-padded to N columns. Fields (each name ends in its shape):

- `tokens_BxT` int32: token ids; padding holds the pad id.
- `input_mask_BxT` int32: 1 on real tokens (prompt and response, EOS included), 0 on padding. Positions are
  the count of real tokens before each column.
- `loss_mask_BxT` float32: 1 on response tokens, 0 elsewhere, so always 0 on the first Tp (prompt) columns:
  the train step scores only the last N columns.
- `rewards_B` float32: the reward of each row's response.
- `policy_version_B` int32, optional: the parameter version (the number of learner updates) the row was
  sampled with. The rollout generator sets it on every batch; a builder leaves it None.
- `behaviour_logprobs_BxT` float32, optional: the sampling policy's log-prob of each response token
  (untempered and unfiltered, see rollout/sampler.py), 0 where loss_mask is 0. Present exactly when
  rollout.record_behaviour_logprobs is set.

A NamedTuple is a pytree as it is, and an optional field is None when absent, which pytrees treat as empty:
`jax.tree.map`, `jax.device_put`, sharding and checkpoints pass over it, so code that moves a batch stays
generic over its fields. A new field is one line here, named with its shape suffix (`check` reads it).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

Array = Any  # np.ndarray on the host, jax.Array on devices

# Shape suffix -> the shape it names, in rows and columns.
SHAPES = {"_BxT": lambda rows, cols: (rows, cols), "_B": lambda rows, cols: (rows,)}


class TrainBatch(NamedTuple):
  """One train batch; see the module docstring for the contract."""
  tokens_BxT: Array
  input_mask_BxT: Array
  loss_mask_BxT: Array
  rewards_B: Array
  policy_version_B: Array | None = None
  behaviour_logprobs_BxT: Array | None = None

  def present(self) -> dict[str, Array]:
    """The fields that are not None, by name (the form checkpoints store)."""
    return {name: value for name, value in self._asdict().items() if value is not None}

  @classmethod
  def from_fields(cls, fields: Mapping[str, Array]) -> "TrainBatch":
    """The inverse of `present`."""
    unknown = sorted(set(fields) - set(cls._fields))
    if unknown:
      raise ValueError(f"train batch: unknown fields {unknown}; the fields are {list(cls._fields)}")
    return cls(**fields)


# The dtype of every field, as the rollout builds it (rollout/batch.py) and the generator stamps its versions.
DTYPES = {"tokens_BxT": np.int32, "input_mask_BxT": np.int32, "loss_mask_BxT": np.float32, "rewards_B": np.float32,
          "policy_version_B": np.int32, "behaviour_logprobs_BxT": np.float32}


def abstract(rows: int, cols: int, behaviour_logprobs: bool, sharding: Any = None) -> TrainBatch:
  """The shapes of a batch the learner gets from the generator, as jax.ShapeDtypeStructs (for compiling the
  train step without data): every field but the behaviour log-probs, which come when they are recorded."""
  names = [n for n in TrainBatch._fields if behaviour_logprobs or n != "behaviour_logprobs_BxT"]
  return TrainBatch(**{n: jax.ShapeDtypeStruct(SHAPES[shape_suffix(n)](rows, cols), DTYPES[n], sharding=sharding)
                       for n in names})


REQUIRED = tuple(name for name in TrainBatch._fields if name not in TrainBatch._field_defaults)


def shape_suffix(name: str) -> str:
  """The suffix of SHAPES that field `name` ends in."""
  return next(s for s in SHAPES if name.endswith(s))


def num_rows(batch: TrainBatch) -> int:
  return int(np.shape(batch.tokens_BxT)[0])


def check(batch: TrainBatch, prompt_len: int, response_len: int) -> None:
  """Raises ValueError unless `batch` keeps the contract the train step relies on: the required fields,
  every field's shape as its name says with T = prompt_len + response_len, and loss_mask 0 on the first
  prompt_len columns. The step scores only the last response_len columns, so a loss token before them would
  silently drop out of the loss."""
  if not isinstance(batch, TrainBatch):
    raise ValueError(f"train batch: expected a TrainBatch, got {type(batch).__name__}")
  missing = [name for name in REQUIRED if getattr(batch, name) is None]
  if missing:
    raise ValueError(f"train batch: missing fields {missing}")
  B, T = num_rows(batch), prompt_len + response_len
  for name, value in batch.present().items():
    want = SHAPES[shape_suffix(name)](B, T)
    if np.shape(value) != want:
      raise ValueError(f"train batch: {name} has shape {np.shape(value)}, expected {want} (T = "
                       f"rollout.max_prompt_len + rollout.max_new_tokens = {prompt_len} + {response_len})")
  bad_rows = np.flatnonzero(np.any(np.asarray(batch.loss_mask_BxT)[:, :prompt_len] != 0, axis=1))
  if bad_rows.size:
    raise ValueError(f"train batch: loss_mask is non-zero in the first rollout.max_prompt_len={prompt_len} "
                     f"(prompt) columns of rows {bad_rows[:5].tolist()}; responses must sit in the last "
                     f"rollout.max_new_tokens={response_len} columns")
