"""Policy objectives (docs/design.md §2): the current-policy-only family, the baselines, and their diagnostics.

Every objective is a pure function from `Inputs` to per-response loss numerators `numer_B` and the name
of the global denominator they share ("responses" or "tokens"). The loss of a (micro-)batch is
sum(numer_B) / denominators[name], where the denominators are computed once from the *full* batch
(`denominators`), so micro-batch and data-parallel pieces are plain sums of one big batch's loss,
gradient and metrics.

Adding an objective is one function, one `OBJECTIVES` entry and one test: the entry holds the config keys
the objective reads (`Key`: default and accepted range), from which config.objective is built
(`config_section`) and checked (`validate`).

Shapes: B responses (P prompts x G samples, group-contiguous), T token positions. Everything is
float32. Log-probs are aligned with tokens: logprobs_BxT[:, t] scores token t; mask_BxT is 1 on the
generated response tokens (EOS included).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

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


# ---- config keys: each objective's keys live in its registry entry ---------------------------------

@dataclasses.dataclass(frozen=True)
class Key:
  """A key of config.objective: its default and the values it accepts.

  `switch`: an option that is off at its default; switched on for an objective that does not read it, it is
  refused rather than silently ignored. `follows`: a 0 default stands for the value of that other config key
  (`resolve` fills it in).
  """
  default: Any
  accepts: Callable[[Any], bool]
  must: str  # what `accepts` asks, for the error message
  switch: bool = False
  follows: str = ""


def _in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[Any], bool]:
  return lambda v: (low < v if low_open else low <= v) and (v < high if high_open else v <= high)


def _int_at_least(low: int) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


_inf = float("inf")
_bool = lambda v: isinstance(v, bool)
# Read by every objective (the KL penalty and the entropy bonus are added in `loss_and_metrics`).
COMMON_KEYS: dict[str, Key] = {
    "kl_coef": Key(0.0, _in(0, _inf), "must be >= 0"),
    "entropy_coef": Key(0.0, _in(0, _inf), "must be >= 0"),
    "split_grad_norms": Key(False, _bool, "must be a bool"),  # log grad norms of the positive and negative parts
}
# The PPO clip range of the per-token ratio, and the dual clip c (Ye et al. 2020) on negative advantages.
PPO_CLIP_KEYS: dict[str, Key] = {
    "clip_eps_low": Key(0.2, _in(0, 1, high_open=True), "must be in [0, 1)"),
    "clip_eps_high": Key(0.2, _in(0, _inf), "must be >= 0"),
    "dual_clip": Key(0.0, lambda v: v == 0 or v > 1, "must be 0 (off) or > 1", switch=True),
}
AGGREGATION_KEY = {"aggregation": Key("seq_mean_token_mean", lambda v: v in ("seq_mean_token_mean", "token_mean"),
                                      "must be seq_mean_token_mean or token_mean")}
# grpo's token loss options: truncated importance weights min(rho, C), and IcePop's mask on rho.
GRPO_TOKEN_KEYS: dict[str, Key] = {
    **PPO_CLIP_KEYS,
    "tis_cap": Key(0.0, _in(0, _inf), "must be >= 0 (0: off)", switch=True),
    "tis_level": Key("token", lambda v: v in ("token", "seq"), "must be token or seq"),
    "icepop": Key(False, _bool, "must be a bool", switch=True),
    # IcePop's defaults (arXiv 2510.18855); the range holds rho = 1, so on-policy tokens always stay.
    "icepop_alpha": Key(0.5, _in(0, 1, high_open=True), "must be in [0, 1)"),
    "icepop_beta": Key(5.0, _in(1, _inf, low_open=True), "must be > 1"),
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


def _log_ratio(x: Inputs) -> Array:
  """log rho = lp - b per response token (0 on padding)."""
  return (x.logprobs_BxT - x.behaviour_logprobs_BxT) * x.mask_BxT


def _ppo_token_loss(cfg: ml_collections.ConfigDict, ratio_BxT: Array, adv_B: Array) -> Array:
  """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), with the optional dual clip."""
  adv_Bx1 = adv_B[:, None]
  clipped_BxT = jnp.clip(ratio_BxT, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high)
  loss_BxT = -jnp.minimum(ratio_BxT * adv_Bx1, clipped_BxT * adv_Bx1)
  if cfg.dual_clip > 0:
    # Bound the loss of negative-advantage tokens with a huge ratio.
    loss_BxT = jnp.where(adv_Bx1 < 0, jnp.minimum(loss_BxT, -cfg.dual_clip * adv_Bx1), loss_BxT)
  return loss_BxT


def _grpo_token_loss(cfg: ml_collections.ConfigDict, x: Inputs) -> Array:
  """grpo's per-token loss with rho = exp(lp - b), and its TIS and IcePop options; 0 on padding."""
  log_ratio_BxT = _log_ratio(x)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  loss_BxT = _ppo_token_loss(cfg, ratio_BxT, x.advantages_B)
  if cfg.tis_cap > 0:
    log_w = log_ratio_BxT.sum(axis=1, keepdims=True) if cfg.tis_level == "seq" else log_ratio_BxT
    # exp(min(log w, log C)) == min(w, C) without overflowing on long sequences.
    loss_BxT = loss_BxT * jax.lax.stop_gradient(jnp.exp(jnp.minimum(log_w, jnp.log(cfg.tis_cap))))
  if cfg.icepop:
    # A token whose rho left [alpha, beta] gives no gradient, yet still counts in the denominator.
    inside_BxT = (ratio_BxT >= cfg.icepop_alpha) & (ratio_BxT <= cfg.icepop_beta)
    loss_BxT = jnp.where(inside_BxT, loss_BxT, 0.0)
  return loss_BxT * x.mask_BxT


def _aggregate(cfg: ml_collections.ConfigDict, loss_BxT: Array, mask_BxT: Array) -> tuple[Array, str]:
  """token_mean: sum / sum(m) over the global batch; seq_mean_token_mean: the mean over responses of each
  response's token mean."""
  token_sum_B = loss_BxT.sum(axis=1)
  if cfg.aggregation == "token_mean":
    return token_sum_B, "tokens"
  return token_sum_B / jnp.maximum(1.0, mask_BxT.sum(axis=1)), "responses"


def grpo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  return _aggregate(cfg, _grpo_token_loss(cfg, x), x.mask_BxT)


def decoupled_ppo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  """AReaL's decoupled PPO: -(pi_prox / mu) min(r A, clip(r) A) with r = pi / sg(pi_prox).

  One update per batch makes the proximal policy the current parameters, frozen: pi_prox = sg(pi), so r is 1
  in value with the gradient of lp. A token whose behaviour weight pi_prox / mu exceeds decoupled_cap drops
  out (AReaL's behav_imp_weight_cap), still counted in the denominator.
  """
  prox_BxT = jax.lax.stop_gradient(x.logprobs_BxT)
  ratio_BxT = jnp.exp((x.logprobs_BxT - prox_BxT) * x.mask_BxT)
  weight_BxT = jnp.exp(jax.lax.stop_gradient(prox_BxT - x.behaviour_logprobs_BxT) * x.mask_BxT)
  if cfg.decoupled_cap > 0:
    weight_BxT = jnp.where(weight_BxT <= cfg.decoupled_cap, weight_BxT, 0.0)
  loss_BxT = weight_BxT * _ppo_token_loss(cfg, ratio_BxT, x.advantages_B) * x.mask_BxT
  return _aggregate(cfg, loss_BxT, x.mask_BxT)


def gspo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  """GSPO: the sequence ratio s_g = exp(mean_t (lp - b)) in the clipped objective, a mean over responses."""
  seq_ratio_B = jnp.exp(_log_ratio(x).sum(axis=1) / jnp.maximum(1.0, x.mask_BxT.sum(axis=1)))
  clipped_B = jnp.clip(seq_ratio_B, 1.0 - cfg.gspo_eps_low, 1.0 + cfg.gspo_eps_high)
  return -jnp.minimum(seq_ratio_B * x.advantages_B, clipped_B * x.advantages_B), "responses"


def cispo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  """CISPO: -sg(clip(rho, 1 - eps_low, 1 + eps_high)) A lp per token, a token mean over the global batch."""
  weight_BxT = jax.lax.stop_gradient(
      jnp.clip(jnp.exp(_log_ratio(x)), 1.0 - cfg.cispo_eps_low, 1.0 + cfg.cispo_eps_high))
  return -(weight_BxT * x.advantages_B[:, None] * x.logprobs_BxT * x.mask_BxT).sum(axis=1), "tokens"


def dr_grpo(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  """Dr. GRPO: grpo's token loss summed per response over the constant N x dr_grpo_max_tokens (N in the
  "responses" denominator); its advantages are never std-normalised (`Objective.raw_advantages`)."""
  if cfg.dr_grpo_max_tokens < 1:
    raise ValueError("objective.dr_grpo_max_tokens is 0: pass the config through objectives.resolve first")
  return _grpo_token_loss(cfg, x).sum(axis=1) / cfg.dr_grpo_max_tokens, "responses"


def nll(cfg: ml_collections.ConfigDict, x: Inputs) -> tuple[Array, str]:
  """Supervised warm start: token-mean NLL of the masked tokens; advantages are ignored."""
  return -(x.logprobs_BxT * x.mask_BxT).sum(axis=1), "tokens"


@dataclasses.dataclass(frozen=True)
class Objective:
  fn: Callable[[ml_collections.ConfigDict, Inputs], tuple[Array, str]]
  keys: Mapping[str, Key] = dataclasses.field(default_factory=dict)  # its own keys of config.objective
  needs_behaviour: bool = False
  uses_advantages: bool = True  # group-relative: needs rollout.group_size >= 2
  raw_advantages: bool = False  # A_g is never std-normalised, whatever advantage.std_normalize says


OBJECTIVES: dict[str, Objective] = {
    "naive": Objective(naive),
    "spo": Objective(spo, {"negative_scale": Key(0.5, _in(0, 1, low_open=True), "must be in (0, 1]")}),
    "asympo": Objective(asympo, {"eps": Key(1e-3, _in(0, _inf, low_open=True), "must be > 0")}),
    "gpg": Objective(gpg),
    "grpo": Objective(grpo, {**GRPO_TOKEN_KEYS, **AGGREGATION_KEY}, needs_behaviour=True),
    "decoupled_ppo": Objective(decoupled_ppo, {
        **PPO_CLIP_KEYS, **AGGREGATION_KEY,
        "decoupled_cap": Key(0.0, lambda v: v == 0 or v > 1, "must be 0 (off) or > 1", switch=True)},
        needs_behaviour=True),
    # GSPO's clip range (Zheng et al. 2025): a length-normalised sequence ratio stays near 1.
    "gspo": Objective(gspo, {"gspo_eps_low": Key(3e-4, _in(0, 1, high_open=True), "must be in [0, 1)"),
                             "gspo_eps_high": Key(4e-4, _in(0, _inf), "must be >= 0")}, needs_behaviour=True),
    # MiniMax-M1 sets no lower bound on the weight (eps_low = 1), and tunes the upper one only.
    "cispo": Objective(cispo, {"cispo_eps_low": Key(1.0, _in(0, 1), "must be in [0, 1]"),
                               "cispo_eps_high": Key(0.28, _in(0, _inf), "must be >= 0")}, needs_behaviour=True),
    "dr_grpo": Objective(dr_grpo, {
        **GRPO_TOKEN_KEYS,
        "dr_grpo_max_tokens": Key(0, _int_at_least(0), "must be an integer >= 0 (0: rollout.max_new_tokens)",
                                  follows="rollout.max_new_tokens")},
        needs_behaviour=True, raw_advantages=True),
    "nll": Objective(nll, uses_advantages=False),
}
DEFAULT = "asympo"


def all_keys() -> dict[str, Key]:
  """Every key of config.objective but `name`: the common ones and each objective's. Objectives that share a
  key share its definition (one default, one range)."""
  keys = dict(COMMON_KEYS)
  for name, objective in OBJECTIVES.items():
    for key, spec in objective.keys.items():
      if keys.setdefault(key, spec) != spec:
        raise ValueError(f"objective {name!r} redefines config.objective.{key}")
  return keys


def config_section() -> ml_collections.ConfigDict:
  """config.objective with its defaults, built from the registry."""
  return ml_collections.ConfigDict({"name": DEFAULT, **{k: spec.default for k, spec in all_keys().items()}})


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks config.objective (and the rollout keys it depends on); raises ConfigError naming the key."""
  o = cfg.objective
  check(o.name in OBJECTIVES, "objective.name", f"unknown objective {o.name!r}; known: {sorted(OBJECTIVES)}")
  objective = OBJECTIVES[o.name]
  for key, spec in all_keys().items():
    check(spec.accepts(o[key]), f"objective.{key}", f"{spec.must}, got {o[key]!r}")
    if spec.switch and key not in objective.keys:
      readers = sorted(n for n, obj in OBJECTIVES.items() if key in obj.keys)
      check(o[key] == spec.default, f"objective.{key}",
            f"is read by {', '.join(readers)} only; objective {o.name!r} would ignore it")
  check(not objective.needs_behaviour or cfg.rollout.record_behaviour_logprobs,
        "rollout.record_behaviour_logprobs",
        f"objective {o.name!r} needs behaviour log-probs; set config.rollout.record_behaviour_logprobs=True")


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.objective with each key that follows another config key, and is 0, set to that key's value."""
  o = ml_collections.ConfigDict(cfg.objective.to_dict())
  for key, spec in all_keys().items():
    if spec.follows and o[key] == 0:
      section, name = spec.follows.split(".")
      o[key] = cfg[section][name]
  return o


def std_normalizes(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the objective of `cfg` trains on std-normalised advantages: advantage.std_normalize, unless its
  definition takes raw ones."""
  return cfg.advantage.std_normalize and not OBJECTIVES[cfg.objective.name].raw_advantages


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
  """Adds the metrics that are not additive over micro-batches (ratios, differences of means), from the
  combined sums.

  neg_pos_ratio is |neg_loss| / |pos_loss|: docs/design.md §5's |neg_loss| / pos_loss where pos_loss > 0 (the
  current-policy family, gpg), and still the sides' size ratio for grpo, whose positive side is negative
  (its per-response loss is -rho * A). 0 when there is no positive side.
  """
  pos, neg = jnp.abs(metrics["balance/pos_loss"]), jnp.abs(metrics["balance/neg_loss"])
  return {**metrics, "balance/neg_pos_ratio": jnp.where(pos > 0, neg / jnp.where(pos > 0, pos, 1.0), 0.0),
          # The paper's mechanism: stale negatives and positives sit at different current-NLL scales.
          "balance/nll_gap": metrics["balance/neg_nll"] - metrics["balance/pos_nll"]}
