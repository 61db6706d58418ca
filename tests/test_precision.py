"""model.dtype = bfloat16: compute in bfloat16 over float32 master weights.

The logits stay within bfloat16's rounding of the float32 ones (and as close as transformers' own bfloat16
model is to its float32 one); the parameters, gradients and Adam moments stay float32; the matmuls really
run in bfloat16.
"""
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from asympo_jax.common.sharding import data_mesh
from configs import default as default_config
from asympo_jax.model import hf_io
from asympo_jax.model import kv_cache
from asympo_jax.rollout.engine import make_sampler
from asympo_jax.run import assemble as run
from asympo_jax.run import config as config_lib
from asympo_jax.train import optim
from asympo_jax.train import step as train_step
from tests import tiny_checkpoints as tc
from tests.test_model import _batch, _logits, checkpoint  # noqa: F401 -- the parity checkpoints fixture
from tests.test_train_step import _mesh
from tests.train_fixtures import TINY, synthetic_batch, tiny_config, tiny_model

REPO = pathlib.Path(__file__).resolve().parents[1]
ACCURACY = "eval/basic_arithmetic/greedy_accuracy"
# bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most 2^-8 of itself.
UNIT_ROUNDOFF = 2.0**-8
# Roundings to bfloat16 on one token's path through a layer: the layer's weights (qkv, o, gate, up, down),
# its matmul inputs and outputs (normed input, q, k, v, probabilities, attention output, o output, normed
# MLP input, gate, up, their product, down output) and the two residual adds.
ROUNDINGS_PER_LAYER = 18


def _relative_error(got, want, mask):
  return float(np.linalg.norm((got - want)[mask > 0]) / np.linalg.norm(want[mask > 0]))


def test_bfloat16_logits_are_float32_ones_within_rounding(checkpoint):  # noqa: F811
  """Bound: independent roundings of relative size <= u add in quadrature, so over the n = 18 L roundings of
  a token's path the logits' relative (L2) error is about sqrt(n) u at most: 0.023 for the 2-layer
  checkpoints (measured 0.012-0.015). transformers' bfloat16 model makes the same roundings: ours is no
  further from float32 than 1.5 times its error. And it is above u / 8: bfloat16 compute is really on."""
  path, torch_model = checkpoint
  tokens, mask = _batch("left")
  f32 = _logits(hf_io.load_model(path), tokens, mask)
  bf16_model = hf_io.load_model(path, dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16_model)))
  bf16 = _logits(bf16_model, tokens, mask)
  assert bf16.dtype == np.float32
  error = _relative_error(bf16, f32, mask)
  bound = math.sqrt(ROUNDINGS_PER_LAYER * bf16_model.cfg.num_layers) * UNIT_ROUNDOFF
  torch_error = _relative_error(tc.torch_logits(torch_model.to(torch.bfloat16), tokens, mask),
                                tc.torch_logits(torch_model.to(torch.float32), tokens, mask), mask)
  assert UNIT_ROUNDOFF / 8 < error <= bound
  assert error <= 1.5 * torch_error


def _dot_dtypes(fn, *args):
  """The operand dtypes of every dot_general in the jaxpr of fn(*args), sub-jaxprs included."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def test_bfloat16_compute_keeps_params_gradients_and_adam_moments_float32():
  cfg = tiny_config(**{"train.micro_batches": 2, "model.dtype": "bfloat16"})
  mesh = _mesh((2, 1, 1))
  model_cfg = dataclasses.replace(TINY, dtype=cfg.model.dtype)
  graphdef, params, rest = nnx.split(tiny_model(mesh, cfg=model_cfg), nnx.Param, ...)
  spec = train_step.TrainSpec.from_config(cfg)
  batch = jax.device_put(synthetic_batch(cfg, seed=1), train_step.batch_sharding(mesh))

  # The layers' matmuls run in bfloat16 (the LM head of the log-probs stays float32).
  lp = lambda p: train_step.policy_logprobs(graphdef, p, rest, batch, 0, spec.response_len)
  dots = _dot_dtypes(lp, params)
  assert sum(d == ("bfloat16", "bfloat16") for d in dots) >= 4 * model_cfg.num_layers
  assert ("float32", "float32") in dots  # the LM head
  assert all(x.dtype == jnp.float32 for x in jax.eval_shape(lp, params))

  with jax.set_mesh(mesh):
    _, grads, _ = jax.jit(lambda p: train_step.loss_and_grads(spec, graphdef, rest, p, batch))(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0

  tx, schedule = optim.make_optimizer(cfg.optim, total_steps=10)
  state, shardings = train_step.init_state(params, tx, mesh)
  step = train_step.make_train_step(spec, graphdef, rest, tx, schedule, mesh, shardings)
  state, metrics = step(state, batch)
  assert float(metrics["optim/skipped_updates"]) == 0
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  moments = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
             if hasattr(s, "mu")]
  assert moments
  for adam in moments:
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((adam.mu, adam.nu)))



@pytest.mark.parametrize("engine", ["static", "continuous"])
def test_the_sampler_computes_with_a_bfloat16_copy_made_at_publish_or_in_generate(tmp_path, engine):
  # make_transfer's bfloat16 copy and generate's own cast of the float32 master weights are the same
  # weights: the samples and their float32 behaviour log-probs must be identical.
  path = str(tmp_path / "qwen3")
  tc.make_checkpoint("qwen3_tied", path)
  model = hf_io.load_model(path, dtype="bfloat16")
  cache = kv_cache.init_cache(model.cfg, 2, 8)
  assert all(x.dtype == jnp.bfloat16 for x in cache.k + cache.v)
  rollout = config_lib.base_config().rollout
  rollout.update(prompts_per_step=2, group_size=2, max_prompt_len=16, max_new_tokens=6,
                 record_behaviour_logprobs=True, engine=engine, slots=2)
  mesh = data_mesh(jax.devices()[:2])
  sampler = make_sampler(model, rollout, eos_ids=[], pad_id=0, mesh=mesh)
  master = run.make_transfer(mesh)(nnx.state(model))
  copy = run.make_transfer(mesh, model.cfg.dtype)(nnx.state(model))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(master))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(copy))
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
  want = sampler.generate(master, prompts, seed=1, step=0)
  got = sampler.generate(copy, prompts, seed=1, step=0)
  np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN)
  assert got.logprobs_BxN.dtype == np.float32
  np.testing.assert_array_equal(got.logprobs_BxN, want.logprobs_BxN)
  assert (got.logprobs_BxN < 0).all()


MICRO_FLAGS = [
    "--config.warm_start.steps=150", "--config.rollout.prompts_per_step=4", "--config.rollout.group_size=4",
    "--config.rollout.staleness=0", "--config.rollout.record_behaviour_logprobs=True", "--config.train.steps=10",
    "--config.optim.lr=3e-5", "--config.eval.every=5", "--config.checkpoint.every=0",
    "--config.data.eval=" + default_config.TASK + "&size=32&seed=2"]


def _micro_run(tmp_path, dtype):
  """The micro config, warm-started far enough that RL has rewards to work with, at staleness 0; its warm
  start's records and its RL records."""
  workdir = tmp_path / dtype
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as users run train.py
  subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'micro.py'}",
                  f"--config.workdir={workdir}", f"--config.model.dtype={dtype}", *MICRO_FLAGS],
                 check=True, cwd=REPO, env=env, timeout=1800)
  read = lambda path: [json.loads(line) for line in open(path)]
  return read(workdir / "warm_start" / "metrics.jsonl"), read(workdir / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two micro runs of 150 warm-start and 10 RL steps: minutes each on a shared CPU
def test_a_bfloat16_micro_run_learns_as_the_float32_one_does(tmp_path):
  runs = {dtype: _micro_run(tmp_path, dtype) for dtype in ("float32", "bfloat16")}
  summary = {}
  for dtype, (warm, rl) in runs.items():
    losses = [r["loss"] for r in warm if "loss" in r]
    accuracy = [r[ACCURACY] for r in rl if ACCURACY in r]
    summary[dtype] = dict(
        warm_loss_first=losses[0], warm_loss_last30=float(np.mean(losses[-30:])),
        accuracy=accuracy, reward_mean=float(np.mean([r["reward/mean"] for r in rl if "reward/mean" in r])),
        offpolicy_kl=float(np.mean([r["offpolicy/kl"] for r in rl if "offpolicy/kl" in r])))
  print(json.dumps(summary, indent=1))
  f32, bf16 = summary["float32"], summary["bfloat16"]
  for s in (f32, bf16):  # both learn: the warm start takes the NLL from ~6 to below 1, RL has rewards
    assert s["warm_loss_last30"] < s["warm_loss_first"] / 4
    assert 0.1 < s["accuracy"][0] < 0.9
  # ... and alike: 32 eval problems (one is 3 points), 160 rewarded samples
  assert abs(bf16["warm_loss_last30"] - f32["warm_loss_last30"]) <= 0.15 * f32["warm_loss_last30"]
  assert max(abs(a - b) for a, b in zip(bf16["accuracy"], f32["accuracy"])) <= 0.16
  assert abs(bf16["reward_mean"] - f32["reward_mean"]) <= 0.15
  # The training/inference mismatch at staleness 0 (k3 KL ~ half the mean square log-prob gap): float32's
  # gaps are float32 roundings (~1e-6, KL ~1e-12); bfloat16's are larger but stay far below u = 2^-8 per token
  # (KL < u^2 / 2 ~ 1e-5), as sampler and learner use the same bfloat16 weights.
  assert f32["offpolicy_kl"] < 1e-9 < bf16["offpolicy_kl"] < UNIT_ROUNDOFF**2 / 2
