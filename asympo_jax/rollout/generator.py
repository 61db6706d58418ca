"""The host-side asynchronous rollout generator (docs/design.md §3): one thread, one lagged parameter copy.

The generator knows nothing about models. It calls `build_batch(params, step) -> (batch, info)` on its own
thread, where `batch` is a TrainBatch (train_batch.py) and `info` a dict of scalar metrics (reward mean,
response length, ...). The generator sets every batch's `policy_version_B`.

Learner-side API:

    with RolloutGenerator(build_batch, params0, cfg.rollout, num_steps) as gen:
      for step in range(num_steps):
        batch, metrics = gen.get(step)          # blocks until batch `step` is ready
        params = train_step(params, batch)      # params is now version step + 1
        gen.publish(params, step + 1)

Versions count updates: version v is the parameters after v learner updates (`params0` is version
`params0_version`, default `start_step`, 0 for a fresh run; a resumed run that restored the batches of
steps s .. s+k-1 from its checkpoint starts at `start_step` s+k with `params0_version` s).
Modes (`rollout.mode`, staleness k = `rollout.staleness`):

- `fixed_lag`: batch t is sampled with version max(params0_version, t - k), whatever the timing, so a run is
  deterministic when `build_batch` is. k = 0 is synchronous: batch t waits for version t.
- `bounded`: batch t is sampled with the newest version published when it starts, and starts only once
  version t - k is published, so its lag lies in [0, k] as timing gives it. Not deterministic.

In both modes the thread starts batch t only once version t - k is out, so while the learner trains step s at
most k finished batches (s+1 .. s+k) wait for it. The thread holds the parameters it samples with and at most
one published copy it has not yet taken up. In fixed_lag a publish waits while that slot still holds an
older version (the generator is then the bottleneck, so the learner would have waited for data anyway); that
wait counts as `time/wait_for_data`.

`publish` copies the parameters through `transfer` before returning, because a train step that donates its
parameters deletes the arrays it was given. With disjoint rollout devices `transfer` is the resharding
device_put onto the rollout mesh (see sampler.py).

Metrics returned by `get`: `rollout/lag_mean`, `rollout/lag_max` (step minus policy_version over the rows),
`time/wait_for_data` (learner blocked in get and publish since the previous get), `time/rollout_idle`
(generator waiting for parameters before this batch), `time/generate` (the build call) and `info`.

A failure in `build_batch` is re-raised by the learner's next (or current, blocked) `get` or `publish` as a
`RolloutError` chained to the original exception and its traceback. `close` (or leaving the `with` block)
stops the thread and joins it; a build in progress is allowed to finish.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from asympo_jax.common.checks import check
from asympo_jax.rollout.train_batch import TrainBatch, num_rows

Params = Any
BuildFn = Callable[[Params, int], tuple[TrainBatch, dict[str, float]]]

MODES = ("fixed_lag", "bounded")


class RolloutError(RuntimeError):
  """The generator thread failed; the original exception is the __cause__."""


def validate(cfg_rollout: ml_collections.ConfigDict) -> None:
  """Checks the generator's keys of config.rollout."""
  check(isinstance(cfg_rollout.staleness, int) and cfg_rollout.staleness >= 0, "rollout.staleness",
        f"must be an integer >= 0, got {cfg_rollout.staleness!r}")
  check(cfg_rollout.mode in MODES, "rollout.mode", f"must be one of {MODES}, got {cfg_rollout.mode!r}")


def copy_params(params: Params) -> Params:
  """A copy that survives the learner donating `params` to its next train step."""
  return jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, params)


class RolloutGenerator:
  """Samples train batches on a host thread with lagged parameters; see the module docstring."""

  def __init__(self, build_batch: BuildFn, params0: Params, cfg_rollout: ml_collections.ConfigDict,
               num_steps: int, *, start_step: int = 0, params0_version: int | None = None,
               transfer: Callable[[Params], Params] = copy_params) -> None:
    validate(cfg_rollout)
    self._build = build_batch
    self._transfer = transfer
    self._k = cfg_rollout.staleness
    self._fixed = cfg_rollout.mode == "fixed_lag"
    self._start = start_step
    self._v0 = start_step if params0_version is None else params0_version
    self._num_steps = num_steps
    self._cond = threading.Condition()
    self._ready: dict[int, tuple[TrainBatch, dict[str, float]]] = {}
    self._published = self._v0  # newest version handed to publish (or params0's)
    self._slot: tuple[int, Params] | None = None  # published, not yet taken by the thread
    self._next_get = start_step
    self._publish_wait = 0.0
    self._error: BaseException | None = None
    self._stop = False
    self._thread = threading.Thread(target=self._run, args=(transfer(params0),), name="rollout", daemon=True)
    self._thread.start()

  # ---------------------------------------------------------------- learner side
  def get(self, step: int) -> tuple[TrainBatch, dict[str, float]]:
    """The batch for learner step `step` (steps must be asked for in order) and its metrics."""
    if step != self._next_get or step >= self._num_steps:
      raise ValueError(f"get({step}): expected step {self._next_get} of {self._num_steps}, in order")
    if self._published < step - self._k:  # would wait forever
      raise ValueError(f"get({step}) needs parameter version {step - self._k} published; "
                       f"the newest is {self._published}")
    t0 = time.perf_counter()
    with self._cond:
      self._wait_learner(lambda: step in self._ready)
      batch, metrics = self._ready.pop(step)
      waited = time.perf_counter() - t0 + self._publish_wait
      self._publish_wait = 0.0
    self._next_get += 1
    lag = step - np.asarray(batch.policy_version_B)
    return batch, {**metrics, "rollout/lag_mean": float(lag.mean()), "rollout/lag_max": float(lag.max()),
                   "time/wait_for_data": waited}

  def publish(self, params: Params, version: int) -> None:
    """Hands the generator parameter version `version` (the params after `version` learner updates)."""
    # fixed_lag samples one batch with every version, so none may be skipped.
    if version <= self._published or (self._fixed and version != self._published + 1):
      raise ValueError(f"publish: version {version} after {self._published} "
                       f"({'consecutive' if self._fixed else 'increasing'} versions expected)")
    last_useful = self._num_steps - 1 - (self._k if self._fixed else 0)
    with self._cond:
      self._raise_if_failed()
      if version > last_useful:  # no batch is left to sample with it
        self._published = version
        return
      if self._fixed:  # wait until the thread took up the previous version
        t0 = time.perf_counter()
        self._wait_learner(lambda: self._slot is None)
        self._publish_wait += time.perf_counter() - t0
    copy = self._transfer(params)  # outside the lock: the thread may take the slot up meanwhile
    with self._cond:
      self._slot = (version, copy)
      self._published = version
      self._cond.notify_all()

  def close(self) -> None:
    """Stops the thread and waits for it (a build in progress finishes first)."""
    with self._cond:
      self._stop = True
      self._slot = None
      self._cond.notify_all()
    self._thread.join()

  def __enter__(self) -> "RolloutGenerator":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def _wait_learner(self, ready: Callable[[], bool]) -> None:
    self._raise_if_failed()
    while not ready():
      if self._stop:
        raise RolloutError("the rollout generator is closed")
      self._cond.wait()
      self._raise_if_failed()

  def _raise_if_failed(self) -> None:
    if self._error is not None:
      raise RolloutError(f"the rollout generator failed: {self._error!r}") from self._error

  # ---------------------------------------------------------------- generator thread
  def _run(self, params: Params) -> None:
    version = self._v0
    try:
      for step in range(self._start, self._num_steps):
        need = max(self._v0, step - self._k)
        t0 = time.perf_counter()
        with self._cond:
          while not self._stop and (self._slot is None or self._slot[0] < need) and version < need:
            self._cond.wait()
          if self._stop:
            return
          # fixed_lag takes exactly version `need` (the slot then holds it); bounded takes the newest.
          if self._slot is not None and (not self._fixed or version < need):
            version, params = self._slot
            self._slot = None
            self._cond.notify_all()
        idle = time.perf_counter() - t0
        t1 = time.perf_counter()
        batch, info = self._build(params, step)
        batch = batch._replace(policy_version_B=np.full((num_rows(batch),), version, np.int32))
        metrics = {**info, "time/rollout_idle": idle, "time/generate": time.perf_counter() - t1}
        with self._cond:
          self._ready[step] = (batch, metrics)
          self._cond.notify_all()
    except BaseException as e:  # surfaced in the learner by get / publish
      with self._cond:
        self._error = e
        self._cond.notify_all()
