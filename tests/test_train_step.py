"""The train step: sharded equals one device, micro-batches equal one batch, the non-finite guard."""
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.common import cpu
from asympo_jax.common import sharding
from asympo_jax.model import decoder as model_lib
from asympo_jax.train import objectives
from asympo_jax.train import optim
from asympo_jax.train import step as train_step
from tests.train_fixtures import synthetic_batch, tiny_config, tiny_model

TOL = dict(rtol=1e-5, atol=1e-5)


def _mesh(shape):
  n = int(np.prod(shape))
  return Mesh(np.array(jax.devices()[:n]).reshape(shape), ("data", "fsdp", "tensor"))


def _sgd(schedule_lr: float = 1.0):
  """Plain SGD in the guarded form the step expects: new params = params - lr * grads."""
  return optax.apply_if_finite(optax.sgd(optax.constant_schedule(schedule_lr)), 10), \
      optax.constant_schedule(schedule_lr)


def _assert_trees_close(a, b, **tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tol)


@functools.lru_cache(maxsize=None)
def _step_on_mesh(shape):
  """The step with SGD (lr 1) on a mesh: (metrics, params before, gradients, new params, shardings, state)."""
  cfg = tiny_config(**{"train.micro_batches": 2, "objective.name": "asympo"})
  mesh = _mesh(shape)
  graphdef, params, rest = nnx.split(tiny_model(mesh), nnx.Param, ...)
  tx, schedule = _sgd()
  state, shardings = train_step.init_state(params, tx, mesh)
  # Read a device copy: on CPU a host read of an array pins its buffer and blocks its donation.
  before = jax.device_get(jax.tree.map(jnp.copy, state.params))
  step = train_step.make_train_step(train_step.TrainSpec.from_config(cfg), graphdef, rest, tx, schedule, mesh,
                                    shardings)
  new_state, metrics = step(state, jax.device_put(synthetic_batch(cfg, seed=1), train_step.batch_sharding(mesh)))
  after = jax.device_get(new_state.params)
  grads = jax.tree.map(lambda b, a: b - a, before, after)
  return jax.device_get(metrics), grads, after, new_state, shardings, state


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_equals_one_device(shape):
  one_metrics, one_grads, one_params = _step_on_mesh((1, 1, 1))[:3]
  metrics, grads, params, new_state, shardings, old_state = _step_on_mesh(shape)
  np.testing.assert_allclose(metrics["loss"], one_metrics["loss"], **TOL)
  _assert_trees_close(metrics, one_metrics, **TOL)
  _assert_trees_close(grads, one_grads, **TOL)
  _assert_trees_close(params, one_params, **TOL)
  assert float(one_metrics["optim/grad_norm"]) > 1e-3
  # The new params keep the rules' shardings, and the old state was donated.
  for p, s in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(shardings.params)):
    assert p.sharding.is_equivalent_to(s, p.ndim)
  assert all(x.is_deleted() for x in jax.tree.leaves(old_state.params))


def test_step_with_rope_inputs_equals_rope_computed_in_the_step(monkeypatch):
  # With cpu.ROPE_AS_INPUT the step gets the RoPE cos and sin as inputs; without, the model computes them
  # inside the step: the same batch must give the same update (cos and sin swapped fail this).
  metrics, grads = _step_on_mesh((1, 1, 1))[:2]
  monkeypatch.setattr(cpu, "ROPE_AS_INPUT", False)
  graphdef, params, rest = nnx.split(tiny_model(), nnx.Param, ...)
  assert model_lib.rope_inputs(graphdef, np.ones((2, 3), np.int32), params, rest) is None
  inside_metrics, inside_grads = _step_on_mesh.__wrapped__((1, 1, 1))[:2]
  np.testing.assert_allclose(metrics["loss"], inside_metrics["loss"], **TOL)
  _assert_trees_close(grads, inside_grads, **TOL)
  assert float(metrics["optim/grad_norm"]) > 1e-3


# Every objective of the registry, each with options folded in so their paths are covered too.
CASES = {name: {"objective.name": name} for name in sorted(objectives.OBJECTIVES)}
CASES["grpo"].update({"objective.tis_cap": 2.0, "objective.tis_level": "seq", "objective.dual_clip": 3.0,
                      "objective.icepop": True, "objective.icepop_beta": 2.0})
CASES["dr_grpo"].update({"objective.icepop": True, "objective.icepop_beta": 2.0})
CASES["decoupled_ppo"].update({"objective.decoupled_cap": 3.0})
CASES["gspo"].update({"objective.gspo_eps_low": 0.1, "objective.gspo_eps_high": 0.1})
CASES["asympo"].update({"objective.kl_coef": 0.1, "objective.entropy_coef": 0.01})
CASES["spo"].update({"objective.split_grad_norms": True})
CASES["gpg"].update({"train.logprob_chunk": 3})
CASES["naive"].update({"advantage.std_normalize": False})


@pytest.mark.parametrize("case", sorted(CASES))
def test_four_micro_batches_on_eight_shards_equal_one_batch_on_one_device(case):
  # Micro-batch exactness and sharding in one comparison per objective (each side one compile; plain asympo's
  # sharding alone is checked on three meshes above).
  overrides = {"rollout.record_behaviour_logprobs": True, **CASES[case]}
  cfg1 = tiny_config(**overrides, **{"train.micro_batches": 1})
  cfg4 = tiny_config(**overrides, **{"train.micro_batches": 4})
  objectives.validate(cfg4)
  tx, _ = optim.make_optimizer(cfg1.optim, total_steps=10)
  batch = synthetic_batch(cfg1, seed=2, behaviour=True)

  def run(cfg, mesh):
    graphdef, params, rest = nnx.split(tiny_model(mesh), nnx.Param, ...)
    ref = nnx.split(tiny_model(mesh, seed=1), nnx.Param, ...)[1] if cfg.objective.kl_coef > 0 else None
    spec = train_step.TrainSpec.from_config(cfg)
    pin = None if mesh is None else sharding.state_shardings(params, mesh)

    @jax.jit
    def loss_grads_update(params, batch, ref):
      loss, grads, metrics = train_step.loss_and_grads(spec, graphdef, rest, params, batch, ref, grad_shardings=pin)
      return loss, grads, metrics, tx.update(grads, tx.init(params), params)[0]

    rows = None if mesh is None else train_step.batch_sharding(mesh)
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
      return jax.device_get(loss_grads_update(params, jax.device_put(batch, rows), ref))

  one, four = run(cfg1, None), run(cfg4, _mesh((2, 2, 2)))
  tol = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(four[0], one[0], **tol)
  _assert_trees_close(four[1], one[1], **tol)  # gradients
  _assert_trees_close(four[2], one[2], **tol)  # metrics
  _assert_trees_close(four[3], one[3], **TOL)  # AdamW updates
  assert sum(np.abs(g).sum() for g in jax.tree.leaves(one[1])) > 0


def test_the_spec_resolves_the_objective():
  # dr_grpo's length follows rollout.max_new_tokens, and its advantages are raw whatever advantage.std_normalize.
  spec = train_step.TrainSpec.from_config(tiny_config(**{"objective.name": "dr_grpo"}))
  assert (spec.objective.dr_grpo_max_tokens, spec.std_normalize) == (8, False)
  spec = train_step.TrainSpec.from_config(tiny_config(**{"objective.name": "grpo"}))
  assert (spec.objective.dr_grpo_max_tokens, spec.std_normalize) == (8, True)


@pytest.mark.parametrize("case", ["asympo", "grpo"])
def test_scoring_only_the_response_columns_changes_nothing(case):
  # The step scores the last rollout.max_new_tokens columns only; scoring every column (max_new_tokens = T - 1)
  # must give the same loss, gradients and metrics, entropy bonus and KL included, since the loss masks the
  # prompt columns out.
  overrides = {"rollout.record_behaviour_logprobs": True, **CASES[case]}
  cfg = tiny_config(**overrides)
  T = cfg.rollout.max_prompt_len + cfg.rollout.max_new_tokens
  everything = tiny_config(**overrides, **{"rollout.max_new_tokens": T - 1})
  graphdef, params, rest = nnx.split(tiny_model(), nnx.Param, ...)
  ref = nnx.split(tiny_model(seed=1), nnx.Param, ...)[1] if cfg.objective.kl_coef > 0 else None
  batch = synthetic_batch(cfg, seed=5, behaviour=True)
  run = lambda c: jax.jit(lambda p: train_step.loss_and_grads(train_step.TrainSpec.from_config(c), graphdef, rest,
                                                              p, batch, ref))(params)
  (loss, grads, metrics), (want_loss, want_grads, want_metrics) = run(cfg), run(everything)
  tol = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, want_loss, **tol)
  _assert_trees_close(grads, want_grads, **tol)
  _assert_trees_close(metrics, want_metrics, **tol)
  assert sum(np.abs(g).sum() for g in jax.tree.leaves(grads)) > 0


def test_nonfinite_gradient_skips_the_update():
  cfg = tiny_config()
  batch = synthetic_batch(cfg, seed=3)
  batch.rewards_B[0] = np.nan  # NaN advantages for the first group: NaN loss and gradients
  mesh = _mesh((2, 1, 1))
  graphdef, params, rest = nnx.split(tiny_model(mesh), nnx.Param, ...)
  before = jax.device_get(params)
  tx, schedule = optim.make_optimizer(cfg.optim, total_steps=10)
  state, shardings = train_step.init_state(params, tx, mesh)
  step = train_step.make_train_step(train_step.TrainSpec.from_config(cfg), graphdef, rest, tx, schedule, mesh,
                                    shardings)
  state, metrics = step(state, jax.device_put(batch, train_step.batch_sharding(mesh)))
  assert not np.isfinite(metrics["loss"])
  assert float(metrics["optim/skipped_updates"]) == 1
  _assert_trees_close(state.params, before, rtol=0, atol=0)


def test_split_grad_norms_are_the_norms_of_each_side():
  # For spo the positive part's gradient is the loss gradient with negative responses masked out
  # (N counts responses, so masking changes no denominator), and the same for the negative part.
  cfg = tiny_config(**{"objective.name": "spo", "objective.split_grad_norms": True, "train.micro_batches": 2})
  spec = train_step.TrainSpec.from_config(cfg)
  plain = train_step.TrainSpec.from_config(tiny_config(**{"objective.name": "spo"}))
  graphdef, params, rest = nnx.split(tiny_model(), nnx.Param, ...)
  batch = synthetic_batch(cfg, seed=4)
  adv = np.asarray(objectives.group_advantages(batch.rewards_B, cfg.rollout.group_size, True))
  assert (adv > 0).any() and (adv < 0).any()
  masked = [batch._replace(loss_mask_BxT=batch.loss_mask_BxT * keep[:, None]) for keep in (adv > 0, adv < 0)]

  @jax.jit
  def run(params):
    _, _, metrics = train_step.loss_and_grads(spec, graphdef, rest, params, batch)
    sides = [optax.tree.norm(train_step.loss_and_grads(plain, graphdef, rest, params, b)[1]) for b in masked]
    return metrics, sides

  metrics, (pos, neg) = run(params)
  np.testing.assert_allclose(metrics["grad_norm/pos"], pos, rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm/neg"], neg, rtol=1e-5)


def test_trainer_stops_on_a_batch_that_breaks_the_contract(tmp_path):
  from asympo_jax.train import loop as trainer  # the loop, with a builder that puts loss on a prompt column

  cfg = tiny_config(**{"workdir": str(tmp_path), "train.steps": 1, "metrics.progress_bar": False,
                       "metrics.tensorboard": False})

  def build_batch(params, step):
    batch = synthetic_batch(cfg, seed=step)
    batch.loss_mask_BxT[:, 0] = 1.0
    return batch, {}

  with pytest.raises(ValueError, match="loss_mask is non-zero"):
    trainer.train(cfg, _mesh((1, 1, 1)), tiny_model(_mesh((1, 1, 1))), build_batch)
