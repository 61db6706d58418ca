"""Evaluation: the unbiased pass@k estimator, the summaries, the results JSON and the curves PNG."""
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from asympo_jax.data import datasets as data
from asympo_jax.evaluation import scores as evaluation


@pytest.mark.parametrize("n, c, k, expected", [
    (10, 0, 1, 0.0), (10, 10, 5, 1.0), (10, 3, 1, 0.3), (5, 1, 5, 1.0), (4, 1, 2, 0.5),
    (10, 2, 3, 1 - 56 / 120),  # 1 - C(8,3)/C(10,3)
])
def test_pass_at_k_known_cases(n, c, k, expected):
  assert evaluation.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(n=st.integers(1, 60), data_=st.data())
def test_pass_at_k_matches_the_binomial_closed_form(n, data_):
  c = data_.draw(st.integers(0, n))
  k = data_.draw(st.integers(1, n))
  closed = 1 - math.comb(n - c, k) / math.comb(n, k)
  assert evaluation.pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-9)


@given(n=st.integers(1, 8), data_=st.data())
def test_pass_at_k_is_the_chance_a_random_k_subset_holds_a_correct_sample(n, data_):
  c = data_.draw(st.integers(0, n))
  k = data_.draw(st.integers(1, n))
  correct = [i < c for i in range(n)]
  subsets = list(itertools.combinations(range(n), k))
  share = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
  assert evaluation.pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12)


def test_pass_at_k_refuses_impossible_counts():
  with pytest.raises(ValueError):
    evaluation.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError):
    evaluation.pass_at_k(4, 1, 5)


def test_summary_and_run_benchmark_with_a_scripted_model():
  problems = [data.Problem(f"q{i}", str(i), str(i), "t") for i in range(4)]
  # greedy right on problems 0 and 1; of 4 samples, problem i gets i right.
  def complete(questions, samples, greedy):
    if greedy:
      return [[f"\\boxed{{{q[1:]}}}" if int(q[1:]) < 2 else "\\boxed{-1}"] for q in questions]
    return [[f"\\boxed{{{q[1:]}}}" if s < int(q[1:]) else "no" for s in range(samples)] for q in questions]

  def score(outputs, golds):
    return np.asarray([float(o == f"\\boxed{{{g.answer}}}") for o, g in zip(outputs, golds)])

  summary, records = evaluation.run_benchmark(problems, complete, score, samples=4, ks=[1, 2, 4])
  assert summary["greedy_accuracy"] == 0.5
  assert summary["avg@4"] == pytest.approx((0 + 1 + 2 + 3) / 16)
  assert summary["pass@4"] == 0.75
  assert summary["pass@1"] == pytest.approx(summary["avg@4"])
  assert summary["pass@2"] == pytest.approx(np.mean([evaluation.pass_at_k(4, c, 2) for c in range(4)]))
  assert [r["sample_rewards"] for r in records][3] == [1.0, 1.0, 1.0, 0.0]
  assert evaluation.default_ks(6) == [1, 2, 4, 6]


def test_results_json_merges_runs_and_steps_and_plots(tmp_path):
  path = str(tmp_path / "gsm8k_test.json")
  evaluation.update_results(path, "gsm8k_test", [{"run": "a", "step": 10, "greedy_accuracy": 0.2}])
  evaluation.update_results(path, "gsm8k_test", [{"run": "a", "step": 0, "greedy_accuracy": 0.1},
                                                 {"run": "b", "step": 10, "greedy_accuracy": 0.3}])
  merged = evaluation.update_results(path, "gsm8k_test", [{"run": "a", "step": 10, "greedy_accuracy": 0.25,
                                                           "pass@2": 0.5}])
  with open(path) as f:
    stored = json.load(f)
  assert stored["results"] == merged
  assert [(r["run"], r["step"], r["greedy_accuracy"]) for r in merged] == [("a", 0, 0.1), ("a", 10, 0.25),
                                                                             ("b", 10, 0.3)]
  assert evaluation.plotted_metrics(merged) == ["greedy_accuracy", "pass@2"]
  assert evaluation.plotted_metrics([{"greedy_accuracy": 0, "avg@8": 0, "pass@1": 0, "pass@8": 0,
                                      "pass@4": 0}]) == ["greedy_accuracy", "avg@8", "pass@8"]
  png = tmp_path / "gsm8k_test.png"
  evaluation.plot(merged, "gsm8k_test", str(png))
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_names_the_key():
  from asympo_jax.run import config
  cfg = config.base_config()
  cfg.eval.temperature = 0.0
  with pytest.raises(config.ConfigError, match="config.eval.temperature"):
    evaluation.validate(cfg)
  evaluation.validate(config.base_config())


def test_file_names_of_specs_keep_only_safe_characters():
  assert evaluation.file_name("math500_test?where.level=4|5") == "math500_test_where.level_4_5"
  assert evaluation.file_name("gym:basic_arithmetic?operators=('+','-')&size=200") == (
      "gym_basic_arithmetic_operators_-_size_200")
