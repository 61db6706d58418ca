"""Warm-start batches: gold responses laid out as a train batch."""
import types

import numpy as np
import pytest

from asympo_jax.rollout import supervised
from asympo_jax.run.config import base_config

PAD, EOS = 0, 9


def build(max_new_tokens=6, group=2):
  cfg = base_config().rollout
  cfg.group_size, cfg.max_prompt_len, cfg.max_new_tokens = group, 5, max_new_tokens
  problems = [types.SimpleNamespace(answer="12"), types.SimpleNamespace(answer="7")]
  prompts = [[3, 4], [5, 6, 7]]
  encode = lambda text: [ord(c) % 50 + 10 for c in text if c.isdigit()]  # one id per digit
  return supervised.make_build_batch(lambda step: (prompts, problems), encode, cfg, EOS, PAD)


def test_gold_rows_layout():
  batch, info = build()(None, step=3)
  assert supervised.gold_response(types.SimpleNamespace(answer="12")) == " \\boxed{12}"
  d1, d2, d7 = (ord(c) % 50 + 10 for c in "127")
  expected_tokens = np.array([[0, 0, 0, 3, 4, d1, d2, EOS, 0, 0, 0]] * 2 + [[0, 0, 5, 6, 7, d7, EOS, 0, 0, 0, 0]] * 2)
  np.testing.assert_array_equal(batch.tokens_BxT, expected_tokens)
  np.testing.assert_array_equal(batch.loss_mask_BxT, (np.arange(11) >= 5) & (expected_tokens != 0))
  np.testing.assert_array_equal(batch.input_mask_BxT, expected_tokens != 0)
  np.testing.assert_array_equal(batch.rewards_B, np.ones(4))
  assert batch.behaviour_logprobs_BxT is None
  assert info["rollout/response_len_mean"] == 2.5


def test_too_long_gold_answers_are_refused():
  with pytest.raises(ValueError, match="max_new_tokens=2"):
    build(max_new_tokens=2)(None, step=0)
