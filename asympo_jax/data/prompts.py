"""Prompt templates: a plain one for base models, a bare one for models trained from scratch, and the
tokenizer's own chat template for instruct models.

Both ask for the answer in \\boxed{}, the convention the rewards read (answers.py).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def plain(question: str, tokenizer: Any = None) -> str:
  del tokenizer  # a base model sees raw text
  return f"Question: {question}\n{INSTRUCTION}\nAnswer:"


def bare(question: str, tokenizer: Any = None) -> str:
  # For models trained from scratch (the embedded default): they never learned to follow an instruction,
  # and the answer convention comes from the warm start, so the prompt stays a few tokens long.
  del tokenizer
  return f"Question: {question}\nAnswer:"


def chat(question: str, tokenizer: Any) -> str:
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("config.data.template='chat' needs a tokenizer with a chat template; "
                     f"{type(tokenizer).__name__} has none (use 'plain' for base models)")
  return tokenizer.apply_chat_template([{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
                                       tokenize=False, add_generation_prompt=True)


TEMPLATES: dict[str, Callable[[str, Any], str]] = {"plain": plain, "bare": bare, "chat": chat}
# A chat template writes its own BOS and special tokens; a plain prompt gets the tokenizer's.
ADD_SPECIAL_TOKENS = {"plain": True, "bare": True, "chat": False}


def render(template: str, questions: Sequence[str], tokenizer: Any = None) -> list[str]:
  if template not in TEMPLATES:
    raise ValueError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
  return [TEMPLATES[template](q, tokenizer) for q in questions]


def encode(template: str, questions: Sequence[str], tokenizer: Any) -> list[list[int]]:
  """Prompt token ids, unpadded (the sampler pads)."""
  texts = render(template, questions, tokenizer)
  return tokenizer(texts, add_special_tokens=ADD_SPECIAL_TOKENS[template])["input_ids"]
