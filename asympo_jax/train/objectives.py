"""Policy objectives (docs/design.md §2): the current-policy-only family, the baselines, and their diagnostics.

Every objective is a pure function from `Inputs` to per-response loss numerators `numer_B` and the name
of the global denominator they share ("responses" or "tokens"). The loss of a (micro-)batch is
sum(numer_B) / denominators[name], where the denominators are computed once from the *full* batch
(`denominators`), so micro-batch and data-parallel pieces are plain sums of one big batch's loss,
gradient and metrics.

Shapes: B responses (P prompts x G samples, group-contiguous), T token positions. Everything is
float32. Log-probs are aligned with tokens: logprobs_BxT[:, t] scores token t; mask_BxT is 1 on the
generated response tokens (EOS included).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from asympo_jax.common.checks import check

Array = jax.Array


class Inputs(NamedTuple):
  logprobs_BxT: Array
  mask_BxT: Array
  advantages_B: Array
  behaviour_logprobs_BxT: Array | None = None
  ref_logprobs_BxT: Array | None = None
  entropy_BxT: Array | None = None


def group_advantages(rewards_B: Array, group_size: int, std_normalize: bool) -> Array:
  """A_g = r_g - mean_group(r), over (std_group(r) + 1e-6) if std_normalize; 0 for constant groups.

  std is the unbiased (ddof=1) group standard deviation, as in the common GRPO implementations.
  """
  r_PxG = rewards_B.reshape(-1, group_size).astype(jnp.float32)
  adv_PxG = r_PxG - r_PxG.mean(axis=1, keepdims=True)
  if std_normalize:
    adv_PxG = adv_PxG / (r_PxG.std(axis=1, ddof=1, keepdims=True) + 1e-6)
  # Exact zeros for constant groups: r - mean(r) can be off by one ulp, and /1e-6 would amplify it.
  constant_P1 = (r_PxG.max(axis=1, keepdims=True) == r_PxG.min(axis=1, keepdims=True))
  return jnp.where(constant_P1, 0.0, adv_PxG).reshape(-1)


def response_nll(logprobs_BxT: Array, mask_BxT: Array) -> Array:
  """l_g: mean token NLL of each response under the current policy, [B]."""
  count_B = jnp.maximum(1.0, mask_BxT.sum(axis=1))
  return -(logprobs_BxT * mask_BxT).sum(axis=1) / count_B


def denominators(x: Inputs) -> dict[str, Array]:
  """Global denominators of a full batch; they depend on data only, never on parameters."""
  adv_B = x.advantages_B
  return {
      "responses": jnp.asarray(adv_B.shape[0], jnp.float32),
      "tokens": jnp.maximum(1.0, x.mask_BxT.sum()),
      "pos": jnp.maximum(1.0, (adv_B > 0).sum().astype(jnp.float32)),
      "neg": jnp.maximum(1.0, (adv_B < 0).sum().astype(jnp.float32)),
  }


# ---- the objectives: (cfg, inputs) -> (numer_B, denominator name) ----------------------------------

def naive(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  return x.advantages_B * response_nll(x.logprobs_BxT, x.mask_BxT), "responses"


def spo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  coef_B = jnp.where(x.advantages_B < 0, cfg.negative_scale, 1.0)
  return coef_B * x.advantages_B * response_nll(x.logprobs_BxT, x.mask_BxT), "responses"


def asympo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  # The forward value of each term is exactly A_g (zero-sum per group), the gradient A_g grad(l_g) / l_g.
  nll_B = response_nll(x.logprobs_BxT, x.mask_BxT)
  coef_B = 1.0 / jnp.maximum(jax.lax.stop_gradient(nll_B), cfg.eps)
  return coef_B * x.advantages_B * nll_B, "responses"


def gpg(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  return -(x.advantages_B[:, None] * x.logprobs_BxT * x.mask_BxT).sum(axis=1), "tokens"


def grpo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  log_ratio_BxT = (x.logprobs_BxT - x.behaviour_logprobs_BxT) * x.mask_BxT
  ratio_BxT = jnp.exp(log_ratio_BxT)
  adv_Bx1 = x.advantages_B[:, None]
  clipped_BxT = jnp.clip(ratio_BxT, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
  loss_BxT = -jnp.minimum(ratio_BxT * adv_Bx1, clipped_BxT * adv_Bx1)
  if cfg.dual_clip > 0:
    # Dual clip (Ye et al. 2020): bound the loss of negative-advantage tokens with a huge ratio.
    loss_BxT = jnp.where(adv_Bx1 < 0, jnp.minimum(loss_BxT, -cfg.dual_clip * adv_Bx1), loss_BxT)
  if cfg.tis_cap > 0:
    log_w = log_ratio_BxT.sum(axis=1, keepdims=True) if cfg.tis_level == "seq" else log_ratio_BxT
    # exp(min(log w, log C)) == min(w, C) without overflowing on long sequences.
    loss_BxT = loss_BxT * jax.lax.stop_gradient(jnp.exp(jnp.minimum(log_w, jnp.log(cfg.tis_cap))))
  token_sum_B = (loss_BxT * x.mask_BxT).sum(axis=1)
  if cfg.aggregation == "token_mean":
    return token_sum_B, "tokens"
  return token_sum_B / jnp.maximum(1.0, x.mask_BxT.sum(axis=1)), "responses"


def nll(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  """Supervised warm start: token-mean NLL of the masked tokens; advantages are ignored."""
  return -(x.logprobs_BxT * x.mask_BxT).sum(axis=1), "tokens"


@dataclasses.dataclass(frozen=True)
class Objective:
  fn: Callable[[ml_collections.ConfigDict, Inputs], tuple[Array, str]]
  needs_behaviour: bool = False
  uses_advantages: bool = True  # group-relative: needs rollout.group_size >= 2


OBJECTIVES: dict[str, Objective] = {
    "naive": Objective(naive),
    "spo": Objective(spo),
    "asympo": Objective(asympo),
    "gpg": Objective(gpg),
    "grpo": Objective(grpo, needs_behaviour=True),
    "nll": Objective(nll, uses_advantages=False),
}


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks config.objective (and the rollout keys it depends on); raises ConfigError naming the key."""
  o = cfg.objective
  check(o.name in OBJECTIVES, "objective.name", f"unknown objective {o.name!r}; known: {sorted(OBJECTIVES)}")
  check(0 < o.negative_scale <= 1, "objective.negative_scale", f"must be in (0, 1], got {o.negative_scale}")
  check(o.eps > 0, "objective.eps", f"must be > 0, got {o.eps}")
  check(0 <= o.clip_eps_low < 1, "objective.clip_eps_low", f"must be in [0, 1), got {o.clip_eps_low}")
  check(o.clip_eps_high >= 0, "objective.clip_eps_high", f"must be >= 0, got {o.clip_eps_high}")
  check(o.dual_clip == 0 or o.dual_clip > 1, "objective.dual_clip", f"must be 0 (off) or > 1, got {o.dual_clip}")
  check(o.aggregation in ("seq_mean_token_mean", "token_mean"), "objective.aggregation",
        f"must be seq_mean_token_mean or token_mean, got {o.aggregation!r}")
  check(o.tis_cap >= 0, "objective.tis_cap", f"must be >= 0 (0: off), got {o.tis_cap}")
  check(o.tis_cap == 0 or o.name == "grpo", "objective.tis_cap", "truncated importance weights apply to grpo only")
  check(o.tis_level in ("token", "seq"), "objective.tis_level", f"must be token or seq, got {o.tis_level!r}")
  check(o.kl_coef >= 0, "objective.kl_coef", f"must be >= 0, got {o.kl_coef}")
  check(o.entropy_coef >= 0, "objective.entropy_coef", f"must be >= 0, got {o.entropy_coef}")
  check(not OBJECTIVES[o.name].needs_behaviour or cfg.rollout.record_behaviour_logprobs,
        "rollout.record_behaviour_logprobs",
        f"objective {o.name!r} needs behaviour log-probs; set config.rollout.record_behaviour_logprobs=True")


def _masked(x: Inputs) -> Inputs:
  """Zeroes every per-token input at padded positions, so garbage there (even inf) reaches nothing."""
  keep_BxT = x.mask_BxT > 0
  clean = lambda a: None if a is None else jnp.where(keep_BxT, a, 0.0)
  return Inputs(clean(x.logprobs_BxT), keep_BxT.astype(jnp.float32), x.advantages_B,
                clean(x.behaviour_logprobs_BxT), clean(x.ref_logprobs_BxT), clean(x.entropy_BxT))


def policy_loss(cfg: ml_collections.ConfigDict, x: Inputs, denoms: dict[str, Array]) -> Array:
  """The policy-gradient part of the loss alone (for per-side gradient norms, say)."""
  return _policy_terms(cfg, _masked(x), denoms)[0]


def _policy_terms(cfg: ml_collections.ConfigDict, x: Inputs, denoms: dict[str, Array]) -> tuple[Array, Array, str]:
  objective = OBJECTIVES[cfg.name]
  if objective.needs_behaviour and x.behaviour_logprobs_BxT is None:
    raise ValueError(f"objective {cfg.name!r} needs behaviour log-probs but the batch carries none; "
                     "set config.rollout.record_behaviour_logprobs=True")
  numer_B, denom = objective.fn(cfg, x)
  return numer_B.sum() / denoms[denom], numer_B, denom


def loss_and_metrics(cfg: ml_collections.ConfigDict, x: Inputs,
                     denoms: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
  """Loss and additive metrics of one micro-batch, normalised by the full batch's `denoms`."""
  x = _masked(x)
  pg_loss, numer_B, denom = _policy_terms(cfg, x, denoms)
  mask_BxT, tokens = x.mask_BxT, denoms["tokens"]
  loss = pg_loss
  metrics = {"loss/policy": pg_loss}
  if cfg.kl_coef > 0:
    if x.ref_logprobs_BxT is None:
      raise ValueError("config.objective.kl_coef > 0 needs reference log-probs in the objective inputs")
    kl = (_k3(x.ref_logprobs_BxT - x.logprobs_BxT) * mask_BxT).sum() / tokens
    loss, metrics["loss/kl_ref"] = loss + cfg.kl_coef * kl, kl
  if x.entropy_BxT is not None:
    entropy = (x.entropy_BxT * mask_BxT).sum() / tokens
    loss, metrics["entropy"] = loss - cfg.entropy_coef * entropy, entropy
  elif cfg.entropy_coef > 0:
    raise ValueError("config.objective.entropy_coef > 0 needs token entropies in the objective inputs")
  metrics["loss/total"] = loss

  nll_B = jax.lax.stop_gradient(response_nll(x.logprobs_BxT, mask_BxT))
  numer_B = jax.lax.stop_gradient(numer_B)
  pos_B, neg_B = x.advantages_B > 0, x.advantages_B < 0
  metrics["nll"] = nll_B.sum() / denoms["responses"]
  metrics["balance/pos_nll"] = jnp.where(pos_B, nll_B, 0.0).sum() / denoms["pos"]
  metrics["balance/neg_nll"] = jnp.where(neg_B, nll_B, 0.0).sum() / denoms["neg"]
  metrics["balance/pos_loss"] = jnp.where(pos_B, numer_B, 0.0).sum() / denoms[denom]
  metrics["balance/neg_loss"] = jnp.where(neg_B, numer_B, 0.0).sum() / denoms[denom]
  metrics["balance/net_loss"] = metrics["balance/pos_loss"] + metrics["balance/neg_loss"]

  if x.behaviour_logprobs_BxT is not None:
    log_ratio_BxT = jax.lax.stop_gradient(x.logprobs_BxT - x.behaviour_logprobs_BxT)
    metrics["offpolicy/kl"] = (_k3(log_ratio_BxT) * mask_BxT).sum() / tokens
    metrics["offpolicy/ratio_mean"] = (jnp.exp(log_ratio_BxT) * mask_BxT).sum() / tokens
    metrics["offpolicy/ratio_max"] = jnp.where(mask_BxT > 0, jnp.exp(log_ratio_BxT), 0.0).max()
  return loss, metrics


def _k3(log_ratio: Array) -> Array:
  """Schulman's k3 estimator per token: r - 1 - log r with r = exp(log_ratio); >= 0, unbiased for KL."""
  return jnp.expm1(log_ratio) - log_ratio


def combine_metrics(a: dict[str, Array], b: dict[str, Array]) -> dict[str, Array]:
  """Merges the metrics of two micro-batches: sums, except keys ending in "_max"."""
  return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k] for k in a}


def finalize_metrics(metrics: dict[str, Array]) -> dict[str, Array]:
  """Adds the metrics that are not additive over micro-batches (ratios), from the combined sums.

  neg_pos_ratio is |neg_loss| / |pos_loss|: docs/design.md §5's |neg_loss| / pos_loss where pos_loss > 0 (the
  current-policy family, gpg), and still the sides' size ratio for grpo, whose positive side is negative
  (its per-response loss is -rho * A). 0 when there is no positive side.
  """
  pos, neg = jnp.abs(metrics["balance/pos_loss"]), jnp.abs(metrics["balance/neg_loss"])
  return {**metrics, "balance/neg_pos_ratio": jnp.where(pos > 0, neg / jnp.where(pos > 0, pos, 1.0), 0.0)}
