"""Rewards: gold solutions score 1, equivalent forms score 1, hostile outputs score 0 and never hang."""
import fractions
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asympo_jax.data import datasets as data
from asympo_jax.rollout import rewards


@pytest.fixture(scope="module")
def pool():
  with rewards.RewardPool(num_workers=2, timeout_s=1.0) as p:
    yield p


def test_gold_solutions_score_one(pool):
  problems = data.load("gsm8k_test") + data.load("math500_test")
  assert len(problems) == 1319 + 500
  got = pool.outcomes([p.solution for p in problems], problems)
  failures = [(p.source, p.id, p.answer, o.kind) for p, o in zip(problems, got) if o.reward != 1.0]
  share = len(failures) / len(problems)
  print(f"gold solutions not scoring 1: {len(failures)}/{len(problems)} = {share:.2%}", failures[:10])
  assert share <= 0.01, f"{share:.2%} of gold solutions do not score 1: {failures[:20]}"


@pytest.mark.parametrize("gold, equivalents, wrongs", [
    ("\\frac{1}{2}", ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{\\dfrac12}"],
     ["\\boxed{2}", "\\boxed{0.49}", "\\boxed{1/3}"]),
    ("1000", ["\\boxed{1,000}", "\\boxed{1000}", "so #### 1,000", "The answer is 1000."],
     ["\\boxed{100}", "\\boxed{1,001}", "The answer is 999."]),
    ("3", ["\\boxed{x=3}", "\\boxed{3}", "\\boxed{3.0}"], ["\\boxed{x=4}", "\\boxed{-3}"]),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", ["\\boxed{(3,\\pi/2)}", "\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}"],
     ["\\boxed{(3, \\pi)}"]),
])
def test_equivalent_forms_score_one_and_wrong_answers_zero(pool, gold, equivalents, wrongs):
  outputs = equivalents + wrongs
  rewards_ = pool.score(outputs, [gold] * len(outputs))
  expected = [1.0] * len(equivalents) + [0.0] * len(wrongs)
  assert rewards_.tolist() == expected, list(zip(outputs, rewards_))


@pytest.mark.timeout(120)
def test_hostile_outputs_score_zero_and_count(pool):
  hostile = {
      "1 MB garbage": "".join(chr(33 + (i * 7919) % 90) for i in range(1_000_000)),
      "deeply nested braces": "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
      "nested within the length cap": "\\boxed{" + "(" * 450 + "1" + ")" * 450 + "}",
      "sympy blow-up": "\\boxed{9^{9^{9^{9}}}}",
      "huge factorial": "\\boxed{(10^{8})!}",
  }
  before = pool.counters.copy()
  fine = ["\\boxed{2}"] * 6  # scored around the hostile ones, by the same (replaced) workers
  outputs = fine[:3] + list(hostile.values()) + fine[3:]
  got = pool.outcomes(outputs, ["2"] * len(outputs))
  assert [o.reward for o in got] == [1.0] * 3 + [0.0] * len(hostile) + [1.0] * 3, got
  added = pool.counters - before
  assert sum(added[k] for k in rewards.MALFORMED) >= 4, added  # the garbage has a final number: "wrong"
  assert added["timeout"] >= 2, added


def test_dead_workers_are_replaced(pool):
  for worker in pool._workers:  # died while idle: the next batch goes to their replacements
    os.kill(worker.process.pid, 9)
    worker.process.wait()
  assert pool.score(["\\boxed{5}", "\\boxed{6}", "#### 7"], ["5", "5", "7"]).tolist() == [1.0, 0.0, 1.0]


def test_gym_problems_use_the_gyms_scorer(pool):
  problems = data.load("gym:basic_arithmetic?size=6&seed=3")
  right = [f"... so \\boxed{{{p.answer}}}" for p in problems]
  wrong = [f"\\boxed{{{int(p.answer) + 1}}}" for p in problems]
  got = pool.outcomes(right + wrong, problems + problems)
  assert [o.reward for o in got] == [1.0] * 6 + [0.0] * 6, got


def test_scoring_from_a_thread(pool):
  out = {}
  thread = threading.Thread(target=lambda: out.setdefault("r", pool.score(["\\boxed{0.25}"], ["\\frac14"])))
  thread.start()
  thread.join()
  np.testing.assert_array_equal(out["r"], [1.0])


@settings(max_examples=25, deadline=None)
@given(p=st.integers(-999, 999), q=st.integers(1, 64))
def test_fraction_forms_are_equivalent_and_off_by_one_is_not(pool, p, q):
  value = fractions.Fraction(p, q)
  gold = f"\\frac{{{value.numerator}}}{{{value.denominator}}}" if value.denominator > 1 else str(value.numerator)
  right = [f"\\boxed{{{p}/{q}}}", f"\\boxed{{\\frac{{{p}}}{{{q}}}}}", f"\\boxed{{x = {value.numerator}/{value.denominator}}}"]
  if 10**6 % value.denominator == 0:  # a terminating decimal
    right.append(f"\\boxed{{{float(value)}}}")
  wrong = [f"\\boxed{{{value + 1}}}", f"\\boxed{{{p}/{q + 1}}}" if p else "\\boxed{1}"]
  got = pool.score(right + wrong, [gold] * (len(right) + len(wrong)))
  assert got.tolist() == [1.0] * len(right) + [0.0] * len(wrong), list(zip(right + wrong, got))
