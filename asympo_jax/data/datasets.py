"""Math problems: named benchmarks, local JSONL/Parquet files with a field mapping, and reasoning-gym tasks.

A dataset spec is one string (config.data.train, config.data.eval, eval.py --benchmarks; several are
separated by commas):

  gsm8k_test                                   a named benchmark (see BENCHMARKS)
  file:path/x.jsonl?question=problem&answer=answer&format=raw&solution=solution&id=uid
                                               any JSONL or Parquet file; format is how the gold answer is
                                               read from the answer field: raw | gsm8k ("#### n") | boxed
  gym:basic_arithmetic?size=500&seed=1&max_terms=3
                                               a seeded reasoning-gym task; the other keys go to its config
  proc:worked_arithmetic?size=2000&seed=0&max_terms=8
                                               a seeded procedural task of this package (PROCEDURAL), whose
                                               problems carry worked solutions; the keys are its Options
  math500_test?where.level=4|5                 a benchmark or file keeping only the records whose field
                                               (here `level`) reads as one of the |-separated values

Every spec also takes `name=` (the eval metrics' and results files' name: eval/<name>/greedy_accuracy; by
default the benchmark's name, the file's stem or the gym task's, followed by any where. filters), and a
benchmark or file spec takes `strict=1`: a record whose gold answer cannot be read then stops the load
instead of being skipped with a warning.

Named benchmarks read the local files in config.data.dir (default: the repo's own data/math, see
DEFAULT_DATA_DIR); with config.data.hub they come from the Hugging Face hub through datasets.load_dataset
instead. The hub path needs network access, which the machines this was built on do not have: it is written
against the datasets API but has never run here.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import re
import urllib.parse
from typing import Any, Callable, Iterable, Mapping

import ml_collections
import numpy as np
import reasoning_gym
from absl import logging

from asympo_jax.data import answers
from asympo_jax.data import prompts
from asympo_jax.data import worked_arithmetic
from asympo_jax.common.checks import ConfigError, check

# The benchmark files that ship with the repo (data/math/README.md gives their provenance and licences).
# The package is installed editable (pip install -e), so the repo sits two levels above this file.
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "data" / "math"


class DataError(ValueError):
  """A dataset spec, file or record that cannot be used; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Problem:
  question: str
  answer: str  # the gold final answer
  id: str
  source: str  # the spec it came from
  solution: str = ""  # a worked reference solution, when the dataset has one
  gym_entry: Mapping[str, Any] | None = None  # reasoning-gym's entry: rewards then use the gym's own scorer


def _as_text(value: Any) -> str:
  if isinstance(value, float) and value.is_integer():
    return str(int(value))  # AMC answers are stored as 27.0
  return str(value)


ANSWER_FORMATS: dict[str, Callable[[str], str | None]] = {
    "raw": lambda text: text.strip() or None,
    "gsm8k": answers.gsm8k_gold,
    "boxed": answers.last_boxed,
}


@dataclasses.dataclass(frozen=True)
class Fields:
  """Which record fields hold what. Empty `solution` / `id`: none (the id is then the record number)."""
  question: str
  answer: str
  format: str = "raw"
  solution: str = ""
  id: str = ""


@dataclasses.dataclass(frozen=True)
class Benchmark:
  hub_id: str
  hub_config: str | None
  hub_split: str
  local_file: str  # "" when no local copy ships in data.dir
  fields: Fields


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k_train": Benchmark("openai/gsm8k", "main", "train", "gsm8k_train.jsonl",
                             Fields("question", "answer", "gsm8k", solution="answer")),
    "gsm8k_test": Benchmark("openai/gsm8k", "main", "test", "gsm8k_test.jsonl",
                            Fields("question", "answer", "gsm8k", solution="answer")),
    "math500_test": Benchmark("HuggingFaceH4/MATH-500", None, "test", "math500_test.jsonl",
                              Fields("problem", "answer", solution="solution", id="unique_id")),
    "aime24_test": Benchmark("HuggingFaceH4/aime_2024", None, "train", "aime24_test.jsonl",
                             Fields("problem", "answer", solution="solution", id="id")),
    "aime25_test": Benchmark("math-ai/aime25", None, "test", "", Fields("problem", "answer", id="id")),
    "amc23_test": Benchmark("math-ai/amc23", None, "test", "amc23_test.jsonl",
                            Fields("question", "answer", id="id")),
    "minerva_test": Benchmark("math-ai/minervamath", None, "test", "", Fields("question", "answer")),
    "math_train": Benchmark("DigitalLearningGmbH/MATH-lighteval", None, "train", "",
                            Fields("problem", "solution", "boxed", solution="solution")),
    "deepscaler_train": Benchmark("agentica-org/DeepScaleR-Preview-Dataset", None, "train", "",
                                  Fields("problem", "answer", solution="solution")),
}


@dataclasses.dataclass(frozen=True)
class Procedural:
  """A task generated here: its options dataclass (integer fields) and (options) -> (question, solution,
  answer) triples."""
  options: type
  generate: Callable[[Any], list[tuple[str, str, str]]]


PROCEDURAL: dict[str, Procedural] = {
    "worked_arithmetic": Procedural(worked_arithmetic.Options, worked_arithmetic.generate),
}


class NoGoldAnswer(DataError):
  """A record whose gold answer cannot be read in its format."""


def to_problem(record: Mapping[str, Any], fields: Fields, source: str, where: str, number: int) -> Problem:
  """One record as a Problem; `where` ("file:line") prefixes every error."""
  if not isinstance(record, Mapping):
    raise DataError(f"{where}: record is a {type(record).__name__}, not an object")
  for role in ("question", "answer", "solution", "id"):
    name = getattr(fields, role)
    if name and name not in record:
      raise DataError(f"{where}: missing field {name!r} ({role}); the record has {sorted(record)}")
  answer = ANSWER_FORMATS[fields.format](_as_text(record[fields.answer]))
  if answer is None:
    raise NoGoldAnswer(f"{where}: no gold answer in field {fields.answer!r} (format {fields.format!r})")
  return Problem(
      question=_as_text(record[fields.question]),
      answer=answer,
      id=_as_text(record[fields.id]) if fields.id else str(number),
      source=source,
      solution=_as_text(record[fields.solution]) if fields.solution else "",
  )


def _records(path: pathlib.Path) -> Iterable[tuple[str, Any]]:
  """(location, record) pairs of a JSONL or Parquet file; unreadable records fail with their line."""
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  if path.suffix == ".parquet":
    import pyarrow.parquet  # installed with datasets; only parquet files need it
    try:
      rows = pyarrow.parquet.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 -- any reader failure is a bad file
      raise DataError(f"{path}: unreadable Parquet file: {e}") from e
    yield from ((f"{path}:row {i}", row) for i, row in enumerate(rows))
    return
  with path.open(encoding="utf-8") as file:
    for line_number, line in enumerate(file, 1):
      if line.strip():
        try:
          yield f"{path}:{line_number}", json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{line_number}: unreadable JSON record: {e}") from e


Filter = Mapping[str, frozenset[str]]  # record field -> the values (as text) a kept record may have there

WHERE = "where."  # the prefix of filter options: where.level=4|5
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a metric-key component and a file name


@dataclasses.dataclass(frozen=True)
class Spec:
  """A dataset spec, parsed (see the module docstring)."""
  kind: str  # "benchmark", "file", "gym" or "proc"
  target: str  # the benchmark's name, the file's path, the gym task or the procedural task
  options: Mapping[str, str]  # the kind's own options: a file's fields, a gym task's config
  keep: Filter
  name: str
  strict: bool


def parse_spec(spec: str) -> Spec:
  """Checks a spec's syntax and options without loading anything; DataError names what is wrong."""
  kind, _, rest = spec.partition(":") if spec.startswith(("file:", "gym:", "proc:")) else ("benchmark", "", spec)
  target, _, query = rest.partition("?")
  options = parse_options(query, spec)
  name, strict = options.pop("name", None), options.pop("strict", "0")
  filters = {k: v for k, v in options.items() if k.startswith(WHERE)}
  options = {k: v for k, v in options.items() if not k.startswith(WHERE)}
  if strict not in ("0", "1"):
    raise DataError(f"{spec}: strict={strict!r}; use strict=1 (refuse unreadable gold answers) or strict=0")
  if kind == "benchmark":
    if target not in BENCHMARKS:
      raise DataError(f"unknown dataset spec {spec!r}: not a benchmark ({', '.join(BENCHMARKS)}) "
                      "and not file:... or gym:...")
    if options:
      raise DataError(f"{spec}: a named benchmark takes only {WHERE}<field>=a|b filters, name= and strict=, "
                      f"not {sorted(options)}")
  elif kind == "file":
    unknown = set(options) - {f.name for f in dataclasses.fields(Fields)}
    if unknown or not {"question", "answer"} <= set(options):
      raise DataError(f"{spec}: a file spec needs question= and answer= (and may give format, solution, id, "
                      f"{WHERE}<field>, name, strict); unknown keys: {sorted(unknown)}")
  elif filters or strict == "1":
    raise DataError(f"{spec}: {WHERE}<field> filters and strict= apply to benchmarks and files; a gym or "
                    "procedural task is narrowed by its own config keys, and its answers are generated, never read")
  elif kind == "proc":
    procedural_options(target, options, spec)
  if name is None:
    base = pathlib.Path(target).stem if kind == "file" else target
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base + "".join(f"_{k}={v}" for k, v in filters.items())).strip("_")
  elif not _NAME.fullmatch(name):
    raise DataError(f"{spec}: name={name!r} must be letters, digits, '_', '.' or '-' (it names metrics and files)")
  keep = {k[len(WHERE):]: frozenset(v.split("|")) for k, v in filters.items()}
  return Spec(kind, target, options, keep, name, strict == "1")


def spec_name(spec: str) -> str:
  """The name of a spec's eval metrics (eval/<name>/greedy_accuracy) and results files."""
  return parse_spec(spec).name


def _problems(rows: Iterable[tuple[str, Any]], fields: Fields, source: str, keep: Filter,
              strict: bool = False) -> list[Problem]:
  """The rows ((location, record) pairs) that pass `keep`, as Problems. A record's id defaults to its number
  in the whole file, so filtering does not renumber problems. A record whose gold answer cannot be read is
  skipped and counted in a warning, or stops the load when `strict`."""
  seen: dict[str, set[str]] = {field: set() for field in keep}
  problems, unread = [], []
  for number, (where, record) in enumerate(rows):
    if keep and isinstance(record, Mapping):
      missing = sorted(set(keep) - set(record))
      if missing:
        raise DataError(f"{where}: missing field {missing[0]!r} ({WHERE}{missing[0]}); the record has {sorted(record)}")
      values = {field: _as_text(record[field]) for field in keep}
      for field, value in values.items():
        seen[field].add(value)
      if not all(values[field] in allowed for field, allowed in keep.items()):
        continue
    try:
      problems.append(to_problem(record, fields, source, where, number))
    except NoGoldAnswer as e:
      if strict:
        raise
      unread.append(e)
  if keep and not problems and not unread:
    found = "; ".join(f"{field}: {sorted(values)[:20]}" for field, values in seen.items())
    raise DataError(f"{source}: no record passes the filter; values found ({found})")
  if unread and not problems:
    raise DataError(f"{source}: no record has a gold answer that reads as format {fields.format!r}; first: {unread[0]}")
  if unread:
    logging.warning("%s: skipped %d of %d records whose gold answer cannot be read (first: %s); add strict=1 to "
                    "the spec to stop at them instead", source, len(unread), len(unread) + len(problems), unread[0])
  return problems


def load_file(path: str | pathlib.Path, fields: Fields, source: str, keep: Filter | None = None,
              strict: bool = False) -> list[Problem]:
  if fields.format not in ANSWER_FORMATS:
    raise DataError(f"{source}: unknown answer format {fields.format!r}; known: {sorted(ANSWER_FORMATS)}")
  return _problems(_records(pathlib.Path(path)), fields, source, keep or {}, strict)


def load_hub(benchmark: Benchmark, source: str, keep: Filter | None = None, strict: bool = False) -> list[Problem]:
  import datasets  # heavy to import and only needed online

  rows = datasets.load_dataset(benchmark.hub_id, benchmark.hub_config, split=benchmark.hub_split)
  where = f"{benchmark.hub_id}[{benchmark.hub_split}]"
  return _problems(((f"{where} row {i}", row) for i, row in enumerate(rows)), benchmark.fields, source, keep or {},
                   strict)


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load_gym(task: str, options: dict[str, Any], source: str) -> list[Problem]:
  options = {"size": 1000, "seed": 0, **options}
  try:
    dataset = reasoning_gym.create_dataset(task, **options)
  except (ValueError, TypeError, AssertionError) as e:
    raise DataError(f"{source}: reasoning-gym refused task {task!r} with {options}: {e}") from e
  seed = options["seed"]
  return [Problem(question=entry["question"], answer=_as_text(entry["answer"]), id=f"{task}/{seed}/{i}",
                  source=source, gym_entry=entry)
          for i, entry in enumerate(dataset)]


def procedural_options(task: str, options: Mapping[str, str], source: str) -> Any:
  """The Options of procedural task `task` from a spec's text options; DataError names what is wrong."""
  if task not in PROCEDURAL:
    raise DataError(f"{source}: unknown procedural task {task!r}; known: {sorted(PROCEDURAL)}")
  fields = {f.name for f in dataclasses.fields(PROCEDURAL[task].options)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise DataError(f"{source}: unknown option(s) {unknown} of proc:{task}; known: {sorted(fields)}")
  try:
    return PROCEDURAL[task].options(**{k: int(v) for k, v in options.items()})
  except ValueError as e:
    raise DataError(f"{source}: {e}") from e


def load_proc(task: str, options: Mapping[str, str], source: str) -> list[Problem]:
  opts = procedural_options(task, options, source)
  return [Problem(question=q, answer=a, id=f"{task}/{opts.seed}/{i}", source=source, solution=s)
          for i, (q, s, a) in enumerate(PROCEDURAL[task].generate(opts))]


def split_specs(specs: str) -> list[str]:
  """Splits at top-level commas only: gym:...?operators=('+','-') is one spec."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(specs + ","):
    depth += (ch in "([{") - (ch in ")]}")
    if ch == "," and depth == 0:
      parts.append(specs[start:i].strip())
      start = i + 1
  return [p for p in parts if p]


def parse_options(query: str, spec: str) -> dict[str, str]:
  """key=value pairs separated by '&', percent-decoded; unlike a URL query, '+' stays '+'."""
  options = {}
  for pair in filter(None, query.split("&")):
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise DataError(f"{spec}: option {pair!r} is not key=value")
    options[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
  return options


def load(spec: str, data_dir: str | pathlib.Path = "", hub: bool = False, limit: int = 0) -> list[Problem]:
  """The problems of one spec (see the module docstring), the first `limit` of them when limit > 0."""
  parsed = parse_spec(spec)
  if parsed.kind == "file":
    problems = load_file(parsed.target, Fields(**parsed.options), spec, parsed.keep, parsed.strict)
  elif parsed.kind == "gym":
    problems = load_gym(parsed.target, {k: _literal(v) for k, v in parsed.options.items()}, spec)
  elif parsed.kind == "proc":
    problems = load_proc(parsed.target, parsed.options, spec)
  else:
    benchmark = BENCHMARKS[parsed.target]
    if hub:
      problems = load_hub(benchmark, spec, parsed.keep, parsed.strict)
    elif not benchmark.local_file:
      raise DataError(f"{spec}: no local copy of this benchmark; it loads from the hub "
                      f"({benchmark.hub_id}) with config.data.hub=True on a machine with network access")
    else:
      problems = load_file(pathlib.Path(data_dir or DEFAULT_DATA_DIR) / benchmark.local_file,
                           benchmark.fields, spec, parsed.keep, parsed.strict)
  return problems[:limit] if limit > 0 else problems


def problems_for_step(problems: list[Problem], step: int, count: int, seed: int) -> list[Problem]:
  """The `count` problems of training step `step`: epochs of seeded permutations, so the data position
  is the step itself (resuming needs no extra state)."""
  n = len(problems)
  orders: dict[int, np.ndarray] = {}
  picks = []
  for flat in range(step * count, (step + 1) * count):
    epoch, position = divmod(flat, n)
    if epoch not in orders:
      orders[epoch] = np.random.default_rng((seed, epoch)).permutation(n)
    picks.append(problems[orders[epoch][position]])
  return picks


def validate(cfg_data: ml_collections.ConfigDict) -> None:
  """Checks config.data without loading anything."""
  for key in ("train", "eval"):
    for spec in split_specs(cfg_data[key]):
      try:
        parse_spec(spec)
      except DataError as e:
        raise ConfigError(f"config.data.{key}: {e}") from e
  names = [spec_name(spec) for spec in split_specs(cfg_data.eval)]
  repeated = sorted({n for n in names if names.count(n) > 1})
  check(not repeated, "data.eval", f"several eval sets are named {repeated}: give each its own name= option")
  check(cfg_data.template in prompts.TEMPLATES, "data.template", f"one of {sorted(prompts.TEMPLATES)}")
  check(cfg_data.reward_workers >= 1, "data.reward_workers", "must be >= 1")
  check(cfg_data.reward_timeout_s > 0, "data.reward_timeout_s", "must be > 0")
