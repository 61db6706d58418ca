"""The async generator against a toy "model" whose parameters count the learner's updates."""
import threading
import time
import traceback

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asympo_jax.run import config as config_lib
from asympo_jax.rollout.generator import RolloutError, RolloutGenerator
from asympo_jax.rollout.train_batch import TrainBatch

ROWS = 3


def toy_batch(tokens, seen_version):
  """A batch whose rewards record the parameter version its build saw."""
  zeros = np.zeros(tokens.shape, np.int32)
  return TrainBatch(tokens, zeros, zeros.astype(np.float32), np.full((ROWS,), seen_version, np.float32))


def rollout_cfg(k, mode="fixed_lag"):
  cfg = config_lib.base_config().rollout
  cfg.staleness = k
  cfg.mode = mode
  return cfg


class Toy:
  """build_batch and train step of a model whose parameter is the number of updates it has had."""

  def __init__(self, seed, k, jitter=0.002):
    self.sleeps = np.random.default_rng(seed)
    self.sleep_lock = threading.Lock()
    self.published = 0  # newest version the learner has published
    self.k = k
    self.jitter = jitter
    self.started_early = []  # builds that started before version step - k was out

  def nap(self):
    with self.sleep_lock:
      dt = self.sleeps.uniform(0, self.jitter)
    time.sleep(dt)

  def build(self, params, step):
    if self.published < step - self.k:
      self.started_early.append(step)
    self.nap()
    rng = np.random.default_rng([step, int(params)])
    batch = toy_batch(rng.integers(0, 100, (ROWS, 4)).astype(np.int32), int(params))
    return batch, {"rollout/reward_mean": float(step)}

  def train(self, params, batch):
    self.nap()
    return params + 1


def run(k, mode, num_steps, seed, **kw):
  toy = Toy(seed, k, **kw)
  batches, metrics = [], []
  params = np.array(0)
  with RolloutGenerator(toy.build, params, rollout_cfg(k, mode), num_steps) as gen:
    for step in range(num_steps):
      batch, m = gen.get(step)
      batches.append(batch)
      metrics.append(m)
      params = toy.train(params, batch)
      toy.published = step + 1
      gen.publish(params, step + 1)
  assert not toy.started_early
  return batches, metrics


@settings(max_examples=12, deadline=None)
@given(k=st.sampled_from([0, 1, 3]), num_steps=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_fixed_lag_samples_step_t_with_version_t_minus_k(k, num_steps, seed):
  batches, metrics = run(k, "fixed_lag", num_steps, seed)
  for t, (batch, m) in enumerate(zip(batches, metrics)):
    want = max(0, t - k)
    np.testing.assert_array_equal(batch.rewards_B, want)
    np.testing.assert_array_equal(batch.policy_version_B, want)
    assert m["rollout/lag_max"] == m["rollout/lag_mean"] == t - want
    assert m["rollout/reward_mean"] == t


@settings(max_examples=12, deadline=None)
@given(k=st.sampled_from([0, 1, 3]), num_steps=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_bounded_lag_stays_within_k(k, num_steps, seed):
  batches, metrics = run(k, "bounded", num_steps, seed)
  versions = [int(b.policy_version_B[0]) for b in batches]
  assert versions == sorted(versions)
  for t, (batch, m) in enumerate(zip(batches, metrics)):
    np.testing.assert_array_equal(batch.rewards_B, batch.policy_version_B)
    assert 0 <= m["rollout/lag_max"] <= k
    assert 0 <= t - versions[t] <= k


def test_fixed_lag_is_deterministic_whatever_the_timing():
  a, _ = run(2, "fixed_lag", 6, seed=1, jitter=0.004)
  b, _ = run(2, "fixed_lag", 6, seed=2, jitter=0.0)
  for x, y in zip(a, b):
    assert x.present().keys() == y.present().keys()
    for field, want in x.present().items():
      np.testing.assert_array_equal(getattr(y, field), want)


def failing_build(params, step):
  if step == 2:
    time.sleep(0.05)  # the learner is blocked in get(2) by now
    raise ZeroDivisionError("boom in the generator")
  return toy_batch(np.zeros((ROWS, 2), np.int32), 0), {}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("k", [0, 1])
def test_generator_exception_reaches_blocked_learner_with_traceback(k):
  gen = RolloutGenerator(failing_build, np.array(0), rollout_cfg(k), 10)
  with pytest.raises(RolloutError) as info:
    for step in range(10):
      gen.get(step)
      gen.publish(np.array(step + 1), step + 1)
  assert step == 2
  cause = info.value.__cause__
  assert isinstance(cause, ZeroDivisionError)
  assert "failing_build" in "".join(traceback.format_exception(cause))
  gen.close()
  assert not gen._thread.is_alive()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", ["fixed_lag", "bounded"])
def test_close_mid_run_leaves_no_thread(mode):
  toy = Toy(0, 3, jitter=0.02)
  before = set(threading.enumerate())
  gen = RolloutGenerator(toy.build, np.array(0), rollout_cfg(3, mode), 100)
  gen.get(0)
  gen.publish(np.array(1), 1)
  gen.close()
  assert set(threading.enumerate()) == before


def test_misuse_is_refused():
  toy = Toy(0, 0, jitter=0.0)
  with RolloutGenerator(toy.build, np.array(0), rollout_cfg(0), 5) as gen:
    with pytest.raises(ValueError, match="expected step 0"):
      gen.get(1)
    gen.get(0)
    with pytest.raises(ValueError, match="needs parameter version 1"):
      gen.get(1)
    with pytest.raises(ValueError, match="consecutive"):
      gen.publish(np.array(2), 2)


@pytest.mark.parametrize("key,value,match", [("staleness", -1, "rollout.staleness"),
                                             ("mode", "eager", "rollout.mode")])
def test_bad_config_names_the_key(key, value, match):
  cfg = rollout_cfg(1)
  cfg[key] = value
  with pytest.raises(config_lib.ConfigError, match=match):
    RolloutGenerator(Toy(0, 0).build, np.array(0), cfg, 3)
