"""From prompts to the train batch (train_batch.py, docs/design.md §4): sample, decode, score, assemble.

`make_build_batch(...)` returns the `build_batch(params, step) -> (batch, info)` that the rollout generator
(generator.py) calls on its thread, so decoding and reward scoring happen there, off the learner's critical
path (except at staleness 0, where the learner waits for the batch anyway).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from asympo_jax.rollout import token_choice as sampling
from asympo_jax.rollout.generator import BuildFn, Params
from asympo_jax.rollout.engine import Engine
from asympo_jax.rollout.sampler import Sampler, Samples
from asympo_jax.rollout.train_batch import TrainBatch

# step -> (prompt token ids, one target per prompt for the reward), P prompts
PromptsFn = Callable[[int], tuple[Sequence[Sequence[int]], Sequence[Any]]]
# (response texts, targets), B of each -> float rewards [B]
RewardFn = Callable[[Sequence[str], Sequence[Any]], np.ndarray]


def assemble(prompts: Sequence[Sequence[int]], samples: Samples, rewards_B: np.ndarray,
             cfg_rollout: ml_collections.ConfigDict, pad_id: int) -> TrainBatch:
  """The train batch of `prompts` and their `samples` (policy_version left to the generator)."""
  group, width_p = cfg_rollout.group_size, cfg_rollout.max_prompt_len
  rows = len(prompts) * group
  prompt_BxP = np.full((rows, width_p), pad_id, np.int32)
  prompt_mask_BxP = np.zeros((rows, width_p), np.int32)
  for p, prompt in enumerate(prompts):
    prompt_BxP[p * group:(p + 1) * group, width_p - len(prompt):] = prompt
    prompt_mask_BxP[p * group:(p + 1) * group, width_p - len(prompt):] = 1
  zeros_BxP = np.zeros((rows, width_p), np.float32)
  response_mask = samples.mask_BxN.astype(np.float32)
  behaviour_BxT = None
  if samples.logprobs_BxN is not None:
    behaviour_BxT = np.concatenate([zeros_BxP, samples.logprobs_BxN * response_mask], axis=1)
  return TrainBatch(tokens_BxT=np.concatenate([prompt_BxP, samples.tokens_BxN], axis=1),
                    input_mask_BxT=np.concatenate([prompt_mask_BxP, samples.mask_BxN], axis=1),
                    loss_mask_BxT=np.concatenate([zeros_BxP, response_mask], axis=1),
                    rewards_B=np.asarray(rewards_B, np.float32).reshape(rows),
                    behaviour_logprobs_BxT=behaviour_BxT)


def make_build_batch(sampler: Sampler | Engine, prompts_for_step: PromptsFn, decode: Callable[[Sequence[int]], str],
                     reward_fn: RewardFn, seed: int,
                     prompt_ids_for_step: Callable[[int], Sequence[int]] | None = None) -> BuildFn:
  """`decode` turns one response's token ids (EOS included) into the text the reward reads;
  `prompt_ids_for_step` gives the prompts' ids in the random keys (default 0..P-1; give global ids when
  each process samples a slice of the step's prompts)."""
  cfg = sampler.cfg

  def build_batch(params: Params, step: int) -> tuple[TrainBatch, dict[str, float]]:
    prompts, targets = prompts_for_step(step)
    ids = None if prompt_ids_for_step is None else prompt_ids_for_step(step)
    samples = sampler.generate(params, prompts, seed=seed, step=step, prompt_ids=ids)
    texts = [decode(t[m > 0].tolist()) for t, m in zip(samples.tokens_BxN, samples.mask_BxN)]
    rewards = np.asarray(reward_fn(texts, [t for t in targets for _ in range(cfg.group_size)]), np.float32)
    lengths = samples.mask_BxN.sum(1)
    info = {"rollout/reward_mean": float(rewards.mean()), "rollout/response_len_mean": float(lengths.mean()),
            "rollout/response_len_max": float(lengths.max()), "rollout/tokens": float(lengths.sum())}
    info.update({f"rollout/finish_{name}": float((samples.finish_B == code).mean())
                 for code, name in enumerate(sampling.FINISH_REASONS)})
    info.update(samples.stats or {})
    return assemble(prompts, samples, rewards, cfg, sampler.spec.pad_id), info

  return build_batch
