"""Data: named benchmarks from the local files, file specs with field mappings, gym tasks, clear errors."""
import json
import pathlib

import pyarrow
import pyarrow.parquet
import pytest
from hypothesis import given, strategies as st

from asympo_jax.run import config
from asympo_jax.data import datasets as data

REPO_DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "math"


def test_named_benchmarks_default_to_the_repos_own_files_with_their_provenance():
  assert data.DEFAULT_DATA_DIR == REPO_DATA
  provenance = (REPO_DATA / "README.md").read_text()
  for name, benchmark in data.BENCHMARKS.items():
    if benchmark.local_file:
      assert (REPO_DATA / benchmark.local_file).is_file(), name
      assert benchmark.local_file in provenance, f"{benchmark.local_file} has no provenance in data/math/README.md"


@pytest.mark.parametrize("name, count", [("gsm8k_test", 1319), ("gsm8k_train", 7473), ("math500_test", 500),
                                         ("aime24_test", 30), ("amc23_test", 40)])
def test_named_benchmarks_load_from_the_local_files(name, count):
  problems = data.load(name)
  assert len(problems) == count
  assert all(p.question and p.answer and p.source == name for p in problems)
  assert len({p.id for p in problems}) == count


def test_gold_answers_are_read_by_each_format():
  gsm = data.load("gsm8k_test", limit=3)
  assert [p.answer for p in gsm] == ["18", "3", "70000"]
  assert "####" in gsm[0].solution
  assert data.load("amc23_test")[0].answer == "27"  # stored as the float 27.0
  math500 = data.load("math500_test", limit=1)[0]
  assert math500.answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and math500.id == "test/precalculus/807.json"


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_file_spec_with_field_mapping_and_boxed_format(tmp_path):
  path = tmp_path / "mine.jsonl"
  _write_jsonl(path, [{"q": "1+1?", "sol": "so \\boxed{2}", "k": "a"}, {"q": "2+2?", "sol": "\\boxed{4}", "k": "b"}])
  problems = data.load(f"file:{path}?question=q&answer=sol&format=boxed&solution=sol&id=k")
  assert [(p.question, p.answer, p.id) for p in problems] == [("1+1?", "2", "a"), ("2+2?", "4", "b")]


def test_parquet_file(tmp_path):
  path = tmp_path / "mine.parquet"
  pyarrow.parquet.write_table(pyarrow.table({"problem": ["x?", "y?"], "answer": ["1", "2"]}), path)
  problems = data.load(f"file:{path}?question=problem&answer=answer")
  assert [(p.question, p.answer, p.id) for p in problems] == [("x?", "1", "0"), ("y?", "2", "1")]


def test_a_missing_field_names_the_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  _write_jsonl(path, [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}, {"question": "c"}])
  with pytest.raises(data.DataError, match=rf"{path}:3: missing field 'answer'"):
    data.load(f"file:{path}?question=question&answer=answer")


def test_an_unreadable_record_names_the_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answ\n')
  with pytest.raises(data.DataError, match=rf"{path}:2: unreadable JSON"):
    data.load(f"file:{path}?question=question&answer=answer")


def test_records_without_a_readable_gold_answer_are_skipped_and_counted(tmp_path, caplog):
  path = tmp_path / "mixed.jsonl"
  _write_jsonl(path, [{"q": "a", "sol": "so \\boxed{2}"}, {"q": "b", "sol": "no box here"},
                      {"q": "c", "sol": "as MATH writes it: $\\boxed 5$."}, {"q": "d", "sol": "\\boxed{"}])
  spec = f"file:{path}?question=q&answer=sol&format=boxed"
  with caplog.at_level("WARNING"):
    problems = data.load(spec)
  assert [(p.question, p.answer, p.id) for p in problems] == [("a", "2", "0"), ("c", "5", "2")]
  (warning,) = [m for m in caplog.messages if "skipped" in m]
  assert "skipped 2 of 4 records" in warning and f"{path}:2: no gold answer" in warning
  with pytest.raises(data.DataError, match=rf"{path}:2: no gold answer in field 'sol' \(format 'boxed'\)"):
    data.load(spec + "&strict=1")


def test_a_file_with_no_readable_gold_answer_fails(tmp_path):
  path = tmp_path / "bad.jsonl"
  _write_jsonl(path, [{"question": "a", "answer": "no marker here"}])
  with pytest.raises(data.DataError, match=rf"no record has a gold answer that reads as format 'gsm8k'; first: "
                                           rf"{path}:1: no gold answer"):
    data.load(f"file:{path}?question=question&answer=answer&format=gsm8k")


@pytest.mark.parametrize("spec, name", [
    ("gsm8k_test", "gsm8k_test"),
    ("math500_test?where.level=4|5", "math500_test_where.level_4_5"),
    ("math500_test?strict=1", "math500_test"),
    ("file:/data/my set.jsonl?question=q&answer=a", "my_set"),
    ("gym:basic_arithmetic?min_terms=2&max_terms=2&operators=('+','-')&size=200&seed=2", "basic_arithmetic"),
    ("gym:basic_arithmetic?size=200&seed=2&name=arith.held-out", "arith.held-out"),
])
def test_spec_names_are_short(spec, name):
  assert data.spec_name(spec) == name


def test_name_and_strict_do_not_reach_the_loaders():
  named = data.load("gym:chain_sum?size=5&seed=1&name=sums")
  assert [p.question for p in named] == [p.question for p in data.load("gym:chain_sum?size=5&seed=1")]
  assert len(data.load("gsm8k_test?strict=1&name=gsm")) == 1319


@pytest.mark.parametrize("spec, message", [
    ("gsm9k_test", "unknown dataset spec"),
    ("minerva_test", "no local copy"),
    ("file:/nonexistent.jsonl?question=q&answer=a", "no such file"),
    ("file:x.jsonl?question=q", "needs question= and answer="),
    ("gym:no_such_task", "reasoning-gym refused"),
    ("gym:chain_sum?size", "not key=value"),
    ("math500_test?where.level=7", r"no record passes the filter; values found \(level: \['1', '2', '3', '4', '5'\]\)"),
    ("math500_test?level=5", r"a named benchmark takes only where.<field>=a\|b filters, name= and strict=, "
                             r"not \['level'\]"),
    ("gsm8k_test?where.level=5", r"gsm8k_test.jsonl:1: missing field 'level' \(where.level\)"),
    ("gym:chain_sum?where.x=1", "filters and strict= apply to benchmarks and files"),
    ("gym:chain_sum?strict=1", "filters and strict= apply to benchmarks and files"),
    ("gsm8k_test?strict=yes", "strict='yes'; use strict=1"),
    ("gsm8k_test?name=a/b", "name='a/b' must be letters, digits"),
])
def test_bad_specs_fail_clearly(spec, message):
  with pytest.raises(data.DataError, match=message):
    data.load(spec)


def test_where_filters_keep_the_records_whose_field_has_one_of_the_values():
  with open(REPO_DATA / "math500_test.jsonl") as f:
    records = [json.loads(line) for line in f]
  ids = lambda keep: sorted(r["unique_id"] for r in records if keep(r))
  assert sorted(p.id for p in data.load("math500_test?where.level=5")) == ids(lambda r: r["level"] == 5)
  assert sorted(p.id for p in data.load("math500_test?where.level=4|5")) == ids(lambda r: r["level"] in (4, 5))
  both = data.load("math500_test?where.level=5&where.subject=Algebra")
  assert sorted(p.id for p in both) == ids(lambda r: r["level"] == 5 and r["subject"] == "Algebra") != []


def test_a_filtered_file_keeps_each_record_number_as_its_id(tmp_path):
  path = tmp_path / "mine.jsonl"
  _write_jsonl(path, [{"q": "a", "a": "1", "level": "Level 1"}, {"q": "b", "a": "2", "level": "Level 2"},
                      {"q": "c", "a": "3", "level": "Level 1"}])
  problems = data.load(f"file:{path}?question=q&answer=a&where.level=Level 1")
  assert [(p.question, p.id) for p in problems] == [("a", "0"), ("c", "2")]


def test_gym_tasks_are_seeded():
  a = data.load("gym:chain_sum?size=20&seed=5")
  b = data.load("gym:chain_sum?size=20&seed=5")
  c = data.load("gym:chain_sum?size=20&seed=6")
  assert [p.question for p in a] == [p.question for p in b] != [p.question for p in c]
  assert all(p.gym_entry is not None and p.answer == p.gym_entry["answer"] for p in a)
  assert len(data.load("gym:chain_sum?size=7&seed=5&min_terms=2&max_terms=2")) == 7


@given(n=st.integers(1, 30), count=st.integers(1, 8), seed=st.integers(0, 3))
def test_each_epoch_visits_every_problem_once(n, count, seed):
  problems = [data.Problem(str(i), str(i), str(i), "t") for i in range(n)]
  steps = n  # n steps of `count` problems = `count` whole epochs
  seen = [p.id for s in range(steps) for p in data.problems_for_step(problems, s, count, seed)]
  for epoch in range(count):
    assert sorted(seen[epoch * n:(epoch + 1) * n], key=int) == [str(i) for i in range(n)]
  assert data.problems_for_step(problems, 3, count, seed) == data.problems_for_step(problems, 3, count, seed)


def test_validate_names_the_key():
  cfg = config.base_config()
  cfg.data.eval = "gsm8k_test,nope"
  with pytest.raises(config.ConfigError, match="config.data.eval"):
    data.validate(cfg.data)
  for spec, message in [("math500_test?level=5", "takes only where"), ("math500_test?level", "not key=value")]:
    cfg = config.base_config()
    cfg.data.train = spec
    with pytest.raises(config.ConfigError, match=f"config.data.train: .*{message}"):
      data.validate(cfg.data)
  cfg = config.base_config()
  cfg.data.train = "math500_test?where.level=4|5"
  data.validate(cfg.data)
  cfg = config.base_config()
  cfg.data.eval = "gym:chain_sum?size=5&seed=1,gym:chain_sum?size=5&seed=2"
  with pytest.raises(config.ConfigError, match=r"config.data.eval: several eval sets are named \['chain_sum'\]"):
    data.validate(cfg.data)
  cfg.data.eval = "gym:chain_sum?size=5&seed=1,gym:chain_sum?size=5&seed=2&name=chain_sum_2"
  data.validate(cfg.data)
  cfg = config.base_config()
  cfg.data.template = "fancy"
  with pytest.raises(config.ConfigError, match="config.data.template"):
    data.validate(cfg.data)
  data.validate(config.base_config().data)


def test_hub_loading_maps_fields_through_datasets(monkeypatch):
  """The online path, with datasets.load_dataset replaced (no network here): the benchmark's hub id,
  config and split are requested and its rows go through the same field mapping."""
  import datasets
  calls = []

  def fake_load_dataset(path, name=None, split=None):
    calls.append((path, name, split))
    return [{"question": "2+2?", "answer": "so\n#### 1,004"}]

  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  (problem,) = data.load("gsm8k_test", hub=True)
  assert calls == [("openai/gsm8k", "main", "test")]
  assert (problem.question, problem.answer, problem.source) == ("2+2?", "1004", "gsm8k_test")
  with pytest.raises(data.DataError, match=r"HuggingFaceH4/MATH-500\[test\] row 0: missing field 'problem'"):
    data.load("math500_test", hub=True)
  rows = [{"problem": q, "answer": "1", "solution": "", "unique_id": q, "level": level}
          for q, level in [("x?", 3), ("y?", 5)]]
  monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None: rows)
  assert [p.question for p in data.load("math500_test?where.level=5", hub=True)] == ["y?"]


def test_gym_options_keep_plus_signs_and_commas():
  spec = "gym:basic_arithmetic?size=30&seed=2&min_terms=2&max_terms=2&max_digits=1&operators=('+','*')"
  assert data.split_specs(f"{spec}, gsm8k_test") == [spec, "gsm8k_test"]
  questions = [p.question for p in data.load(spec)]
  assert any("+" in q for q in questions) and any("*" in q for q in questions)
  assert not any(" - " in q or "/" in q for q in questions)
