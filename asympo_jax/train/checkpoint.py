"""Checkpoints through orbax's CheckpointManager, and the stop signals that trigger a final save.

A checkpoint has two items: `state`, a pytree of (possibly sharded, multi-host) jax arrays (the trainer puts
params, optimizer state and the rollout batches already sampled for the next steps there), and `meta`, a
JSON dict (the trainer's: step, RNG key, data position, config). Restoring `state` needs an abstract pytree
(jax.ShapeDtypeStruct with shardings) so every array lands directly in its target sharding.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from asympo_jax.common.checks import check

CHECKPOINT_DIR = "checkpoints"


def validate(cfg_checkpoint: ml_collections.ConfigDict) -> None:
  check(cfg_checkpoint.every >= 0, "checkpoint.every", f"must be >= 0 (0: only at the end), got {cfg_checkpoint.every}")
  check(cfg_checkpoint.keep >= 1, "checkpoint.keep", f"must be >= 1, got {cfg_checkpoint.keep}")


class OrbaxInfoFilter(logging.Filter):
  """Drops orbax's INFO (and DEBUG) log records unless absl's verbosity asks for DEBUG (`--verbosity=1`):
  they were about 260 of the 390 log lines of the embedded default run. Orbax's warnings and errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING or absl_logging.get_verbosity() >= absl_logging.DEBUG
            or f"{os.sep}orbax{os.sep}" not in record.pathname)


def quiet_orbax_info_logs() -> None:
  """Installs OrbaxInfoFilter on absl's log handler (once)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, OrbaxInfoFilter) for f in handler.filters):
    handler.addFilter(OrbaxInfoFilter())


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int):
    quiet_orbax_info_logs()
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Starts an asynchronous save; a later save or `close` waits for it."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(dict(meta))), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step`; `abstract_state` gives every array's shape, dtype and sharding."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract(tree: Any) -> Any:
  """The restore target of a pytree of jax arrays: shapes, dtypes and shardings, no data."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class StopSignals:
  """Turns SIGTERM and SIGINT into a flag the training loop polls between steps.

  Saving inside the handler could interrupt a running computation; the loop instead finishes the step
  it is in, saves, and stops. A second signal of the same kind falls back to the previous handler.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.event = threading.Event()
    self.received: int | None = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.event.is_set():
      self.restore()
      signal.raise_signal(signum)
      return
    self.received = signum
    self.event.set()

  def is_set(self) -> bool:
    return self.event.is_set()

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
