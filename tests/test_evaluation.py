"""Evaluation: the unbiased pass@k estimator, the summaries, the results JSON and the curves PNG."""
import itertools
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from asympo_jax.data import datasets as data
from asympo_jax.run import config
from asympo_jax.evaluation import scores as evaluation
from asympo_jax.evaluation import suite


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


def test_one_evaluation_names_sets_shortly_and_keeps_each_sets_results(tmp_path):
  cfg = config.base_config()
  cfg.data.eval = "gym:chain_sum?size=3&seed=1,gym:chain_sum?size=2&seed=2&name=held_out"
  cfg.workdir = str(tmp_path / "run")
  sets = suite.load_sets(cfg)
  assert [(s.name, len(s.problems)) for s in sets] == [("chain_sum", 3), ("held_out", 2)]
  assert suite.results_dir(cfg) == str(tmp_path / "run" / "eval")
  calls = []

  def complete(questions, samples, greedy):  # right when greedy, on the first of two samples otherwise
    calls.append(len(questions))
    golds = {p.question: p.answer for s in sets for p in s.problems}
    return [[golds[q] if greedy or i == 0 else "wrong" for i in range(samples)] for q in questions]

  score = lambda outputs, golds: np.asarray([float(o == g.answer) for o, g in zip(outputs, golds)])
  details = iter([{"mesh": "first"}, {"mesh": "second"}])
  summaries = suite.evaluate(sets, complete, score, 2, run="r", step=7, out_dir=str(tmp_path / "out"),
                             details=lambda: next(details), keep_outputs=True)
  assert summaries == {name: {"problems": n, "greedy_accuracy": 1.0, "avg@2": 0.5, "pass@1": 0.5, "pass@2": 1.0}
                       for name, n in (("chain_sum", 3), ("held_out", 2))}
  assert calls == [3, 3, 2, 2]  # greedy, then sampled, set by set
  for name, mesh in (("chain_sum", "first"), ("held_out", "second")):
    stored = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert stored["benchmark"] == next(s.spec for s in sets if s.name == name)
    assert stored["results"] == [{"run": "r", "step": 7, "mesh": mesh, **summaries[name]}]
    assert (tmp_path / "out" / f"{name}.png").exists()
    lines = (tmp_path / "out" / "samples" / name / "r_7.jsonl").read_text().splitlines()
    assert len(lines) == summaries[name]["problems"]
  # Without an out_dir (every process but the first) nothing is written.
  assert suite.evaluate(sets, complete, score, 0, run="r", step=8) == {
      name: {"problems": n, "greedy_accuracy": 1.0} for name, n in (("chain_sum", 3), ("held_out", 2))}
  assert sorted(os.listdir(tmp_path / "out")) == ["chain_sum.json", "chain_sum.png", "held_out.json",
                                                   "held_out.png", "samples"]


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
  cfg = config.base_config()
  cfg.eval.temperature = 0.0
  with pytest.raises(config.ConfigError, match="config.eval.temperature"):
    evaluation.validate(cfg.eval)
  evaluation.validate(config.base_config().eval)
