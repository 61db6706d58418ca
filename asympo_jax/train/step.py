"""The sharded train step: full-batch advantages and denominators, micro-batch gradient accumulation,
one guarded AdamW update, compiled with explicit in/out shardings and a donated state.

Exactness (docs/design.md §2): the objective returns each micro-batch's loss already divided by denominators of the
*full* batch, so the loss, the gradient and the additive metrics of the whole batch are plain sums over
micro-batches, and sharding the rows over (data, fsdp) changes nothing but the order of float additions.

Micro-batch m takes rows m, m + M, m + 2M, ... (a strided split): every micro-batch is then spread over
all batch shards the same way the full batch is, so no device idles while another works.

The step reads a `TrainSpec`, not the config: the few values it depends on, frozen, so a step is a function
of its spec and its inputs.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asympo_jax.model import decoder as model_lib
from asympo_jax.train import objectives
from asympo_jax.train import optim
from asympo_jax.common import sharding
from asympo_jax.model.logprobs import token_logprobs
from asympo_jax.rollout.train_batch import TrainBatch

BATCH_AXES = ("data", "fsdp")
RopeInputs = tuple[jax.Array, jax.Array]  # cos and sin, see model.decoder.rope_inputs


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """What the train step reads of the config."""
  group_size: int  # rollout.group_size: rows per prompt, the groups of the advantages
  response_len: int  # rollout.max_new_tokens: the last columns of a batch, the only ones scored
  micro_batches: int  # train.micro_batches
  logprob_chunk: int  # train.logprob_chunk: time-chunk length of the log-probs, 0 for direct
  std_normalize: bool  # advantage.std_normalize, off for an objective that takes raw advantages
  objective: ml_collections.FrozenConfigDict  # config.objective, resolved: the objective's name and parameters

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> "TrainSpec":
    return cls(group_size=cfg.rollout.group_size, response_len=cfg.rollout.max_new_tokens,
               micro_batches=cfg.train.micro_batches, logprob_chunk=cfg.train.logprob_chunk,
               std_normalize=objectives.std_normalizes(cfg),
               objective=ml_collections.FrozenConfigDict(objectives.resolve(cfg)))


class Rows(NamedTuple):
  """What a micro-batch takes its rows of: the batch, its advantages and the RoPE inputs (or None)."""
  batch: TrainBatch
  advantages_B: jax.Array
  rope: RopeInputs | None


class TrainState(NamedTuple):
  params: nnx.State
  opt_state: optax.OptState


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over data x fsdp, every other dimension whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def state_shardings(params_shardings: nnx.State, tx: optax.GradientTransformation, params: nnx.State,
                    mesh: Mesh) -> TrainState:
  """Optimizer moments take their parameter's sharding; counters and flags are replicated."""
  opt_shapes = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt = optax.tree_map_params(tx, lambda _, s: s, opt_shapes, params_shardings,
                              transform_non_params=lambda _: replicated)
  return TrainState(params_shardings, opt)


def init_state(params: nnx.State, tx: optax.GradientTransformation, mesh: Mesh) -> tuple[TrainState, TrainState]:
  """The initial train state (optimizer state created in place, sharded) and the state's shardings.

  With abstract `params` (jax.ShapeDtypeStruct leaves, as the plan gives them) the optimizer state is abstract
  too, with its shardings: nothing is allocated.
  """
  shardings = state_shardings(sharding.state_shardings(params, mesh), tx, params, mesh)
  init = jax.jit(tx.init, out_shardings=shardings.opt_state)
  opt_state = jax.eval_shape(init, params) if is_abstract(params) else init(params)
  return TrainState(params, opt_state), shardings


def is_abstract(tree: Any) -> bool:
  """Whether `tree` holds shapes only (jax.ShapeDtypeStruct leaves), not arrays."""
  return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def policy_logprobs(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, batch: TrainBatch,
                    chunk: int, response_len: int, rope: RopeInputs | None = None) -> tuple[jax.Array, jax.Array]:
  """(logprobs_BxT, entropy_BxT) of the batch's own tokens under `params`, on its last `response_len`
  columns (0 elsewhere): in a train batch the responses and so the loss are there.

  `rope`: the RoPE cos and sin of the batch's positions, or None to compute them inside (common/cpu.py).
  """
  model = nnx.merge(graphdef, params, rest)
  tokens_BxT, mask_BxT = batch.tokens_BxT, batch.input_mask_BxT
  hidden_BxTxD, _ = model(tokens_BxT, model_lib.positions_of(mask_BxT), mask_BxT, rope=rope)
  T = tokens_BxT.shape[1]
  return token_logprobs(hidden_BxTxD, model.unembedding(), tokens_BxT, chunk, start=max(1, T - response_len))


def _inputs(spec: TrainSpec, lp_BxT, ent_BxT, mb: Rows, ref_BxT) -> objectives.Inputs:
  if spec.objective.entropy_coef == 0:  # a metric only: keep its backward pass out of the graph
    ent_BxT = jax.lax.stop_gradient(ent_BxT)
  return objectives.Inputs(lp_BxT, mb.batch.loss_mask_BxT, mb.advantages_B, mb.batch.behaviour_logprobs_BxT,
                           ref_BxT, ent_BxT)


def _sign_part(x: objectives.Inputs, sign: float) -> objectives.Inputs:
  return x._replace(advantages_B=jnp.where(x.advantages_B * sign > 0, x.advantages_B, 0.0))


def micro_batch_loss(spec: TrainSpec, graphdef: nnx.GraphDef, rest: nnx.State,
                     params: nnx.State, mb: Rows, denoms: dict[str, jax.Array],
                     ref_params: nnx.State | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One micro-batch's share of the full-batch loss, and its additive metrics.

  With objective.split_grad_norms the loss is a vector [total, positive part, negative part] (the policy
  loss of the positive- and negative-advantage responses), so one forward serves three backward passes.
  """
  score = dict(chunk=spec.logprob_chunk, response_len=spec.response_len, rope=mb.rope)
  lp_BxT, ent_BxT = policy_logprobs(graphdef, params, rest, mb.batch, **score)
  ref_BxT = None
  if ref_params is not None:
    ref_BxT = jax.lax.stop_gradient(policy_logprobs(graphdef, ref_params, rest, mb.batch, **score)[0])
  x = _inputs(spec, lp_BxT, ent_BxT, mb, ref_BxT)
  loss, metrics = objectives.loss_and_metrics(spec.objective, x, denoms)
  if spec.objective.split_grad_norms:
    loss = jnp.stack([loss] + [objectives.policy_loss(spec.objective, _sign_part(x, sign), denoms)
                               for sign in (1.0, -1.0)])
  return loss, metrics


def split_micro_batches(rows: Any, num: int) -> Any:
  """Every [B, ...] leaf -> [num, B / num, ...], micro-batch m holding rows m, m + num, ..."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1), rows)


def loss_and_grads(spec: TrainSpec, graphdef: nnx.GraphDef, rest: nnx.State, params: nnx.State,
                   batch: TrainBatch, ref_params: nnx.State | None = None, grad_shardings: Any = None,
                   rope: RopeInputs | None = None) -> tuple[jax.Array, nnx.State, dict[str, jax.Array]]:
  """Loss, gradient and metrics of the full batch, accumulated over spec.micro_batches.

  The advantages and the objective's denominators come from the whole batch before it is split.
  `grad_shardings` (the params' shardings) pins the accumulator's layout inside the loop; `rope` is as in
  `policy_logprobs`.
  """
  adv_B = objectives.group_advantages(batch.rewards_B, spec.group_size, spec.std_normalize)
  denoms = objectives.denominators(objectives.Inputs(None, batch.loss_mask_BxT, adv_B))
  want_sides = spec.objective.split_grad_norms

  def one(mb: Rows):
    losses, backward, metrics = jax.vjp(
        lambda p: micro_batch_loss(spec, graphdef, rest, p, mb, denoms, ref_params), params, has_aux=True)
    if not want_sides:
      return losses, backward(jnp.ones_like(losses))[0], metrics, ()
    grads, pos, neg = (backward(jax.nn.one_hot(i, 3, dtype=losses.dtype))[0] for i in range(3))
    return losses[0], grads, metrics, (pos, neg)

  pin = (lambda t: t) if grad_shardings is None else (
      lambda t: jax.lax.with_sharding_constraint(t, grad_shardings))
  num = spec.micro_batches
  rows = Rows(batch, adv_B, rope)
  if num == 1:
    loss, grads, metrics, sides = one(rows)
  else:
    micro = split_micro_batches(rows, num)

    def body(carry, mb):
      loss, grads, metrics, sides = one(mb)
      acc_loss, acc_grads, acc_metrics, acc_sides = carry
      add = lambda a, b: pin(jax.tree.map(jnp.add, a, b))
      return (acc_loss + loss, add(acc_grads, grads), objectives.combine_metrics(acc_metrics, metrics),
              tuple(add(a, b) for a, b in zip(acc_sides, sides))), None

    shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro))
    zeros = lambda t: pin(jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), t))
    init_metrics = {k: jnp.full(s.shape, -jnp.inf if k.endswith("_max") else 0.0, jnp.float32)
                    for k, s in shapes[2].items()}
    init = (jnp.zeros((), jnp.float32), zeros(shapes[1]), init_metrics, tuple(zeros(s) for s in shapes[3]))
    (loss, grads, metrics, sides), _ = jax.lax.scan(body, init, micro)
  metrics = objectives.finalize_metrics(metrics)
  if want_sides:
    metrics["grad_norm/pos"], metrics["grad_norm/neg"] = (optax.tree.norm(g) for g in sides)
  return loss, grads, metrics


def update(tx: optax.GradientTransformation, schedule: optax.Schedule, state: TrainState,
           grads: nnx.State) -> tuple[TrainState, dict[str, jax.Array]]:
  """One guarded optimizer step; a non-finite gradient leaves `state` as it was (and is counted)."""
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  lr = optim.current_lr(schedule, state.opt_state)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"optim/grad_norm": optax.tree.norm(grads), "optim/lr": lr,
             "optim/update_norm": optax.tree.norm(updates),
             "optim/skipped_updates": optim.skipped_updates(opt_state).astype(jnp.float32)}
  return TrainState(params, opt_state), metrics


class TrainStep:
  """step(state, batch, ref_params) -> (state, metrics); `step.lower(...)` the same program, lowered for
  abstract arguments (jax.ShapeDtypeStruct leaves) without running anything: the plan compiles it so."""

  def __init__(self, jitted: Any, mesh: Mesh, graphdef: nnx.GraphDef, rest: nnx.State):
    self.jitted, self.mesh, self.graphdef, self.rest = jitted, mesh, graphdef, rest

  def _rope(self, state: TrainState, batch: TrainBatch) -> RopeInputs | None:
    rope = functools.partial(model_lib.rope_inputs, self.graphdef)
    args = (batch.input_mask_BxT, state.params, self.rest)
    return jax.eval_shape(rope, *args) if is_abstract(batch) else rope(*args)

  def __call__(self, state: TrainState, batch: TrainBatch, ref_params: nnx.State | None = None):
    with jax.set_mesh(self.mesh):  # the model's activation constraints read the mesh while tracing
      return self.jitted(state, batch, self._rope(state, batch), ref_params)

  def lower(self, state: TrainState, batch: TrainBatch, ref_params: nnx.State | None = None) -> jax.stages.Lowered:
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(state, batch, self._rope(state, batch), ref_params)


def make_train_step(spec: TrainSpec, graphdef: nnx.GraphDef, rest: nnx.State,
                    tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh,
                    shardings: TrainState) -> TrainStep:
  """step(state, batch, ref_params) -> (state, metrics), jitted with explicit shardings; `state` is donated.

  `batch` is a TrainBatch of global arrays sharded by `batch_sharding(mesh)`; `ref_params` is None unless
  objective.kl_coef > 0 (then the frozen reference policy, sharded like the params).
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = batch_sharding(mesh)

  def step(state: TrainState, batch: TrainBatch, rope: RopeInputs | None, ref_params: nnx.State | None):
    loss, grads, metrics = loss_and_grads(spec, graphdef, rest, state.params, batch, ref_params,
                                          grad_shardings=shardings.params, rope=rope)
    state, opt_metrics = update(tx, schedule, state, grads)
    return state, {"loss": loss, **metrics, **opt_metrics}

  ref_shardings = shardings.params if spec.objective.kl_coef > 0 else None
  jitted = jax.jit(step, in_shardings=(shardings, rows, rows, ref_shardings), out_shardings=(shardings, replicated),
                   donate_argnums=0)
  return TrainStep(jitted, mesh, graphdef, rest)
