"""The staleness study's task: worked solutions that are correct, chained and boxed; its verifier; the
response lengths under the config's own tokenizer; the spec's errors; the warm start on worked solutions."""
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from asympo_jax.data import datasets as data
from asympo_jax.data import prompts
from asympo_jax.data import worked_arithmetic as task
from asympo_jax.model import scratch
from asympo_jax.rollout import rewards, scoring, supervised
from asympo_jax.run.config import base_config
from asympo_jax.rollout.train_batch import TrainBatch
from asympo_jax.train import loop, metrics
from configs import worked_arithmetic as study

REPO = pathlib.Path(__file__).resolve().parents[1]

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), low_terms=st.integers(2, 6), extra_terms=st.integers(0, 5),
       low=st.integers(0, 50), span=st.integers(0, 60))
def test_each_line_does_the_first_operation_of_the_line_before(seed, low_terms, extra_terms, low, span):
  options = task.Options(size=5, seed=seed, min_terms=low_terms, max_terms=low_terms + extra_terms,
                         min_value=low, max_value=low + span)
  for question, solution, answer in task.generate(options):
    tokens = question.split(" ")
    operands, operators = [int(t) for t in tokens[0::2]], tokens[1::2]
    assert low_terms <= len(operands) <= low_terms + extra_terms
    assert all(low <= v <= low + span for v in operands) and set(operators) <= {"+", "-"}
    *lines, box = solution.split("\n")
    assert box == f"\\boxed{{{answer}}}"
    assert len(lines) == len(operands) - 1
    previous = tokens
    for line in lines:
      assert line.startswith("= ")
      first, op, second, *rest = previous
      value = int(first) + int(second) if op == "+" else int(first) - int(second)
      assert line[2:].split(" ") == [str(value), *rest]
      previous = line[2:].split(" ")
    assert previous == [answer]
    assert int(answer) == sum(v if op == "+" else -v for op, v in zip(["+"] + operators, operands))


def test_the_task_is_seeded_and_loads_as_a_spec():
  spec = "proc:worked_arithmetic?size=20&seed=5&min_terms=3&max_terms=4&max_value=30"
  a, b = data.load(spec), data.load(spec)
  assert a == b and len(a) == 20 and a != data.load(spec.replace("seed=5", "seed=6"))
  assert all(p.solution.endswith(f"\\boxed{{{p.answer}}}") and p.gym_entry is None for p in a)
  assert [p.id for p in a[:2]] == ["worked_arithmetic/5/0", "worked_arithmetic/5/1"]
  assert data.spec_name(spec) == "worked_arithmetic"


@pytest.mark.parametrize("spec, message", [
    ("proc:no_such_task", "unknown procedural task"),
    ("proc:worked_arithmetic?terms=3", r"unknown option\(s\) \['terms'\]"),
    ("proc:worked_arithmetic?min_terms=5&max_terms=3", "min_terms <= max_terms"),
    ("proc:worked_arithmetic?size=x", "invalid literal"),
    ("proc:worked_arithmetic?where.x=1", "filters and strict= apply to benchmarks and files"),
])
def test_bad_procedural_specs_fail_before_loading(spec, message):
  with pytest.raises(data.DataError, match=message):
    data.parse_spec(spec)


def test_the_verifier_rewards_the_boxed_answer_only_when_it_is_right():
  problems = data.load("proc:worked_arithmetic?size=30&seed=3")
  for p in problems:
    gold = rewards.gold_of(p)
    assert scoring.score_one(" " + p.solution, gold) == (1.0, "correct")
    off_by_one = p.solution.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{int(p.answer) + 1}}}")
    assert scoring.score_one(off_by_one, gold) == (0.0, "wrong")
    assert scoring.score_one(p.solution + "\n\\boxed{", gold).kind == "no_answer"  # a box cut off


def _config_tokenizer():
  """The tokenizer a run of configs/worked_arithmetic.py fits (pipeline.scratch_model) and its problems."""
  cfg = study.get_config()
  problems = data.load(cfg.data.train)
  texts = prompts.render(cfg.data.template, [p.question for p in problems]) + [
      supervised.worked_response(p) for p in problems]
  return cfg, problems, scratch.build_tokenizer(texts, scratch.SIZES[cfg.model.scratch]["vocab_size"])


def test_worked_responses_are_30_to_150_tokens_and_longer_with_more_terms():
  cfg, problems, tokenizer = _config_tokenizer()
  lengths = np.asarray([len(tokenizer(supervised.worked_response(p), add_special_tokens=False)["input_ids"]) + 1
                        for p in problems])  # + EOS
  assert 30 <= lengths.min() and lengths.max() <= min(150, cfg.rollout.max_new_tokens)
  prompt_ids = prompts.encode(cfg.data.template, [p.question for p in problems], tokenizer)
  assert max(map(len, prompt_ids)) <= cfg.rollout.max_prompt_len
  # More terms, more lines: the harder problems, where the wrong answers concentrate, have longer responses.
  terms = np.asarray([p.question.count(" ") // 2 + 1 for p in problems])
  means = [lengths[terms == t].mean() for t in sorted(set(terms))]
  assert all(b > a + 3 for a, b in zip(means, means[1:])), means


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=8))
def test_the_batch_logs_the_mean_length_of_right_and_of_wrong_responses(rows):
  lengths, right = [n for n, _ in rows], [r for _, r in rows]
  mask_BxT = np.asarray([[1] * n + [0] * (12 - n) for n in lengths], np.float32)
  batch = TrainBatch(np.zeros_like(mask_BxT, np.int32), mask_BxT.astype(np.int32), mask_BxT,
                     np.asarray(right, np.float32))
  m = loop._batch_metrics(batch)
  for key, side in (("response/length_right_mean", True), ("response/length_wrong_mean", False)):
    picked = [n for n, r in rows if r == side]
    if picked:
      np.testing.assert_allclose(m[key], sum(picked) / len(picked), rtol=1e-6)
    else:
      assert np.isnan(m[key])


def test_the_warm_start_can_train_on_worked_solutions():
  cfg = base_config().rollout
  cfg.group_size, cfg.max_prompt_len, cfg.max_new_tokens = 2, 3, 40
  problem = data.load("proc:worked_arithmetic?size=1&seed=0&min_terms=2&max_terms=2")[0]
  encode = lambda text: [ord(c) for c in text]  # one id per character
  build = supervised.make_build_batch(lambda step: ([[1, 2]], [problem]), encode, cfg, eos_id=3, pad_id=0,
                                      target="solution")
  batch, _ = build(None, step=0)
  response = [ord(c) for c in " " + problem.solution] + [3]
  np.testing.assert_array_equal(batch.tokens_BxT[:, 3:3 + len(response)], [response, response])
  assert batch.loss_mask_BxT.sum() == 2 * len(response)
  no_solution = types.SimpleNamespace(answer="1", solution="", id="7", source="gym:x")
  with pytest.raises(ValueError, match="no worked solution"):
    supervised.make_build_batch(lambda step: ([[1]], [no_solution]), encode, cfg, 3, 0, target="solution")(None, 0)


STUDY_METRICS = {"balance/pos_loss", "balance/neg_loss", "balance/net_loss", "balance/nll_gap", "grad_norm/pos",
                 "grad_norm/neg", "rollout/lag_mean", "response/length_right_mean", "response/length_wrong_mean"}


def _run_micro(workdir: pathlib.Path, cache: pathlib.Path, *flags: str) -> list[dict]:
  """configs/worked_arithmetic_micro.py as train.py runs it; its metrics records, after checking that every
  RL step logged the study's diagnostics and the final eval ran."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's train.py
  out = subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={REPO}/configs/worked_arithmetic_micro.py",
                        f"--config.workdir={workdir}", f"--config.warm_start.cache_dir={cache}", *flags],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  records = metrics.read_jsonl(str(workdir))
  assert [r["step"] for r in records] == [0, 1, 2]
  assert 0.0 <= records[-1]["eval/worked_arithmetic/greedy_accuracy"] <= 1.0
  assert all(STUDY_METRICS <= set(r) for r in records[1:])
  return records


def test_micro_study_config_end_to_end(tmp_path):
  """One stale run of the micro config: warm start on worked solutions, its cache entry, RL at lag 1, eval."""
  records = _run_micro(tmp_path / "run", tmp_path / "cache", "--config.objective.name=naive")
  assert len(os.listdir(tmp_path / "cache")) == 1 and (tmp_path / "run" / "warm_start").is_dir()
  assert records[2]["rollout/lag_mean"] == 1.0  # step 2 trains on the batch sampled before step 1's update


@pytest.mark.slow
def test_micro_study_runs_share_a_cached_warm_start(tmp_path):
  """A second run (another objective and staleness) takes the first one's cached warm start instead of
  building its own."""
  cache = tmp_path / "cache"
  _run_micro(tmp_path / "a", cache, "--config.objective.name=naive")
  _run_micro(tmp_path / "b", cache, "--config.objective.name=grpo", "--config.rollout.staleness=0")
  assert len(os.listdir(cache)) == 1
  assert not (tmp_path / "b" / "warm_start").exists() and not (tmp_path / "b" / "scratch_model").exists()
