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
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from asympo_jax.common.checks import check

CHECKPOINT_DIR = "checkpoints"
SKIPPED_DIR = "checkpoints_skipped"  # where checkpoints that failed to restore are kept for inspection


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


def any_process(flag: bool) -> bool:
  """True on every process when any process has `flag` (a signal, or a failed read, reaches them one by one)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _reason(error: BaseException) -> str:
  """The root cause of a failed restore, in one line: tensorstore wraps its OUT_OF_RANGE or DATA_LOSS in an
  error that spells out the whole store spec."""
  while error.__cause__ is not None:
    error = error.__cause__
  first = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {first[:300]}"


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int):
    quiet_orbax_info_logs()
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.skipped_directory = os.path.abspath(os.path.join(workdir, SKIPPED_DIR))
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

  def restore_newest_intact(self, abstract_state: Callable[[dict[str, Any]], Any]
                            ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, meta) of the newest checkpoint that restores, or None when the run has none.

    `abstract_state(meta)` gives the restore target of a checkpoint from its meta. A newer checkpoint that
    fails to restore (a truncated or missing file: a kill or a full disk mid-write) is logged with the
    reason and moved to `workdir/checkpoints_skipped/<step>`: kept for inspection, and out of the way of the
    resumed run, which saves that step again. When no checkpoint restores, the newest one's error is raised
    and nothing moves: every checkpoint failing points at the run (a changed model, say), not at one file.
    """
    failed: list[tuple[int, Exception]] = []
    for step in sorted(self.all_steps(), reverse=True):
      error = None
      try:
        state, meta = self.restore(step, abstract_state(self.restore_meta(step)))
      except Exception as e:  # noqa: BLE001 -- tensorstore and orbax raise plain Exceptions for bad files
        error = e
      if any_process(error is not None):  # every process resumes from the same step
        failed.append((step, error or RuntimeError("failed to restore on another process")))
        continue
      for bad, bad_error in failed:
        self._set_aside(bad, f"it does not restore ({_reason(bad_error)}); resuming from step {step} instead")
      if failed:
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices("asympo_jax: skipped checkpoints set aside")
        self._manager.reload()
      return step, state, meta
    if failed:
      raise failed[0][1]
    return None

  def _set_aside(self, step: int, why: str) -> None:
    """Moves the checkpoint of `step` under `skipped_directory` (process 0; a step skipped again gets a
    suffix), and says so."""
    if jax.process_index() != 0:
      return
    os.makedirs(self.skipped_directory, exist_ok=True)
    target, suffix = os.path.join(self.skipped_directory, str(step)), 1
    while os.path.exists(target):
      target, suffix = os.path.join(self.skipped_directory, f"{step}.{suffix}"), suffix + 1
    os.replace(os.path.join(self.directory, str(step)), target)
    absl_logging.warning("skipped checkpoint %s/%d: %s; moved to %s for inspection", self.directory, step, why,
                         target)

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
