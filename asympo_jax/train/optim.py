"""The optimizer: AdamW with linear warmup, a constant or cosine schedule, global-norm clipping, and a
guard that skips (and counts) any update whose gradients are not finite.

The guard is optax.apply_if_finite with an unreachable give-up count, so a non-finite step leaves the
params and the Adam moments untouched, and `skipped_updates(opt_state)` reads the running total.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from asympo_jax.common.checks import check

# Decay: constant or cosine after the warmup, as a function of (lr, decay_steps) -> schedule.
SCHEDULES: dict[str, Callable[[float, int], optax.Schedule]] = {
    "constant": lambda lr, steps: optax.constant_schedule(lr),
    "cosine": lambda lr, steps: optax.cosine_decay_schedule(lr, max(steps, 1)),
}

_NEVER_GIVE_UP = int(jnp.iinfo(jnp.int32).max)


def validate(cfg_optim: ml_collections.ConfigDict) -> None:
  check(cfg_optim.lr > 0, "optim.lr", f"must be > 0, got {cfg_optim.lr}")
  check(cfg_optim.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {cfg_optim.warmup_steps}")
  check(cfg_optim.schedule in SCHEDULES, "optim.schedule",
        f"unknown schedule {cfg_optim.schedule!r}; choose from {sorted(SCHEDULES)}")
  check(cfg_optim.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {cfg_optim.weight_decay}")
  for key in ("b1", "b2"):
    check(0 <= cfg_optim[key] < 1, f"optim.{key}", f"must be in [0, 1), got {cfg_optim[key]}")
  check(cfg_optim.clip_norm >= 0, "optim.clip_norm", f"must be >= 0 (0: off), got {cfg_optim.clip_norm}")


def learning_rate(cfg_optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over warmup_steps, then the named schedule over the remaining steps."""
  warmup = cfg_optim.warmup_steps
  after = SCHEDULES[cfg_optim.schedule](cfg_optim.lr, total_steps - warmup)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg_optim.lr, warmup), after], [warmup])


def _decay_mask(params):
  # Norm scales and biases (1-D) are not decayed; matrices and embeddings are.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg_optim: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The guarded AdamW chain and its learning-rate schedule (for logging the lr)."""
  schedule = learning_rate(cfg_optim, total_steps)
  chain = []
  if cfg_optim.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg_optim.clip_norm))
  chain.append(optax.adamw(schedule, b1=cfg_optim.b1, b2=cfg_optim.b2,
                           weight_decay=cfg_optim.weight_decay, mask=_decay_mask))
  return optax.apply_if_finite(optax.chain(*chain), max_consecutive_errors=_NEVER_GIVE_UP), schedule


def skipped_updates(opt_state: optax.OptState) -> jax.Array:
  """How many updates the non-finite guard has skipped since the start of the run."""
  return opt_state.total_notfinite


def current_lr(schedule: optax.Schedule, opt_state: optax.OptState) -> jax.Array:
  """The learning rate the next update will use (skipped updates do not advance the schedule)."""
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)
  (sched_state,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_sched) if is_sched(s)]
  return schedule(sched_state.count)
