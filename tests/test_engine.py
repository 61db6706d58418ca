"""The continuous-batching engine against the static sampler: the same samples whatever the slot count and the
mesh, and compiled memory that does not depend on the number of rows."""

import numpy as np
import pytest
from flax import nnx

from asympo_jax.common.sharding import make_mesh
from asympo_jax.model import scratch
from asympo_jax.model.decoder import create_model
from asympo_jax.rollout.engine import Engine, make_sampler, slot_bytes, slot_count
from asympo_jax.rollout.sampler import Sampler, program_bytes
from asympo_jax.common.checks import ConfigError
from asympo_jax.run import config as config_lib
from asympo_jax.run import validation

P, G, NEW = 8, 2, 40
SAMPLING = {"greedy": dict(temperature=0.0), "top_p": dict(temperature=1.0, top_p=0.9)}


@pytest.fixture(scope="module")
def tiny():
  return create_model(scratch.model_config("tiny"), seed=0)


def rollout_cfg(sampling, **overrides):
  cfg = config_lib.base_config().rollout
  cfg.update(dict(prompts_per_step=P, group_size=G, max_prompt_len=32, max_new_tokens=NEW,
                  record_behaviour_logprobs=True, **SAMPLING[sampling]), **overrides)
  return cfg


def prompts_of(seed=0, count=P):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, 512, rng.integers(3, 30)).tolist() for _ in range(count)]


def long_tail_eos(model, sampling, prompts):
  """EOS ids that end the rows at spread-out lengths: under greedy choice, a token each free-running row emits
  at a different step; else 1/16 of the vocabulary, so lengths are about geometric with mean 16."""
  if sampling != "greedy":
    return list(range(3, 3 + 32))
  free = Sampler(model, rollout_cfg(sampling), eos_ids=[], pad_id=0).generate(nnx.state(model), prompts, seed=0,
                                                                              step=0)
  return sorted({int(free.tokens_BxN[row, (5 * row) % NEW]) for row in range(0, P * G, 3)})


# About a minute each on 2 cores: the default run keeps one case per mesh shape but (8, 1, 1).
CASES = [("greedy", None), ("top_p", None), ("top_p", (2, 2, 2)),
         pytest.param("greedy", (2, 2, 2), marks=pytest.mark.slow),
         pytest.param("greedy", (8, 1, 1), marks=pytest.mark.slow),
         pytest.param("top_p", (8, 1, 1), marks=pytest.mark.slow)]


@pytest.mark.parametrize("sampling, mesh_shape", CASES)
def test_engine_returns_the_static_samplers_samples(tiny, sampling, mesh_shape):
  mesh = None if mesh_shape is None else make_mesh(config_lib.ml_collections.ConfigDict(
      dict(zip(("data", "fsdp", "tensor"), mesh_shape))))
  model = tiny if mesh is None else create_model(tiny.cfg, seed=0, mesh=mesh)
  state = nnx.state(model)
  prompts = prompts_of()
  eos = long_tail_eos(tiny, sampling, prompts)
  want = Sampler(model, rollout_cfg(sampling), eos, pad_id=0, mesh=mesh).generate(state, prompts, seed=3, step=7)
  lengths = want.mask_BxN.sum(1)
  assert len(set(lengths.tolist())) >= 4 and lengths.min() < NEW  # long-tailed, not uniform
  rows_per_shard = P * G // (1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"])
  for slots in (1, 3, rows_per_shard):
    got = Engine(model, rollout_cfg(sampling, engine="continuous", slots=slots), eos, pad_id=0,
                 mesh=mesh).generate(state, prompts, seed=3, step=7)
    np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN, err_msg=f"slots={slots}")
    np.testing.assert_array_equal(got.mask_BxN, want.mask_BxN)
    np.testing.assert_array_equal(got.finish_B, want.finish_B)
    # Equal up to float32 rounding: XLA:CPU's matmuls round a row differently with other batch sizes.
    np.testing.assert_allclose(got.logprobs_BxN, want.logprobs_BxN, rtol=0, atol=1e-5)
    assert 0 < got.stats["rollout/slot_occupancy"] <= 1
    assert slots >= rows_per_shard or 0 < got.stats["rollout/prefill_share"] < 1  # one static wave: no admit


def test_engine_compiled_memory_does_not_grow_with_the_rows(tiny):
  """At a fixed slot count the engine's programs see no row-sized array; the static sampler's grow."""
  state = nnx.state(tiny)
  memory = {}
  for rows in (P, 4 * P):
    prompts = prompts_of(count=rows)
    cfg = rollout_cfg("top_p", prompts_per_step=rows, group_size=1, engine="continuous", slots=4)
    memory["engine", rows] = Engine(tiny, cfg, [3], pad_id=0).compiled_bytes(state, prompts)
    memory["static", rows] = program_bytes(Sampler(tiny, cfg, [3], pad_id=0).lower(state))
  assert memory["engine", 4 * P] == memory["engine", P]
  cache_row = 4 * 2 * 2 * 64 * 96 * 4  # tiny's KV cache of one row: 32 + 40 positions, in chunks of 32
  assert memory["static", 4 * P] - memory["static", P] >= 3 * P * cache_row


def test_an_engine_that_holds_every_row_lowers_the_static_samplers_program(tiny):
  """What `generate` runs for a batch that fits in the slots (one static wave) is what the plan compiles."""
  state = nnx.state(tiny)
  cfg = rollout_cfg("top_p", engine="continuous", slots=P * G)
  (lowered,) = Engine(tiny, cfg, [3], pad_id=0).lower(state)
  assert lowered.as_text() == Sampler(tiny, cfg, [3], pad_id=0).lower(state).as_text()
  assert len(Engine(tiny, rollout_cfg("top_p", engine="continuous", slots=P * G - 1), [3], pad_id=0).lower(state)) == 2


def test_slot_count_follows_a_kv_memory_budget(tiny):
  cfg = rollout_cfg("greedy", engine="continuous", slots=0, kv_memory_mb=10.0)
  per_slot = slot_bytes(tiny.cfg, 32, NEW)
  # tiny: 4 layers x (k + v) x 2 KV heads x 64 x 96 slots (32 + 40 rounded up to chunks of 32) x 4 B
  assert per_slot == 4 * 2 * 2 * 64 * 96 * 4
  assert slot_count(tiny.cfg, cfg) == 10 * 2**20 // per_slot
  assert isinstance(make_sampler(tiny, cfg, [3], 0), Engine)
  assert isinstance(make_sampler(tiny, rollout_cfg("greedy"), [3], 0), Sampler)


@pytest.mark.parametrize("overrides, match", [
    (dict(engine="paged"), "rollout.engine"),
    (dict(slots=0, kv_memory_mb=0.0), "give exactly one"),
    (dict(slots=8, kv_memory_mb=100.0), "give exactly one"),
    (dict(slots=-1), "rollout.slots"),
])
def test_engine_keys_are_validated(overrides, match):
  cfg = config_lib.base_config()
  cfg.rollout.update(overrides)
  with pytest.raises(ConfigError, match=match):
    validation.validate(cfg)
