"""Text in, text out over the sampler: questions -> prompt template -> token ids -> generate -> decoded outputs.

This is the `evaluation.Complete` that eval.py and the trainer's periodic eval hand to
`evaluation.run_benchmark`. Batches always hold `batch_size` prompts (the last one is filled up with repeats
whose outputs are dropped), so one benchmark compiles a single shape per prompt-length bucket. With a `mesh`
the batch is split over its data x fsdp shards, and `batch_size` is eval.batch_size rounded up to a multiple
of them. Every prompt's random keys depend on its index in the benchmark only, so outputs do not depend on
the batch size.
Prompts longer than rollout.max_prompt_len keep their last tokens (the instruction and the question's end)
and are counted in `truncated` (of the latest call).
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.data import prompts
from asympo_jax.common import sharding
from asympo_jax.model.decoder import Decoder
from asympo_jax.rollout.engine import Engine, make_sampler
from asympo_jax.rollout.sampler import Sampler


def eos_ids(tokenizer: Any, model_eos: int | Sequence[int] | None = None) -> list[int]:
  """The tokenizer's EOS and the model config's EOS ids (chat models often end turns with another token)."""
  ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
  ids |= set([model_eos] if isinstance(model_eos, int) else model_eos or [])
  if not ids:
    raise ValueError("the tokenizer has no eos_token_id and the model config names none: generation could "
                     "not stop")
  return sorted(ids)


def batch_size(cfg: ml_collections.ConfigDict, mesh: Mesh | None) -> int:
  """Prompts per generate call: eval.batch_size rounded up to a multiple of the mesh's data x fsdp shards."""
  shards = sharding.row_shards(mesh)
  return -(-cfg.eval.batch_size // shards) * shards


def sampler_config(cfg: ml_collections.ConfigDict, mesh: Mesh | None, samples: int,
                   greedy: bool) -> ml_collections.ConfigDict:
  """The rollout section of the sampler that draws `samples` completions per prompt (greedy, or at
  eval.temperature) for a batch of `batch_size` prompts: the run's rollout section otherwise (its engine and
  slots included), so that the plan can compile the same program."""
  rollout = ml_collections.ConfigDict(cfg.rollout.to_dict())
  rollout.group_size = samples
  rollout.prompts_per_step = batch_size(cfg, mesh)
  rollout.temperature = 0.0 if greedy else float(cfg.eval.temperature)
  rollout.record_behaviour_logprobs = False
  return rollout


class Completer:
  """Greedy and sampled completions of questions by one model; `state` may be swapped between calls."""

  def __init__(self, model: Decoder, tokenizer: Any, cfg: ml_collections.ConfigDict, seed: int = 0,
               mesh: Mesh | None = None) -> None:
    self.model, self.tokenizer, self.cfg, self.seed, self.mesh = model, tokenizer, cfg, seed, mesh
    self.state = nnx.state(model)
    self.batch_size = batch_size(cfg, mesh)
    self.eos = eos_ids(tokenizer, model.cfg.eos_token_id)
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]
    self.truncated = 0
    self._samplers: dict[tuple[int, bool], Sampler | Engine] = {}

  def _sampler(self, samples: int, greedy: bool) -> Sampler | Engine:
    if (samples, greedy) not in self._samplers:
      rollout = sampler_config(self.cfg, self.mesh, samples, greedy)
      self._samplers[samples, greedy] = make_sampler(self.model, rollout, self.eos, self.pad_id, mesh=self.mesh)
    return self._samplers[samples, greedy]

  def __call__(self, questions: Sequence[str], samples: int, greedy: bool) -> list[list[str]]:
    """`samples` completions of each question (decoded without special tokens)."""
    limit = self.cfg.rollout.max_prompt_len
    ids = prompts.encode(self.cfg.data.template, questions, self.tokenizer)
    self.truncated = sum(len(p) > limit for p in ids)
    ids = [p[-limit:] for p in ids]
    sampler = self._sampler(samples, greedy)
    size = self.batch_size
    outputs: list[list[str]] = []
    for start in range(0, len(ids), size):
      index = list(range(start, min(start + size, len(ids))))
      index += [index[-1]] * (size - len(index))  # a full batch: one compiled shape
      out = sampler.generate(self.state, [ids[i] for i in index], seed=self.seed, step=0, prompt_ids=index)
      rows = [self.tokenizer.decode(t[m.astype(bool)].tolist(), skip_special_tokens=True)
              for t, m in zip(np.asarray(out.tokens_BxN), np.asarray(out.mask_BxN))]
      real = min(size, len(ids) - start)
      outputs += [rows[p * samples:(p + 1) * samples] for p in range(real)]
    return outputs
