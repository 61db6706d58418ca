"""One output's reward, computed in-process without a time bound, and the worker loop that runs it.

The loop runs in the subprocesses of rewards.RewardPool (`python -m asympo_jax.rollout.scoring FD`), which adds the
per-answer deadline. This module imports only what scoring needs (math-verify and reasoning-gym, about 1 s,
before the worker reports ready, so imports never count against an answer's deadline).
"""
from __future__ import annotations

import functools
import logging
import multiprocessing.connection
import sys
from typing import Any, NamedTuple

import math_verify
import reasoning_gym

from asympo_jax.data import answers

OUTCOMES = ("correct", "wrong", "no_answer", "error", "timeout", "crash")
MALFORMED = ("no_answer", "error", "timeout", "crash")

# A gold answer as it travels to a worker: ("math", answer string) or ("gym", reasoning-gym entry).
Gold = tuple[str, Any]


class Outcome(NamedTuple):
  reward: float
  kind: str  # one of OUTCOMES


@functools.cache
def _gym_scorer(task: str):
  return reasoning_gym.get_score_answer_fn(task)


def math_equivalent(prediction: str, gold: str) -> bool:
  """Whether math-verify finds the prediction equivalent to the gold answer (both without $ or \\boxed)."""
  if prediction == gold.strip():
    return True  # most correct answers are verbatim: skip sympy entirely
  # math-verify's own timeouts are off: the pool's deadline bounds the time (and SIGALRM needs a main thread).
  parsed_gold = math_verify.parse(f"${gold}$", parsing_timeout=None)
  parsed_prediction = math_verify.parse(f"${prediction}$", parsing_timeout=None)
  return bool(math_verify.verify(parsed_gold, parsed_prediction, timeout_seconds=None))


def score_one(response: str, gold: Gold, max_answer_chars: int = 1000) -> Outcome:
  """The reward of one output: 1 for an equivalent final answer, else 0 (gym tasks: the gym's score)."""
  try:
    prediction = answers.extract_answer(response, max_answer_chars)
    if prediction is None:
      return Outcome(0.0, "no_answer")
    kind, target = gold
    if kind == "gym":
      reward = float(_gym_scorer(target["metadata"]["source_dataset"])(prediction, target))
    else:
      reward = float(math_equivalent(prediction, target))
    return Outcome(reward, "correct" if reward >= 1.0 else "wrong")
  except Exception:  # noqa: BLE001 -- any failure on an untrusted output (RecursionError included) is a counted 0
    return Outcome(0.0, "error")


def serve(conn: multiprocessing.connection.Connection) -> None:
  """Answers "ready", then for each task (max_answer_chars, [(index, response, gold)]) one
  (index, reward, kind) message per item, until the pool closes the connection."""
  logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its "timeout disabled" warning is by design
  try:
    conn.send("ready")
    while True:
      max_answer_chars, items = conn.recv()
      for index, response, gold in items:
        conn.send((index, *score_one(response, gold, max_answer_chars)))
  except (EOFError, OSError):
    return  # the pool closed or died


if __name__ == "__main__":
  serve(multiprocessing.connection.Connection(int(sys.argv[1])))
