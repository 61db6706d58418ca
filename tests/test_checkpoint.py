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
from tests.train_fixtures import truncate_data_files


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


def _w(step):
  """A distinct array per step."""
  return jax.random.normal(jax.random.key(step), (4096,))


def _target(meta, shape=(4096,)):
  del meta  # every step here has the same shapes
  return {"w": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}


def test_a_corrupt_newest_checkpoint_is_skipped_kept_and_its_step_saved_again(tmp_path, caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, {"w": _w(step)}, {"step": step})
  ckpt.close()
  truncate_data_files(tmp_path / "checkpoints" / "3")

  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  with caplog.at_level(logging.WARNING):
    step, state, meta = ckpt.restore_newest_intact(_target)
  assert (step, meta) == (2, {"step": 2})
  np.testing.assert_array_equal(state["w"], _w(2))
  (warning,) = [m for m in caplog.messages if "skipped checkpoint" in m]
  assert f"{ckpt.directory}/3" in warning and "OUT_OF_RANGE" in warning and "step 2" in warning
  # Kept for inspection, outside the steps the run sees; its step is saved again, then rotates out normally.
  assert sorted(os.listdir(tmp_path / "checkpoints_skipped")) == ["3"]
  assert ckpt.all_steps() == [2]
  ckpt.save(3, {"w": _w(30)}, {"step": 3})
  ckpt.save(4, {"w": _w(40)}, {"step": 4})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.all_steps() == [3, 4]
  assert ckpt.restore_newest_intact(_target)[0] == 4
  np.testing.assert_array_equal(ckpt.restore(3, _target(None))[0]["w"], _w(30))
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints_skipped")) == ["3"]


def test_a_step_skipped_twice_is_kept_twice(tmp_path):
  for rerun in range(2):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    for step in (1, 2) if rerun == 0 else (2,):
      ckpt.save(step, {"w": _w(step)}, {"step": step})
    ckpt.close()
    truncate_data_files(tmp_path / "checkpoints" / "2")
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
    assert ckpt.restore_newest_intact(_target)[0] == 1
    ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints_skipped")) == ["2", "2.1"]


def test_when_no_checkpoint_restores_the_error_is_raised_and_nothing_moves(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2):
    ckpt.save(step, {"w": _w(step)}, {"step": step})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(Exception):  # a run whose model changed shape
    ckpt.restore_newest_intact(lambda meta: _target(meta, (64, 32)))
  assert ckpt.all_steps() == [1, 2] and not (tmp_path / "checkpoints_skipped").exists()
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path / "empty"), keep=1).restore_newest_intact(_target) is None
