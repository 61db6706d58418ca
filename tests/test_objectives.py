"""Properties of the objectives of docs/design.md §2, each checked against independently written formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asympo_jax.train import objectives as obj
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config

P, G, T = 3, 4, 9
B = P * G
ALL = sorted(obj.OBJECTIVES)
seeds = st.integers(0, 2**31 - 1)
few = settings(max_examples=8, deadline=None)


def objective_cfg(name, **kw):
  """config.objective for `name`, resolved against a rollout of T new tokens."""
  cfg = base_config()
  cfg.objective.name = name
  cfg.rollout.max_new_tokens = T
  for k, v in kw.items():
    cfg.objective[k] = v
  return obj.resolve(cfg)


def random_batch(seed, equal_lengths=False):
  """theta_BxT parameterises the current log-probs; the mask has ragged, right-padded responses."""
  rng = np.random.default_rng(seed)
  theta = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
  start = 2
  lengths = np.full(B, T - start) if equal_lengths else rng.integers(1, T - start + 1, size=B)
  mask = np.zeros((B, T), np.float32)
  for b, n in enumerate(lengths):
    mask[b, start:start + n] = 1
  rewards = rng.integers(0, 2, size=B).astype(np.float32)
  rewards[:G] = [1, 0, 1, 0]  # at least one mixed group
  extra = {k: jnp.asarray(rng.normal(size=(B, T)) * 0.3, jnp.float32) for k in ("behaviour", "ref")}
  entropy = jnp.asarray(rng.uniform(0, 2, size=(B, T)), jnp.float32)
  return theta, jnp.asarray(mask), jnp.asarray(rewards), extra, entropy


def logprobs_of(theta):
  return -jax.nn.softplus(theta)  # strictly negative, like real log-probs


def make_inputs(theta, mask, adv, extra=None, entropy=None, on_policy=False):
  lp = logprobs_of(theta)
  if on_policy:
    behaviour = jax.lax.stop_gradient(lp)
  else:
    behaviour = None if extra is None else jax.lax.stop_gradient(lp) + extra["behaviour"]
  ref = None if extra is None else jax.lax.stop_gradient(lp) + extra["ref"]
  return obj.Inputs(lp, mask, adv, behaviour, ref, entropy)


def loss_fn(cfg, mask, adv, extra=None, entropy=None, on_policy=False):
  def f(theta):
    x = make_inputs(theta, mask, adv, extra, entropy, on_policy)
    return obj.loss_and_metrics(cfg, x, obj.denominators(x))
  return f


def independent_nll(theta, mask):
  """l_g written with an explicit loop over responses, independent of obj.response_nll."""
  lp = logprobs_of(theta)
  return jnp.stack([-jnp.sum(lp[g] * mask[g]) / jnp.maximum(1.0, jnp.sum(mask[g])) for g in range(B)])


def test_group_advantages_against_numpy():
  rewards = np.array([1, 0, 0, 1, 2, 2, 2, 2, 0, 1, 3, 0], np.float32)
  adv = np.asarray(obj.group_advantages(jnp.asarray(rewards), G, std_normalize=True))
  for p in range(P):
    r = rewards[p * G:(p + 1) * G]
    expected = np.zeros(G) if r.std() == 0 else (r - r.mean()) / (r.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(adv[p * G:(p + 1) * G], expected, rtol=1e-6, atol=1e-7)
  raw = np.asarray(obj.group_advantages(jnp.asarray(rewards), G, std_normalize=False))
  np.testing.assert_allclose(raw[:G], [0.5, -0.5, -0.5, 0.5])
  assert np.all(raw[G:2 * G] == 0)


# 1. asympo ------------------------------------------------------------------------------------------
@few
@given(seeds, st.booleans())
def test_asympo_terms_zero_sum_and_gradient(seed, std_normalize):
  theta, mask, rewards, _, _ = random_batch(seed)
  adv = obj.group_advantages(rewards, G, std_normalize)
  cfg = objective_cfg("asympo", eps=1e-6)
  x = make_inputs(theta, mask, adv)
  numer, denom = obj.asympo(cfg, x)
  assert denom == "responses"
  np.testing.assert_allclose(numer, adv, rtol=1e-6, atol=1e-6)  # each forward term is exactly A_g
  np.testing.assert_allclose(numer.reshape(P, G).sum(1), 0.0, atol=1e-5)  # zero-sum per group

  grad = jax.grad(lambda t: loss_fn(cfg, mask, adv)(t)[0])(theta)
  l = independent_nll(theta, mask)
  jac_BxBxT = jax.jacrev(independent_nll)(theta, mask)
  expected = jnp.einsum("g,gbt->bt", adv / l, jac_BxBxT) / B
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(grad).max()) > 0  # the gradient is not zero although the loss is


def test_asympo_eps_floors_the_coefficient():
  theta, mask, rewards, _, _ = random_batch(0)
  adv = obj.group_advantages(rewards, G, True)
  x = make_inputs(theta, mask, adv)
  l = independent_nll(theta, mask)
  eps = float(jnp.median(l))
  numer, _ = obj.asympo(objective_cfg("asympo", eps=eps), x)
  np.testing.assert_allclose(numer, adv * l / jnp.maximum(l, eps), rtol=1e-6)


# 2. spo ---------------------------------------------------------------------------------------------
@few
@given(seeds, st.floats(0.05, 1.0))
def test_spo_scales_only_the_negative_side(seed, lam):
  theta, mask, rewards, _, _ = random_batch(seed)
  adv = obj.group_advantages(rewards, G, True)
  x = make_inputs(theta, mask, adv)
  naive_numer, _ = obj.naive(objective_cfg("naive"), x)
  spo_numer, _ = obj.spo(objective_cfg("spo", negative_scale=lam), x)
  expected = np.where(adv > 0, naive_numer, np.where(adv < 0, lam * naive_numer, 0.0))
  np.testing.assert_allclose(spo_numer, expected, rtol=1e-6, atol=1e-7)


@few
@given(seeds)
def test_spo_with_lambda_one_is_naive(seed):
  theta, mask, rewards, _, _ = random_batch(seed)
  adv = obj.group_advantages(rewards, G, True)
  naive = jax.value_and_grad(lambda t: loss_fn(objective_cfg("naive"), mask, adv)(t)[0])(theta)
  spo1 = jax.value_and_grad(lambda t: loss_fn(objective_cfg("spo", negative_scale=1.0), mask, adv)(t)[0])(theta)
  for a, b in zip(naive, spo1):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


# 3. on-policy identities ----------------------------------------------------------------------------
@few
@given(seeds, st.sampled_from([0.0, 3.0]))
def test_grpo_on_policy_gradient_equals_naive(seed, dual_clip):
  theta, mask, rewards, _, _ = random_batch(seed)
  adv = obj.group_advantages(rewards, G, True)
  grpo_cfg = objective_cfg("grpo", dual_clip=dual_clip)
  g_grpo = jax.grad(lambda t: loss_fn(grpo_cfg, mask, adv, on_policy=True)(t)[0])(theta)
  g_naive = jax.grad(lambda t: loss_fn(objective_cfg("naive"), mask, adv)(t)[0])(theta)
  np.testing.assert_allclose(g_grpo, g_naive, rtol=1e-5, atol=1e-8)


@few
@given(seeds)
def test_gpg_equals_naive_for_equal_lengths(seed):
  theta, mask, rewards, _, _ = random_batch(seed, equal_lengths=True)
  adv = obj.group_advantages(rewards, G, True)
  gpg = jax.value_and_grad(lambda t: loss_fn(objective_cfg("gpg"), mask, adv)(t)[0])(theta)
  naive = jax.value_and_grad(lambda t: loss_fn(objective_cfg("naive"), mask, adv)(t)[0])(theta)
  for a, b in zip(gpg, naive):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_grpo_clip_against_a_hand_written_token_loss():
  """token_mean grpo with clip, dual clip and token TIS, against a per-token numpy loop."""
  theta, mask, rewards, extra, _ = random_batch(3)
  adv = np.asarray(obj.group_advantages(rewards, G, True))
  cfg = objective_cfg("grpo", aggregation="token_mean", clip_eps_low=0.1, clip_eps_high=0.3,
                      dual_clip=2.0, tis_cap=1.2)
  x = make_inputs(theta, mask, jnp.asarray(adv), {**extra, "behaviour": extra["behaviour"] * 4})
  loss, _ = obj.loss_and_metrics(cfg, x, obj.denominators(x))
  lp, b, m = (np.asarray(a, np.float64) for a in (x.logprobs_BxT, x.behaviour_logprobs_BxT, mask))
  total = 0.0
  for g in range(B):
    for t in range(T):
      if m[g, t]:
        rho, a = np.exp(lp[g, t] - b[g, t]), adv[g]
        l = -min(rho * a, min(max(rho, 0.9), 1.3) * a)
        if a < 0:
          l = min(l, -2.0 * a)
        total += l * min(rho, 1.2)
  np.testing.assert_allclose(float(loss), total / m.sum(), rtol=1e-5)


# 4. micro-batch exactness ---------------------------------------------------------------------------
# Every objective of the registry at its defaults, then options switched on (every switch is, see below).
OPTIONS = [("grpo", {"aggregation": "token_mean", "dual_clip": 3.0}), ("grpo", {"tis_cap": 1.5, "tis_level": "seq"}),
           ("grpo", {"icepop": True, "icepop_alpha": 0.8, "icepop_beta": 1.3}),
           ("dr_grpo", {"icepop": True, "tis_cap": 1.2, "dual_clip": 2.0, "dr_grpo_max_tokens": 40}),
           ("decoupled_ppo", {"decoupled_cap": 1.3, "aggregation": "token_mean"}),
           ("gspo", {"gspo_eps_low": 0.05, "gspo_eps_high": 0.05}),
           ("asympo", {"kl_coef": 0.1, "entropy_coef": 0.01})]
CASES = [(name, {}) for name in ALL] + OPTIONS


def test_the_option_cases_switch_on_every_switch_of_the_registry():
  switches = {k for k, spec in obj.all_keys().items() if spec.switch}
  covered = {k for name, kw in OPTIONS for k in kw if k in obj.OBJECTIVES[name].keys}
  assert switches <= covered, f"add an OPTIONS case for {sorted(switches - covered)}"


@pytest.mark.parametrize("name,kw", CASES)
def test_micro_batches_give_the_full_batch_loss_gradient_and_metrics(name, kw):
  theta, mask, rewards, extra, entropy = random_batch(11)
  adv = obj.group_advantages(rewards, G, True)
  cfg = objective_cfg(name, **kw)

  def full(t):
    x = make_inputs(t, mask, adv, extra, entropy)
    return obj.loss_and_metrics(cfg, x, obj.denominators(x))

  (loss, metrics), grad = jax.value_and_grad(full, has_aux=True)(theta)
  denoms = obj.denominators(make_inputs(theta, mask, adv, extra, entropy))
  acc_loss, acc_grad, acc_metrics = 0.0, jnp.zeros_like(theta), None
  for rows in np.split(np.arange(B), 4):
    def micro(t_rows):
      x = make_inputs(t_rows, mask[rows], adv[rows],
                      {k: v[rows] for k, v in extra.items()}, entropy[rows])
      return obj.loss_and_metrics(cfg, x, denoms)
    (l, m), g = jax.value_and_grad(micro, has_aux=True)(theta[rows])
    acc_loss += l
    acc_grad = acc_grad.at[rows].set(g)
    acc_metrics = m if acc_metrics is None else obj.combine_metrics(acc_metrics, m)
  np.testing.assert_allclose(acc_loss, loss, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(acc_grad, grad, rtol=1e-6, atol=1e-8)
  full_m, micro_m = obj.finalize_metrics(metrics), obj.finalize_metrics(acc_metrics)
  assert set(full_m) == set(micro_m)
  for k in full_m:
    np.testing.assert_allclose(micro_m[k], full_m[k], rtol=1e-6, atol=1e-7, err_msg=k)


# 5. padding invariance ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", CASES)
def test_masked_positions_change_nothing(name, kw):
  theta, mask, rewards, extra, entropy = random_batch(5)
  adv = obj.group_advantages(rewards, G, True)
  cfg = objective_cfg(name, **kw)
  pad = mask == 0
  garbage = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)) * 50, jnp.float32)
  theta2 = jnp.where(pad, garbage, theta)
  extra2 = {"behaviour": jnp.where(pad, jnp.inf, extra["behaviour"]), "ref": jnp.where(pad, jnp.nan, extra["ref"])}
  entropy2 = jnp.where(pad, 1e30, entropy)
  a = jax.value_and_grad(loss_fn(cfg, mask, adv, extra, entropy), has_aux=True)(theta)
  b = jax.value_and_grad(loss_fn(cfg, mask, adv, extra2, entropy2), has_aux=True)(theta2)
  (la, ma), ga = a
  (lb, mb), gb = b
  np.testing.assert_array_equal(la, lb)
  np.testing.assert_array_equal(ga, gb)
  for k in ma:
    np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)
  assert np.all(np.asarray(ga)[np.asarray(pad)] == 0)


# 6. behaviour log-probs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in ALL if not obj.OBJECTIVES[n].needs_behaviour])
def test_current_policy_objectives_need_no_behaviour_logprobs(name):
  theta, mask, rewards, _, _ = random_batch(2)
  adv = obj.group_advantages(rewards, G, True)
  loss, metrics = loss_fn(objective_cfg(name), mask, adv)(theta)
  assert np.isfinite(float(loss))
  assert not any(k.startswith("offpolicy/") for k in metrics)


@pytest.mark.parametrize("name", [n for n in ALL if obj.OBJECTIVES[n].needs_behaviour])
def test_behaviour_corrected_objectives_without_behaviour_logprobs_are_refused(name):
  theta, mask, rewards, _, _ = random_batch(2)
  adv = obj.group_advantages(rewards, G, True)
  with pytest.raises(ValueError, match="record_behaviour_logprobs"):
    loss_fn(objective_cfg(name), mask, adv)(theta)
  cfg = base_config()
  cfg.objective.name = name
  with pytest.raises(ConfigError, match="config.rollout.record_behaviour_logprobs"):
    obj.validate(cfg)
  cfg.rollout.record_behaviour_logprobs = True
  obj.validate(cfg)


@pytest.mark.parametrize("key,value", [("name", "ppo"), ("negative_scale", 0.0), ("negative_scale", 1.5),
                                       ("eps", 0.0), ("eps", -1e-3), ("dual_clip", 0.5),
                                       ("aggregation", "sum"), ("tis_level", "chunk"), ("tis_cap", -1.0),
                                       ("icepop_alpha", 1.0), ("icepop_beta", 1.0), ("decoupled_cap", 0.5),
                                       ("gspo_eps_low", 1.0), ("gspo_eps_high", -1e-4), ("cispo_eps_low", 1.5),
                                       ("cispo_eps_high", -0.1), ("dr_grpo_max_tokens", -1), ("kl_coef", -0.1)])
def test_bad_objective_values_are_refused_by_key(key, value):
  cfg = base_config()
  cfg.objective[key] = value
  with pytest.raises(ConfigError, match=f"config.objective.{key}"):
    obj.validate(cfg)


def test_the_objective_section_is_built_from_the_registry():
  section = base_config().objective
  assert set(section) == {"name"} | set(obj.all_keys())
  for name, objective in obj.OBJECTIVES.items():
    for key, spec in objective.keys.items():
      assert section[key] == spec.default, (name, key)


@pytest.mark.parametrize("name", ALL)
def test_every_objective_validates_at_its_defaults(name):
  cfg = base_config()
  cfg.objective.name = name
  cfg.rollout.record_behaviour_logprobs = True
  obj.validate(cfg)


@pytest.mark.parametrize("name,key,value", [("asympo", "icepop", True), ("cispo", "tis_cap", 2.0),
                                            ("grpo", "decoupled_cap", 2.0), ("gspo", "dual_clip", 2.0)])
def test_a_switch_the_objective_would_ignore_is_refused(name, key, value):
  cfg = base_config()
  cfg.objective.name, cfg.rollout.record_behaviour_logprobs = name, True
  cfg.objective[key] = value
  with pytest.raises(ConfigError, match=f"config.objective.{key}: is read by"):
    obj.validate(cfg)


def test_a_key_redefined_by_another_objective_is_refused(monkeypatch):
  other = obj.Key(0.1, lambda v: True, "anything")
  monkeypatch.setitem(obj.OBJECTIVES, "other", obj.Objective(obj.naive, {"clip_eps_low": other}))
  with pytest.raises(ValueError, match="redefines config.objective.clip_eps_low"):
    obj.all_keys()


def test_dr_grpo_length_follows_the_rollout_unless_set():
  cfg = base_config()
  cfg.rollout.max_new_tokens = 77
  assert obj.resolve(cfg).dr_grpo_max_tokens == 77
  cfg.objective.dr_grpo_max_tokens = 500
  assert obj.resolve(cfg).dr_grpo_max_tokens == 500
  assert cfg.rollout.max_new_tokens == 77


def test_dr_grpo_advantages_are_never_std_normalised():
  cfg = base_config()
  cfg.advantage.std_normalize = True
  cfg.objective.name = "dr_grpo"
  assert obj.std_normalizes(cfg) is False
  cfg.objective.name = "grpo"
  assert obj.std_normalizes(cfg) is True
  cfg.advantage.std_normalize = False
  assert obj.std_normalizes(cfg) is False


def test_offpolicy_diagnostics_against_numpy():
  theta, mask, rewards, extra, _ = random_batch(4)
  adv = obj.group_advantages(rewards, G, True)
  x = make_inputs(theta, mask, adv, extra)
  _, m = obj.loss_and_metrics(objective_cfg("asympo"), x, obj.denominators(x))
  lp, b = (np.asarray(a, np.float64) for a in (x.logprobs_BxT, x.behaviour_logprobs_BxT))
  ratios, kls = [], []
  for g in range(B):
    for t in range(T):
      if mask[g, t]:
        ratios.append(np.exp(lp[g, t] - b[g, t]))
        kls.append(ratios[-1] - 1 - (lp[g, t] - b[g, t]))
  np.testing.assert_allclose(m["offpolicy/ratio_mean"], np.mean(ratios), rtol=1e-5)
  np.testing.assert_allclose(m["offpolicy/ratio_max"], np.max(ratios), rtol=1e-5)
  np.testing.assert_allclose(m["offpolicy/kl"], np.mean(kls), rtol=1e-4)


# 8. the scale-imbalance case of docs/design.md §1 --------------------------------------------------
def imbalanced_group():
  """One group of 4: two correct responses at NLL 0.2 per token, two wrong ones at NLL 3.0."""
  mask = jnp.ones((4, 6), jnp.float32)
  lp = jnp.asarray([[-0.2] * 6, [-0.2] * 6, [-3.0] * 6, [-3.0] * 6], jnp.float32)
  adv = obj.group_advantages(jnp.asarray([1.0, 1.0, 0.0, 0.0]), 4, std_normalize=False)
  return obj.Inputs(lp, mask, adv)


@pytest.mark.parametrize("name,kw,ratio,net", [
    ("naive", {}, 15.0, (0.5 * 0.2 * 2 - 0.5 * 3.0 * 2) / 4),
    ("spo", {"negative_scale": 0.5}, 7.5, (0.5 * 0.2 * 2 - 0.5 * 0.5 * 3.0 * 2) / 4),
    ("asympo", {}, 1.0, 0.0),
])
def test_scale_imbalance_case(name, kw, ratio, net):
  x = imbalanced_group()
  _, m = obj.loss_and_metrics(objective_cfg(name, **kw), x, obj.denominators(x))
  m = obj.finalize_metrics(m)
  np.testing.assert_allclose(m["balance/pos_nll"], 0.2, rtol=1e-6)
  np.testing.assert_allclose(m["balance/neg_nll"], 3.0, rtol=1e-6)
  np.testing.assert_allclose(m["balance/nll_gap"], 3.0 - 0.2, rtol=1e-6)
  np.testing.assert_allclose(m["balance/neg_pos_ratio"], ratio, rtol=1e-5)
  np.testing.assert_allclose(m["balance/net_loss"], net, atol=1e-6)


def test_grpo_balance_is_a_ratio_of_magnitudes():
  # grpo's per-response loss is -rho * A (not C * A * l), so its positive side is negative: on-policy (rho = 1)
  # the two sides are -(0.5 + 0.5) / 4 and +(0.5 + 0.5) / 4 whatever the NLL scales, a ratio of 1.
  x = imbalanced_group()
  x = x._replace(behaviour_logprobs_BxT=x.logprobs_BxT)
  _, m = obj.loss_and_metrics(objective_cfg("grpo"), x, obj.denominators(x))
  m = obj.finalize_metrics(m)
  np.testing.assert_allclose([m["balance/pos_loss"], m["balance/neg_loss"]], [-0.25, 0.25], rtol=1e-6)
  np.testing.assert_allclose(m["balance/neg_pos_ratio"], 1.0, rtol=1e-6)


# 9. the behaviour-corrected baselines of docs/design.md §2.3, each against its paper's formula ------------
# Each reference is a per-token loop in float64 giving the loss and its gradient with respect to the current
# log-probs lp, derived by hand; the objective's are taken by jax.grad through loss_and_metrics.

def baseline_batch(seed, spread):
  """(lp, b, mask, adv) in float64: ragged padded responses; b = lp + noise of scale `spread`."""
  theta, mask, rewards, extra, _ = random_batch(seed)
  lp = np.asarray(logprobs_of(theta), np.float64)
  b = lp + np.asarray(extra["behaviour"], np.float64) * spread / 0.3
  adv = np.asarray(obj.group_advantages(rewards, G, True), np.float64)
  return lp, b, np.asarray(mask, np.float64), adv


def objective_value_and_grad(cfg, lp, b, mask, adv):
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  b, mask, adv = f32(b), f32(mask), f32(adv)

  def loss(lp_BxT):
    x = obj.Inputs(lp_BxT, mask, adv, b)
    return obj.loss_and_metrics(cfg, x, obj.denominators(x))[0]
  return jax.value_and_grad(loss)(f32(lp))


def ppo_term(ratio, a, low, high, dual=0.0):
  """-min(r a, clip(r, 1 - low, 1 + high) a) with the dual clip, and its derivative in r."""
  unclipped, clipped = ratio * a, min(max(ratio, 1 - low), 1 + high) * a
  if unclipped <= clipped:  # equal inside the clip range, where both sides have derivative a
    loss, d_ratio = -unclipped, -a
  else:
    loss, d_ratio = -clipped, 0.0
  if dual and a < 0 and loss > -dual * a:
    loss, d_ratio = -dual * a, 0.0
  return loss, d_ratio


def assert_matches(cfg, lp, b, mask, adv, want_loss, want_grad):
  loss, grad = objective_value_and_grad(cfg, lp, b, mask, adv)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)
  assert np.abs(want_grad).max() > 0


@few
@given(seeds, st.sampled_from([{}, {"aggregation": "token_mean", "dual_clip": 1.5}]))
def test_decoupled_ppo_against_areal(seed, kw):
  """AReaL: -(pi_prox / mu) min(r A, clip(r) A), r = pi / pi_prox, pi_prox the current params (one update)."""
  lp, b, mask, adv = baseline_batch(seed, spread=0.6)
  cap = 1.5
  cfg = objective_cfg("decoupled_ppo", decoupled_cap=cap, **kw)
  total, grad = 0.0, np.zeros_like(lp)
  dropped = 0
  for g in range(B):
    n = mask[g].sum()
    scale = 1.0 / mask.sum() if kw else 1.0 / (B * n)
    for t in range(T):
      if mask[g, t]:
        weight = np.exp(lp[g, t] - b[g, t])  # pi_prox / mu, with pi_prox = pi in value
        if weight > cap:
          dropped += 1
          continue
        loss, d_ratio = ppo_term(1.0, adv[g], 0.2, 0.2, kw.get("dual_clip", 0.0))
        total += weight * loss * scale
        grad[g, t] = weight * d_ratio * scale  # d r / d lp = 1 at r = 1
  assert dropped > 0
  assert_matches(cfg, lp, b, mask, adv, total, grad)


@few
@given(seeds, st.sampled_from([{}, {"tis_cap": 1.3}]))
def test_grpo_icepop_against_the_ling_report(seed, kw):
  """IcePop: grpo's token loss, zero (no gradient) where rho is outside [alpha, beta]; the denominator keeps
  those tokens."""
  lp, b, mask, adv = baseline_batch(seed, spread=0.6)
  alpha, beta = 0.7, 1.6
  cfg = objective_cfg("grpo", icepop=True, icepop_alpha=alpha, icepop_beta=beta, **kw)
  total, grad, masked = 0.0, np.zeros_like(lp), 0
  for g in range(B):
    n = mask[g].sum()
    for t in range(T):
      if mask[g, t]:
        rho = np.exp(lp[g, t] - b[g, t])
        if not alpha <= rho <= beta:
          masked += 1
          continue
        loss, d_ratio = ppo_term(rho, adv[g], 0.2, 0.2)
        w = min(rho, kw["tis_cap"]) if kw else 1.0
        total += w * loss / (B * n)
        grad[g, t] = w * d_ratio * rho / (B * n)
  assert masked > 0
  assert_matches(cfg, lp, b, mask, adv, total, grad)


@few
@given(seeds, st.sampled_from([{}, {"gspo_eps_low": 0.05, "gspo_eps_high": 0.08}]))
def test_gspo_against_its_paper(seed, kw):
  """GSPO: s_g = (pi(y_g) / mu(y_g))^(1 / |y_g|); -min(s A, clip(s) A), a mean over responses."""
  lp, b, mask, adv = baseline_batch(seed, spread=0.2)
  cfg = objective_cfg("gspo", **kw)
  low, high = kw.get("gspo_eps_low", 3e-4), kw.get("gspo_eps_high", 4e-4)
  total, grad = 0.0, np.zeros_like(lp)
  for g in range(B):
    n = mask[g].sum()
    log_seq_ratio = sum(lp[g, t] - b[g, t] for t in range(T) if mask[g, t])
    s = np.exp(log_seq_ratio / n)
    loss, d_s = ppo_term(s, adv[g], low, high)
    total += loss / B
    for t in range(T):
      if mask[g, t]:
        grad[g, t] = d_s * s / n / B
  assert_matches(cfg, lp, b, mask, adv, total, grad)


@few
@given(seeds, st.sampled_from([{}, {"cispo_eps_low": 0.2, "cispo_eps_high": 0.1}]))
def test_cispo_against_minimax_m1(seed, kw):
  """CISPO: -sg(clip(rho, 1 - eps_low, 1 + eps_high)) A lp per token, a token mean over the batch."""
  lp, b, mask, adv = baseline_batch(seed, spread=0.6)
  cfg = objective_cfg("cispo", **kw)
  low, high = kw.get("cispo_eps_low", 1.0), kw.get("cispo_eps_high", 0.28)
  total, grad = 0.0, np.zeros_like(lp)
  for g in range(B):
    for t in range(T):
      if mask[g, t]:
        w = min(max(np.exp(lp[g, t] - b[g, t]), 1 - low), 1 + high)
        total += -w * adv[g] * lp[g, t] / mask.sum()
        grad[g, t] = -w * adv[g] / mask.sum()
  assert_matches(cfg, lp, b, mask, adv, total, grad)


@few
@given(seeds, st.sampled_from([{}, {"dual_clip": 1.5, "dr_grpo_max_tokens": 20}]))
def test_dr_grpo_against_its_paper(seed, kw):
  """Dr. GRPO: the clipped token loss summed per response, over the constant N x max tokens (not |y_g|)."""
  lp, b, mask, adv = baseline_batch(seed, spread=0.6)
  cfg = objective_cfg("dr_grpo", **kw)
  length = kw.get("dr_grpo_max_tokens", T)  # objective_cfg's rollout.max_new_tokens is T
  total, grad = 0.0, np.zeros_like(lp)
  for g in range(B):
    for t in range(T):
      if mask[g, t]:
        rho = np.exp(lp[g, t] - b[g, t])
        loss, d_ratio = ppo_term(rho, adv[g], 0.2, 0.2, kw.get("dual_clip", 0.0))
        total += loss / (B * length)
        grad[g, t] = d_ratio * rho / (B * length)
  assert_matches(cfg, lp, b, mask, adv, total, grad)


@few
@given(seeds, st.booleans())
def test_decoupled_ppo_is_the_importance_weighted_policy_gradient(seed, stale):
  """One update per batch (r = 1): the gradient is -sum_t sg(pi / mu) A grad(lp) / sum(m); at staleness 0
  (mu = pi) that is GPG's."""
  theta, mask, rewards, extra, _ = random_batch(seed)
  adv = obj.group_advantages(rewards, G, True)
  cfg = objective_cfg("decoupled_ppo", aggregation="token_mean")
  grad = jax.grad(lambda t: loss_fn(cfg, mask, adv, extra, on_policy=not stale)(t)[0])(theta)

  def weighted_pg_surrogate(t):
    lp = logprobs_of(t)
    b = jax.lax.stop_gradient(lp) + (extra["behaviour"] if stale else 0.0)
    terms = [jax.lax.stop_gradient(jnp.exp(lp[g, u] - b[g, u])) * adv[g] * lp[g, u]
             for g in range(B) for u in range(T) if mask[g, u]]
    return -sum(terms) / mask.sum()
  np.testing.assert_allclose(grad, jax.grad(weighted_pg_surrogate)(theta), rtol=1e-5, atol=1e-7)
  if not stale:
    gpg = jax.grad(lambda t: loss_fn(objective_cfg("gpg"), mask, adv)(t)[0])(theta)
    np.testing.assert_allclose(grad, gpg, rtol=1e-5, atol=1e-8)


@few
@given(seeds)
def test_cispo_at_ratio_one_is_gpg(seed):
  theta, mask, rewards, _, _ = random_batch(seed)
  adv = obj.group_advantages(rewards, G, True)
  cispo = jax.value_and_grad(lambda t: loss_fn(objective_cfg("cispo"), mask, adv, on_policy=True)(t)[0])(theta)
  gpg = jax.value_and_grad(lambda t: loss_fn(objective_cfg("gpg"), mask, adv)(t)[0])(theta)
  for a, b in zip(cispo, gpg):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
