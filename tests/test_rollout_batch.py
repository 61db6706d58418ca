"""The train batch the rollout hands the learner: its contract, and deterministic fixed-lag runs."""
import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from asympo_jax.run import config as config_lib
from asympo_jax.model import hf_io
from asympo_jax.rollout.generator import RolloutGenerator, copy_params
from asympo_jax.rollout.batch import assemble, make_build_batch
from asympo_jax.rollout import train_batch
from asympo_jax.rollout.sampler import Sampler, Samples
from asympo_jax.rollout.train_batch import TrainBatch
from tests.tiny_checkpoints import make_checkpoint
from tests.train_fixtures import synthetic_batch, tiny_config


@settings(max_examples=30, deadline=None)
@given(data=st.data(), num_prompts=st.integers(1, 3), group=st.integers(1, 3), logprobs=st.booleans())
def test_assemble_follows_the_contract(data, num_prompts, group, logprobs):
  cfg = config_lib.base_config().rollout
  cfg.update(dict(group_size=group, max_prompt_len=5, max_new_tokens=4))
  prompts = [data.draw(st.lists(st.integers(3, 50), min_size=1, max_size=5)) for _ in range(num_prompts)]
  rows = num_prompts * group
  lengths = np.array(data.draw(st.lists(st.integers(1, 4), min_size=rows, max_size=rows)))
  mask = (np.arange(4)[None] < lengths[:, None]).astype(np.int32)
  tokens = np.where(mask > 0, np.arange(rows * 4).reshape(rows, 4) + 100, 0).astype(np.int32)
  lp = -np.random.default_rng(0).uniform(size=(rows, 4)).astype(np.float32) if logprobs else None
  samples = Samples(tokens, mask, np.zeros(rows, np.int32), lp, forward_passes=0)
  batch = assemble(prompts, samples, np.arange(rows), cfg, pad_id=0)
  assert batch.tokens_BxT.shape == batch.input_mask_BxT.shape == batch.loss_mask_BxT.shape == (rows, 9)
  assert (batch.behaviour_logprobs_BxT is not None) == logprobs
  assert batch.policy_version_B is None  # the generator's to set
  for r in range(rows):
    prompt = prompts[r // group]
    real = batch.tokens_BxT[r][batch.input_mask_BxT[r] > 0].tolist()
    assert real == prompt + tokens[r, :lengths[r]].tolist()
    assert batch.input_mask_BxT[r, :5].sum() == len(prompt) and batch.input_mask_BxT[r, 5 - len(prompt)]
    np.testing.assert_array_equal(np.nonzero(batch.loss_mask_BxT[r])[0], 5 + np.arange(lengths[r]))
    if logprobs:
      np.testing.assert_array_equal(batch.behaviour_logprobs_BxT[r, 5:5 + lengths[r]], lp[r, :lengths[r]])
      assert (batch.behaviour_logprobs_BxT[r][batch.loss_mask_BxT[r] == 0] == 0).all()
  assert batch.rewards_B.dtype == np.float32 and batch.loss_mask_BxT.dtype == np.float32
  assert batch.tokens_BxT.dtype == batch.input_mask_BxT.dtype == np.int32
  train_batch.check(batch, 5, 4)


def test_fixed_lag_runs_with_the_same_seed_give_identical_batches(tmp_path):
  make_checkpoint("qwen3_tied", str(tmp_path))
  model = hf_io.load_model(str(tmp_path))
  cfg = config_lib.base_config()
  cfg.rollout.update(dict(prompts_per_step=2, group_size=16, max_prompt_len=16, max_new_tokens=10,
                          temperature=1.3, top_k=4, record_behaviour_logprobs=True, staleness=1))
  sampler = Sampler(model, cfg.rollout, eos_ids=[2], pad_id=0)
  rng = np.random.default_rng(0)
  dataset = [rng.integers(3, 101, n).tolist() for n in (3, 9, 5, 16, 7, 2)]

  def prompts_for_step(step):
    chosen = [dataset[(2 * step + i) % len(dataset)] for i in range(2)]
    return chosen, [len(p) for p in chosen]

  def reward(texts, targets):  # 1 when the response is longer than the prompt
    return np.array([len(t.split()) > n for t, n in zip(texts, targets)], np.float32)

  def run():
    build = make_build_batch(sampler, prompts_for_step, lambda ids: " ".join(map(str, ids)), reward, seed=3)
    params = nnx.state(model)
    batches = []
    with RolloutGenerator(build, params, cfg.rollout, 4, transfer=copy_params) as gen:
      for step in range(4):
        batch, info = gen.get(step)
        batches.append((batch, info["rollout/reward_mean"]))
        params = jax.tree.map(lambda x: x * 1.05, params)  # a stand-in update that changes the samples
        gen.publish(params, step + 1)
    return batches

  first, second = run(), run()
  for (a, ra), (b, rb) in zip(first, second):
    assert ra == rb
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert [int(b.policy_version_B[0]) for b, _ in first] == [0, 0, 1, 2]
  assert first[0][0].behaviour_logprobs_BxT is not None
  assert not np.array_equal(first[0][0].tokens_BxT, first[1][0].tokens_BxT)


def test_check_batch_refuses_what_response_only_scoring_would_get_wrong():
  cfg = tiny_config()
  widths = (cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens)
  good = synthetic_batch(cfg, seed=0)
  train_batch.check(good, *widths)
  prompt_loss = good._replace(loss_mask_BxT=good.loss_mask_BxT.copy())
  prompt_loss.loss_mask_BxT[2, cfg.rollout.max_prompt_len - 1] = 1.0  # the last prompt column
  with pytest.raises(ValueError, match=r"loss_mask is non-zero .* rows \[2\]"):
    train_batch.check(prompt_loss, *widths)
  wide = jax.tree.map(lambda v: np.pad(v, ((0, 0), (1, 0))) if v.ndim == 2 else v, good)
  with pytest.raises(ValueError, match=r"tokens_BxT has shape \(16, 13\), expected \(16, 12\) .* 4 \+ 8"):
    train_batch.check(wide, *widths)
  with pytest.raises(ValueError, match=r"missing fields \['loss_mask_BxT'\]"):
    train_batch.check(good._replace(loss_mask_BxT=None), *widths)


def test_every_field_is_checked_by_its_shape_suffix():
  # check() derives each field's shape from its name: a field without a known suffix would go unchecked.
  assert all(name.endswith(("_BxT", "_B")) for name in TrainBatch._fields)
  cfg = tiny_config()
  good = synthetic_batch(cfg, seed=0, behaviour=True)
  for name, value in good.present().items():
    short = good._replace(**{name: value[:, :-1] if value.ndim == 2 else value[:-1]})
    with pytest.raises(ValueError, match=f"{name} has shape"):
      train_batch.check(short, cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens)
  with pytest.raises(ValueError, match="expected a TrainBatch, got dict"):
    train_batch.check(good._asdict(), cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens)


def test_present_fields_round_trip_and_unknown_ones_are_named():
  batch = synthetic_batch(tiny_config(), seed=0)
  fields = batch.present()
  assert "behaviour_logprobs_BxT" not in fields and "policy_version_B" in fields  # None fields are left out
  back = TrainBatch.from_fields(fields)
  assert back.behaviour_logprobs_BxT is None
  jax.tree.map(np.testing.assert_array_equal, back, batch)
  with pytest.raises(ValueError, match=r"unknown fields \['tokens'\]"):
    TrainBatch.from_fields({**fields, "tokens": fields["tokens_BxT"]})
