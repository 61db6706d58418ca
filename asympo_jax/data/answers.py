"""Final-answer extraction from free text: the last \\boxed{}, GSM8K's "####" line, or the final number.

Pure string functions, shared by the data loaders (gold answers inside reference solutions) and the rewards
(answers inside model outputs). Every function is linear in the text length and bounded by `max_chars`, so a
hostile 1 MB output costs one scan, never a quadratic search.
"""
from __future__ import annotations

import collections
import re

BOXED_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str, max_chars: int = 1000) -> str | None:
  """Content of the last \\boxed{...} or \\fbox{...}, or None when absent, unclosed or longer than max_chars.

  Without braces (`\\boxed 5`, which some MATH solutions write and verl's extractor reads), the content runs
  from the space to the next "$" or line end. Only the last occurrence is considered: an unclosed last box
  means the output was cut off, and searching earlier boxes would make hostile inputs quadratic.
  """
  start = max(text.rfind(command) for command in BOXED_COMMANDS)
  if start < 0:
    return None
  command = next(c for c in BOXED_COMMANDS if text.startswith(c, start))
  after = start + len(command)
  brace = after
  while brace < len(text) and text[brace] == " ":
    brace += 1
  if brace >= len(text):
    return None
  if text[brace] != "{":
    return _unbraced(text, brace, max_chars) if brace > after else None  # `\\boxedfoo` is another command
  depth = 0
  stop = min(len(text), brace + max_chars + 2)
  for end in range(brace, stop):
    char = text[end]
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return text[brace + 1:end].strip()
  return None


def _unbraced(text: str, begin: int, max_chars: int) -> str | None:
  """The content of `\\boxed 5`: from `begin` to the next "$" or line end, at most max_chars long."""
  window = text[begin:begin + max_chars + 1]
  ends = [i for i in (window.find("$"), window.find("\n")) if i >= 0]
  end = min(ends) if ends else len(window)
  if end > max_chars:
    return None
  return window[:end].strip() or None


def gsm8k_final(text: str, max_chars: int = 1000) -> str | None:
  """The rest of the line after the last "####" (GSM8K's answer convention), without $ signs."""
  start = text.rfind("####")
  if start < 0:
    return None
  line = text[start + 4:start + 4 + max_chars + 1].split("\n", 1)[0]
  answer = line.replace("$", "").strip().rstrip(".").strip()
  return answer if answer and len(answer) <= max_chars else None


def final_number(text: str) -> str | None:
  """The last number in the text (thousands separators kept; math-verify reads them)."""
  last = collections.deque(_NUMBER.finditer(text), maxlen=1)  # keeps only the last match of a long text
  return last[0].group(0) if last else None


def extract_answer(text: str, max_chars: int = 1000) -> str | None:
  """A model output's final answer: the last \\boxed{}, else the "####" line, else the final number.

  An output that uses a convention but breaks it (an unclosed or oversized box, an empty "####" line) has
  no answer: falling through to "the final number" would reward a number the model did not give as its answer.
  """
  if any(command in text for command in BOXED_COMMANDS):
    return last_boxed(text, max_chars)
  if "####" in text:
    return gsm8k_final(text, max_chars)
  return final_number(text)


def gsm8k_gold(solution: str) -> str | None:
  """GSM8K's gold answer: the number after "####", with thousands separators removed."""
  answer = gsm8k_final(solution)
  return answer.replace(",", "") if answer is not None else None
