"""A procedural task with worked solutions: multi-term integer arithmetic, written out one operation a line.

    Question: 37 + 58 - 24 + 91
    Solution: 37 + 58 = 95
              95 - 24 = 71
              71 + 91 = 162
              \\boxed{162}

Why this task (docs/staleness_study.md): the staleness study needs responses long enough (30-150 tokens) that
the current NLL of stale responses can drift apart between right and wrong ones, a policy that a short
supervised warm start leaves well between 0% and 100% accurate, and right and wrong responses of different
lengths. More terms mean more lines and more chances of a slip, so wrong responses run longer, as in math RL.
It is generated from a seed, so it is offline, unlimited and the same on every machine.

Spec: `proc:worked_arithmetic?size=2000&seed=0&min_terms=3&max_terms=8&min_value=10&max_value=99`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

OPERATORS = ("+", "-")


@dataclasses.dataclass(frozen=True)
class Options:
  size: int = 1000
  seed: int = 0
  min_terms: int = 3  # operands per problem, so min_terms - 1 worked lines
  max_terms: int = 8
  min_value: int = 10  # operands are drawn uniformly from [min_value, max_value]
  max_value: int = 99

  def __post_init__(self):
    if not 2 <= self.min_terms <= self.max_terms:
      raise ValueError(f"need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
    if not 0 <= self.min_value <= self.max_value:
      raise ValueError(f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}")
    if self.size < 1:
      raise ValueError(f"need size >= 1, got {self.size}")


def worked_solution(operands: list[int], operators: list[str]) -> tuple[str, int]:
  """The step-by-step solution text ending in \\boxed{answer}, and the answer."""
  total, lines = operands[0], []
  for op, value in zip(operators, operands[1:]):
    new = total + value if op == "+" else total - value
    lines.append(f"{total} {op} {value} = {new}")
    total = new
  return "\n".join(lines + [f"\\boxed{{{total}}}"]), total


def generate(options: Options) -> list[tuple[str, str, str]]:
  """`options.size` (question, worked solution, answer) triples, a function of the options alone."""
  rng = np.random.default_rng(options.seed)
  out = []
  for _ in range(options.size):
    terms = int(rng.integers(options.min_terms, options.max_terms + 1))
    operands = [int(v) for v in rng.integers(options.min_value, options.max_value + 1, size=terms)]
    operators = [OPERATORS[i] for i in rng.integers(0, len(OPERATORS), size=terms - 1)]
    question = " ".join([str(operands[0])] + [f"{op} {v}" for op, v in zip(operators, operands[1:])])
    solution, answer = worked_solution(operands, operators)
    out.append((question, solution, str(answer)))
  return out
