"""Checkpointer: round trip of sharded arrays and JSON meta, keep-N, restore into another sharding."""
import logging
import os
import signal

import jax
import pytest
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from asympo_jax.train import checkpoint


def _mesh(shape):
  return Mesh(np.array(jax.devices()).reshape(shape), ("data", "fsdp", "tensor"))


def test_round_trip_keep_n_and_resharding(tmp_path):
  mesh = _mesh((2, 2, 2))
  w = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("fsdp", "tensor")))
  key = jax.random.key_data(jax.random.key(7))
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": w * step, "rng": key}, {"step": step, "data_position": {"epoch": 0, "index": step}})
  ckpt.close()

  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.all_steps() == [2, 3]
  assert ckpt.latest_step() == 3
  other = _mesh((1, 4, 2))
  target = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(other, P(None, "fsdp"))),
            "rng": checkpoint.abstract(key)}
  state, meta = ckpt.restore(3, target)
  np.testing.assert_array_equal(state["w"], np.arange(32.0).reshape(8, 4) * 3)
  assert state["w"].sharding == target["w"].sharding
  np.testing.assert_array_equal(state["rng"], key)
  assert meta == {"step": 3, "data_position": {"epoch": 0, "index": 3}}
  assert ckpt.restore_meta(2)["step"] == 2
  ckpt.close()
  assert sorted(os.listdir(ckpt.directory)) == ["2", "3"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_set_the_flag_instead_of_killing(sig):
  before = signal.getsignal(sig)
  stop = checkpoint.StopSignals()
  try:
    assert not stop.is_set()
    signal.raise_signal(sig)
    assert stop.is_set() and stop.received == sig
  finally:
    stop.restore()
  assert signal.getsignal(sig) is before


def test_orbax_info_records_are_dropped_and_warnings_kept(monkeypatch):
  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
  ours = os.path.join(os.sep, "repo", "asympo_jax", "train", "loop.py")
  record = lambda path, level: logging.LogRecord("absl", level, path, 1, "message", None, None)
  checkpoint.quiet_orbax_info_logs()
  checkpoint.quiet_orbax_info_logs()
  handler = absl_logging.get_absl_handler()
  assert sum(isinstance(f, checkpoint.OrbaxInfoFilter) for f in handler.filters) == 1
  assert not handler.filter(record(orbax_file, logging.INFO))
  assert handler.filter(record(orbax_file, logging.WARNING))
  assert handler.filter(record(ours, logging.INFO))
  monkeypatch.setattr(absl_logging, "get_verbosity", lambda: absl_logging.DEBUG)  # --verbosity=1
  assert handler.filter(record(orbax_file, logging.INFO))
