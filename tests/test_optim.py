"""The optimizer against a hand-written AdamW, its schedules, and the non-finite guard."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asympo_jax.train import optim
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config


def _cfg(**kw):
  c = base_config().optim
  c.update(kw)
  return c


def _adamw_reference(params, grads_seq, lr_seq, b1, b2, wd, clip, eps=1e-8):
  """Plain numpy AdamW with global-norm clipping; weight decay on arrays with ndim >= 2."""
  p = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t, (g, lr) in enumerate(zip(grads_seq, lr_seq), start=1):
    g = {k: np.array(x, np.float64) for k, x in g.items()}
    norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
    scale = min(1.0, clip / norm) if clip > 0 else 1.0
    for k in p:
      gk = g[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * gk
      v2[k] = b2 * v2[k] + (1 - b2) * gk ** 2
      upd = (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + eps)
      if p[k].ndim >= 2:
        upd = upd + wd * p[k]
      p[k] = p[k] - lr * upd
  return p


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_matches_handwritten_adamw(clip):
  cfg = _cfg(lr=0.1, warmup_steps=2, schedule="cosine", weight_decay=0.1, clip_norm=clip)
  tx, schedule = optim.make_optimizer(cfg, total_steps=5)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)]
  # Warmup 0 -> 0.1 over 2 steps, then cosine over the 3 remaining: written out by hand.
  lr_seq = [0.0, 0.05] + [0.05 * (1 + np.cos(np.pi * i / 3)) for i in range(3)]
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  for t, g in enumerate(grads_seq):
    np.testing.assert_allclose(optim.current_lr(schedule, state), lr_seq[t], rtol=1e-6, atol=1e-9)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  want = _adamw_reference(params, grads_seq, lr_seq, 0.9, 0.999, 0.1, clip)
  for k in params:
    np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_update_is_skipped_and_counted(bad):
  tx, schedule = optim.make_optimizer(_cfg(lr=0.1, warmup_steps=0), total_steps=10)
  p = {"w": jnp.ones((2, 2))}
  state = tx.init(p)
  good = {"w": jnp.full((2, 2), 0.5)}
  updates, state = tx.update(good, state, p)
  p = optax.apply_updates(p, updates)
  before_p, before_state = p, state
  updates, state = tx.update({"w": jnp.array([[1.0, bad], [0.0, 1.0]])}, state, p)
  p = optax.apply_updates(p, updates)
  np.testing.assert_array_equal(p["w"], before_p["w"])
  assert int(optim.skipped_updates(state)) == 1
  for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(before_state.inner_state)):
    np.testing.assert_array_equal(a, b)
  # A later finite step applies normally, and the count stays.
  updates, state = tx.update(good, state, p)
  assert not np.array_equal(optax.apply_updates(p, updates)["w"], p["w"])
  assert int(optim.skipped_updates(state)) == 1


@pytest.mark.parametrize("key,value", [("lr", 0.0), ("warmup_steps", -1), ("schedule", "linear"),
                                       ("b2", 1.0), ("clip_norm", -1.0), ("weight_decay", -0.1)])
def test_bad_values_name_the_key(key, value):
  with pytest.raises(ConfigError, match=f"optim.{key}"):
    optim.validate(_cfg(**{key: value}))
