"""Supervised batches for the warm start: a gold response per prompt, in a TrainBatch (train_batch.py).

The warm start trains with the `nll` objective through the same trainer loop and train step as RL; only the
batch builder differs. Instead of sampling, each prompt's response is its gold target followed by EOS: by
`warm_start.target` (`TARGETS`), the gold answer alone in the answer convention the rewards read
(`GOLD_FORMAT`), or the problem's worked solution (which must end in that convention too).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from asympo_jax.rollout.generator import BuildFn, Params
from asympo_jax.rollout.batch import PromptsFn, assemble
from asympo_jax.rollout.sampler import Samples
from asympo_jax.rollout.train_batch import TrainBatch

GOLD_FORMAT = " \\boxed{{{answer}}}"


def gold_response(problem: Any) -> str:
  return GOLD_FORMAT.format(answer=problem.answer)


def worked_response(problem: Any) -> str:
  if not problem.solution:
    raise ValueError(f"warm_start.target=solution, but problem {problem.id!r} ({problem.source}) has no worked "
                     "solution; use a dataset whose problems carry one, or warm_start.target=answer")
  return " " + problem.solution


# warm_start.target -> the response text of a problem
TARGETS: dict[str, Callable[[Any], str]] = {"answer": gold_response, "solution": worked_response}


def make_build_batch(prompts_for_step: PromptsFn, encode: Callable[[str], Sequence[int]],
                     cfg_rollout: ml_collections.ConfigDict, eos_id: int, pad_id: int,
                     target: str = "answer") -> BuildFn:
  """`build_batch(params, step)` for the generator: params are ignored, every row is a gold response.

  `encode` maps response text to token ids without special tokens; rows are repeated group_size times;
  `target` is a key of TARGETS.
  """
  response_of = TARGETS[target]
  group, width = cfg_rollout.group_size, cfg_rollout.max_new_tokens

  def build_batch(params: Params, step: int) -> tuple[TrainBatch, dict[str, float]]:
    del params
    prompts, problems = prompts_for_step(step)
    responses = [list(encode(response_of(p))) + [eos_id] for p in problems]
    too_long = [response_of(p) for p, r in zip(problems, responses) if len(r) > width]
    if too_long:
      raise ValueError(f"gold responses longer than rollout.max_new_tokens={width} tokens: {too_long[:3]}")
    tokens_BxN = np.full((len(prompts) * group, width), pad_id, np.int32)
    mask_BxN = np.zeros((len(prompts) * group, width), np.int32)
    for p, response in enumerate(responses):
      tokens_BxN[p * group:(p + 1) * group, :len(response)] = response
      mask_BxN[p * group:(p + 1) * group, :len(response)] = 1
    samples = Samples(tokens_BxN, mask_BxN, np.zeros(len(tokens_BxN), np.int32), None, forward_passes=0)
    lengths = mask_BxN.sum(axis=1)
    return (assemble(prompts, samples, np.ones(len(tokens_BxN), np.float32), cfg_rollout, pad_id),
            {"rollout/response_len_mean": float(lengths.mean())})

  return build_batch
