"""Verifiable rewards for batches of outputs, in worker processes with a per-answer deadline.

A reward is 1 when the output's final answer (asympo_jax/data/answers.py: the last \\boxed{}, the "####"
line or the final number) is equivalent to the gold answer under math-verify (1/2 = 0.5 = \\frac{1}{2};
1,000 = 1000; x=3 = 3), else 0; reasoning-gym problems use the gym's own scorer (scoring.py).

Why processes: sympy can spend minutes inside one C-level call (10^{10^{10}}), where no signal or thread can
interrupt it, and math-verify's SIGALRM timeouts only work on a main thread, which the rollout's scoring
thread is not. So answers are scored in worker subprocesses; a worker that misses an answer's deadline is
killed and replaced, that answer gets reward 0 and the `timeout` counter goes up; a worker that dies gives
`crash`. Items travel in chunks (low per-answer overhead) and results come back one by one (so the deadline
is per answer). Workers are fresh interpreters (not forks: the parent runs JAX threads) that import only
scoring.py.
"""
from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Sequence

import numpy as np

from asympo_jax.data.datasets import Problem
from asympo_jax.rollout.scoring import MALFORMED, OUTCOMES, Gold, Outcome  # noqa: F401 -- re-exported

_STARTUP_LIMIT_S = 120.0  # a worker that cannot even start is a broken installation, not a hostile answer
_MAX_FAILED_STARTS = 3


def gold_of(target: Problem | str) -> Gold:
  """The compact gold of a Problem (or of a bare math answer string)."""
  if isinstance(target, str):
    return ("math", target)
  if target.gym_entry is not None:
    return ("gym", target.gym_entry)
  return ("math", target.answer)


class _Worker:
  """One scoring subprocess, its connection, and the indices it still owes, in order."""

  def __init__(self):
    ours, theirs = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    self.process = subprocess.Popen([sys.executable, "-m", "asympo_jax.rollout.scoring", str(theirs.fileno())],
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
    theirs.close()
    self.conn = Connection(ours.detach())
    self.ready = False
    self.owed: collections.deque[int] = collections.deque()
    self.deadline = time.monotonic() + _STARTUP_LIMIT_S

  def kill(self) -> None:
    self.process.kill()
    self.process.wait()
    self.conn.close()


def _kill_all(workers: list[_Worker]) -> None:
  for worker in workers:
    worker.kill()
  workers.clear()


class RewardPool:
  """Scores batches of outputs in `num_workers` subprocesses; each answer gets at most `timeout_s` seconds.

  Thread-safe (calls are serialised), so the rollout thread can score off the learner's critical path.
  `counters` counts every outcome kind (scoring.OUTCOMES) since creation.
  """

  def __init__(self, num_workers: int = 2, timeout_s: float = 2.0, max_answer_chars: int = 1000,
               max_chunk: int = 64):
    if num_workers < 1 or timeout_s <= 0:
      raise ValueError(f"RewardPool needs num_workers >= 1 and timeout_s > 0, got {num_workers}, {timeout_s}")
    self.timeout_s = timeout_s
    self.max_answer_chars = max_answer_chars
    self.max_chunk = max_chunk
    self.counters: collections.Counter[str] = collections.Counter()
    self._lock = threading.Lock()
    self._failed_starts = 0
    self._workers = [_Worker() for _ in range(num_workers)]
    # A pool dropped without close() (or left at interpreter exit) still kills its workers: one stuck in a
    # sympy blow-up would otherwise outlive the run.
    weakref.finalize(self, _kill_all, self._workers)

  def score(self, responses: Sequence[str], golds: Sequence[Problem | str]) -> np.ndarray:
    """Rewards float32 [N] of N outputs against their golds (Problems, or bare math answer strings)."""
    return np.asarray([o.reward for o in self.outcomes(responses, golds)], np.float32)

  def outcomes(self, responses: Sequence[str], golds: Sequence[Problem | str]) -> list[Outcome]:
    if len(responses) != len(golds):
      raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    items = [(i, r, gold_of(g)) for i, (r, g) in enumerate(zip(responses, golds))]
    chunk = max(1, min(self.max_chunk, -(-len(items) // (4 * len(self._workers)))))
    todo = collections.deque(items[k:k + chunk] for k in range(0, len(items), chunk))
    results: list[Outcome | None] = [None] * len(items)
    with self._lock:
      if not self._workers:
        raise RuntimeError("RewardPool is closed")
      self._run(todo, items, results)
      self.counters.update(o.kind for o in results)
    return results

  def _run(self, todo: collections.deque, items: list, results: list) -> None:
    remaining = len(items)
    while remaining:
      now = time.monotonic()
      for slot, worker in enumerate(list(self._workers)):
        if worker.ready and not worker.owed and todo:
          batch = todo.popleft()
          try:
            worker.conn.send((self.max_answer_chars, batch))
          except OSError:  # it died between tasks: nothing of this batch ran
            todo.appendleft(batch)
            self._replace(slot, None, todo, items, results)
            continue
          worker.owed.extend(i for i, _, _ in batch)
          worker.deadline = now + self.timeout_s
      waiting = [w for w in self._workers if w.owed or not w.ready]
      ready = wait([w.conn for w in waiting], max(0.0, min(w.deadline for w in waiting) - now))
      for slot, worker in enumerate(list(self._workers)):
        if worker.conn in ready:
          try:
            message = worker.conn.recv()
          except (EOFError, OSError):  # it died: a segfault deep in a parser, the OOM killer, a kill
            remaining -= self._replace(slot, "crash", todo, items, results)
            continue
          if message == "ready":
            worker.ready = True
            self._failed_starts = 0
            continue
          index, reward, kind = message
          results[index] = Outcome(reward, kind)
          worker.owed.popleft()
          worker.deadline = time.monotonic() + self.timeout_s
          remaining -= 1
        elif worker in waiting and time.monotonic() > worker.deadline:
          remaining -= self._replace(slot, "timeout", todo, items, results)

  def _replace(self, slot: int, charge: str | None, todo: collections.deque, items: list, results: list) -> int:
    """Kills a worker, charges the answer it was on with `charge` (reward 0), requeues the rest, starts a new
    one; returns the number of answers settled."""
    worker = self._workers[slot]
    worker.kill()
    if not worker.ready:
      self._failed_starts += 1
      if self._failed_starts > _MAX_FAILED_STARTS:
        raise RuntimeError(f"reward workers keep failing to start ({self._failed_starts} in a row; "
                           "see their stderr)")
    settled = 0
    if worker.owed and charge is not None:
      results[worker.owed.popleft()] = Outcome(0.0, charge)
      settled = 1
    if worker.owed:
      todo.appendleft([items[i] for i in worker.owed])
    self._workers[slot] = _Worker()
    return settled

  def close(self) -> None:
    with self._lock:
      _kill_all(self._workers)

  def __enter__(self) -> "RewardPool":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
