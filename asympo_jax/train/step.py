"""The sharded train step: full-batch advantages and denominators, micro-batch gradient accumulation,
one guarded AdamW update, compiled with explicit in/out shardings and a donated state.

Exactness (docs/design.md §2): the objective returns each micro-batch's loss already divided by denominators of the
*full* batch, so the loss, the gradient and the additive metrics of the whole batch are plain sums over
micro-batches, and sharding the rows over (data, fsdp) changes nothing but the order of float additions.

Micro-batch m takes rows m, m + M, m + 2M, ... (a strided split): every micro-batch is then spread over
all batch shards the same way the full batch is, so no device idles while another works.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asympo_jax.model import decoder as model_lib
from asympo_jax.train import objectives
from asympo_jax.train import optim
from asympo_jax.common import sharding
from asympo_jax.model.logprobs import token_logprobs

Batch = dict[str, jax.Array]
BATCH_AXES = ("data", "fsdp")


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
  """The initial train state (optimizer state created in place, sharded) and the state's shardings."""
  shardings = state_shardings(sharding.state_shardings(params, mesh), tx, params, mesh)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return TrainState(params, opt_state), shardings


def check_batch(batch: Mapping[str, Any], cfg_rollout: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless a host batch has the layout the step relies on (docs/design.md §4): the fields it
  reads, T = max_prompt_len + max_new_tokens columns, and loss_mask 0 on the prompt columns. The step scores
  only the last max_new_tokens columns, so a loss token before them would silently drop out of the loss."""
  missing = [k for k in ("tokens", "input_mask", "loss_mask", "rewards") if k not in batch]
  if missing:
    raise ValueError(f"train batch: missing fields {missing} (docs/design.md §4)")
  prompt, response = cfg_rollout.max_prompt_len, cfg_rollout.max_new_tokens
  width = np.shape(batch["tokens"])[1]
  if width != prompt + response:
    raise ValueError(f"train batch: tokens has {width} columns, expected rollout.max_prompt_len + "
                     f"rollout.max_new_tokens = {prompt} + {response} (docs/design.md §4)")
  rows = np.flatnonzero(np.any(np.asarray(batch["loss_mask"])[:, :prompt] != 0, axis=1))
  if rows.size:
    raise ValueError(f"train batch: loss_mask is non-zero in the first rollout.max_prompt_len={prompt} (prompt) "
                     f"columns of rows {rows[:5].tolist()}; responses must sit in the last "
                     f"rollout.max_new_tokens={response} columns (docs/design.md §4)")


def policy_logprobs(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, batch: Batch,
                    chunk: int, response_len: int) -> tuple[jax.Array, jax.Array]:
  """(logprobs_BxT, entropy_BxT) of the batch's own tokens under `params`, on its last `response_len`
  columns (0 elsewhere): in a train batch (docs/design.md §4) the responses and so the loss are there.

  The RoPE cos and sin come from batch["rope"] when the batch holds them (`make_train_step` adds them).
  """
  model = nnx.merge(graphdef, params, rest)
  hidden_BxTxD, _ = model(batch["tokens"], model_lib.positions_of(batch["input_mask"]), batch["input_mask"],
                          rope=batch.get("rope"))
  T = batch["tokens"].shape[1]
  return token_logprobs(hidden_BxTxD, model.unembedding(), batch["tokens"], chunk, start=max(1, T - response_len))


def _inputs(cfg: ml_collections.ConfigDict, lp_BxT, ent_BxT, mb: Batch, ref_BxT) -> objectives.Inputs:
  if cfg.objective.entropy_coef == 0:  # a metric only: keep its backward pass out of the graph
    ent_BxT = jax.lax.stop_gradient(ent_BxT)
  return objectives.Inputs(lp_BxT, mb["loss_mask"], mb["advantages"], mb.get("behaviour_logprobs"),
                           ref_BxT, ent_BxT)


def _sign_part(x: objectives.Inputs, sign: float) -> objectives.Inputs:
  return x._replace(advantages_B=jnp.where(x.advantages_B * sign > 0, x.advantages_B, 0.0))


def micro_batch_loss(cfg: ml_collections.ConfigDict, graphdef: nnx.GraphDef, rest: nnx.State,
                     params: nnx.State, mb: Batch, denoms: dict[str, jax.Array],
                     ref_params: nnx.State | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One micro-batch's share of the full-batch loss, and its additive metrics.

  With objective.split_grad_norms the loss is a vector [total, positive part, negative part] (the policy
  loss of the positive- and negative-advantage responses), so one forward serves three backward passes.
  """
  score = dict(chunk=cfg.train.logprob_chunk, response_len=cfg.rollout.max_new_tokens)
  lp_BxT, ent_BxT = policy_logprobs(graphdef, params, rest, mb, **score)
  ref_BxT = None
  if ref_params is not None:
    ref_BxT = jax.lax.stop_gradient(policy_logprobs(graphdef, ref_params, rest, mb, **score)[0])
  x = _inputs(cfg, lp_BxT, ent_BxT, mb, ref_BxT)
  loss, metrics = objectives.loss_and_metrics(cfg.objective, x, denoms)
  if cfg.objective.split_grad_norms:
    loss = jnp.stack([loss] + [objectives.policy_loss(cfg.objective, _sign_part(x, sign), denoms)
                               for sign in (1.0, -1.0)])
  return loss, metrics


def split_micro_batches(batch: Batch, num: int) -> Batch:
  """[B, ...] -> [num, B / num, ...], micro-batch m holding rows m, m + num, ..."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1), batch)


def loss_and_grads(cfg: ml_collections.ConfigDict, graphdef: nnx.GraphDef, rest: nnx.State, params: nnx.State,
                   batch: Batch, ref_params: nnx.State | None = None,
                   grad_shardings: Any = None) -> tuple[jax.Array, nnx.State, dict[str, jax.Array]]:
  """Loss, gradient and metrics of the full batch, accumulated over cfg.train.micro_batches.

  The advantages and the objective's denominators come from the whole batch before it is split.
  `grad_shardings` (the params' shardings) pins the accumulator's layout inside the loop.
  """
  adv_B = objectives.group_advantages(batch["rewards"], cfg.rollout.group_size, cfg.advantage.std_normalize)
  batch = {**batch, "advantages": adv_B}
  denoms = objectives.denominators(objectives.Inputs(None, batch["loss_mask"], adv_B))
  want_sides = cfg.objective.split_grad_norms

  def one(mb):
    losses, backward, metrics = jax.vjp(
        lambda p: micro_batch_loss(cfg, graphdef, rest, p, mb, denoms, ref_params), params, has_aux=True)
    if not want_sides:
      return losses, backward(jnp.ones_like(losses))[0], metrics, ()
    grads, pos, neg = (backward(jax.nn.one_hot(i, 3, dtype=losses.dtype))[0] for i in range(3))
    return losses[0], grads, metrics, (pos, neg)

  pin = (lambda t: t) if grad_shardings is None else (
      lambda t: jax.lax.with_sharding_constraint(t, grad_shardings))
  num = cfg.train.micro_batches
  if num == 1:
    loss, grads, metrics, sides = one(batch)
  else:
    micro = split_micro_batches(batch, num)

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


def make_train_step(cfg: ml_collections.ConfigDict, graphdef: nnx.GraphDef, rest: nnx.State,
                    tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh,
                    shardings: TrainState) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """step(state, batch, ref_params) -> (state, metrics), jitted with explicit shardings; `state` is donated.

  `batch` holds global arrays sharded by `batch_sharding(mesh)`; `ref_params` is None unless
  objective.kl_coef > 0 (then the frozen reference policy, sharded like the params).
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = batch_sharding(mesh)

  def step(state: TrainState, batch: Batch, ref_params: nnx.State | None):
    loss, grads, metrics = loss_and_grads(cfg, graphdef, rest, state.params, batch, ref_params,
                                          grad_shardings=shardings.params)
    state, opt_metrics = update(tx, schedule, state, grads)
    return state, {"loss": loss, **metrics, **opt_metrics}

  ref_shardings = shardings.params if cfg.objective.kl_coef > 0 else None
  jitted = jax.jit(step, in_shardings=(shardings, rows, ref_shardings), out_shardings=(shardings, replicated),
                   donate_argnums=0)

  def run(state: TrainState, batch: Batch, ref_params: nnx.State | None = None):
    with jax.set_mesh(mesh):  # the model's activation constraints read the mesh while tracing
      rope = model_lib.rope_inputs(graphdef, batch["input_mask"], state.params, rest)  # see model.Decoder
      return jitted(state, {**batch, "rope": rope}, ref_params)

  run.jitted = jitted
  return run
