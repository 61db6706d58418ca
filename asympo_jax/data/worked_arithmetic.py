"""A procedural task with worked solutions: multi-term integer arithmetic, reduced one operation a line.

    Question: 5 - 7 - 1 + 7 - 2
    Solution: = -2 - 1 + 7 - 2
              = -3 + 7 - 2
              = 4 - 2
              = 2
              \\boxed{2}

Why this task (docs/staleness_study.md): the staleness study needs responses long enough (30-150 tokens) that
the current NLL of stale responses can drift apart between right and wrong ones, a policy that a short
supervised warm start leaves well between 0% and 100% accurate, and right and wrong responses of different
lengths. More terms mean more lines and more chances of a slip, so wrong responses run longer, as in math RL.
Each line rewrites the previous one with its first operation done, so the next operand is always the one
right after the leading number (a layout that wrote `a + b = c` lines had to find the next operand in the
question, and stayed at 2% greedy accuracy after 200 warm-start steps; this one reached 5% there, 15% at 500).
It is generated from a seed, so it is offline, unlimited and the same on every machine.

Spec: `proc:worked_arithmetic?size=2000&seed=0&min_terms=5&max_terms=8&min_value=1&max_value=9`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

OPERATORS = ("+", "-")


@dataclasses.dataclass(frozen=True)
class Options:
  size: int = 1000
  seed: int = 0
  min_terms: int = 5  # operands per problem, so min_terms - 1 worked lines
  max_terms: int = 8
  min_value: int = 1  # operands are drawn uniformly from [min_value, max_value]
  max_value: int = 9

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
  for i, (op, value) in enumerate(zip(operators, operands[1:])):
    total = total + value if op == "+" else total - value
    lines.append("= " + expression([total] + operands[i + 2:], operators[i + 1:]))
  return "\n".join(lines + [f"\\boxed{{{total}}}"]), total


def expression(operands: list[int], operators: list[str]) -> str:
  return " ".join([str(operands[0])] + [f"{op} {v}" for op, v in zip(operators, operands[1:])])


def generate(options: Options) -> list[tuple[str, str, str]]:
  """`options.size` (question, worked solution, answer) triples, a function of the options alone."""
  rng = np.random.default_rng(options.seed)
  out = []
  for _ in range(options.size):
    terms = int(rng.integers(options.min_terms, options.max_terms + 1))
    operands = [int(v) for v in rng.integers(options.min_value, options.max_value + 1, size=terms)]
    operators = [OPERATORS[i] for i in rng.integers(0, len(OPERATORS), size=terms - 1)]
    question = expression(operands, operators)
    solution, answer = worked_solution(operands, operators)
    out.append((question, solution, str(answer)))
  return out
