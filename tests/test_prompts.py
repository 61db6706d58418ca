"""Prompt templates: plain for base models, the tokenizer's chat template for instruct models."""
import pytest
import tokenizers
import transformers

from asympo_jax.data import prompts

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _tokenizer(chat_template=None):
  model = tokenizers.models.WordLevel({"[UNK]": 0, "<s>": 1}, unk_token="[UNK]")
  raw = tokenizers.Tokenizer(model)
  raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", bos_token="<s>")
  tok.chat_template = chat_template
  return tok


def test_plain_template_asks_for_a_box():
  (text,) = prompts.render("plain", ["What is 2+3?"])
  assert text.startswith("Question: What is 2+3?\n") and "\\boxed{}" in text


def test_chat_template_comes_from_the_tokenizer():
  (text,) = prompts.render("chat", ["What is 2+3?"], _tokenizer(CHAT_TEMPLATE))
  assert text == ("<|user|>What is 2+3?\nPlease reason step by step, and put your final answer within \\boxed{}."
                  "<|end|><|assistant|>")


def test_chat_without_a_template_is_refused():
  with pytest.raises(ValueError, match="chat template"):
    prompts.render("chat", ["q"], _tokenizer())
  with pytest.raises(ValueError, match="unknown prompt template"):
    prompts.render("fancy", ["q"])


def test_encode_gives_one_id_list_per_question():
  ids = prompts.encode("plain", ["a b", "c"], _tokenizer())
  assert len(ids) == 2 and all(isinstance(i, int) for row in ids for i in row)


def test_bare_template_is_the_question_alone():
  (text,) = prompts.render("bare", ["What is 2 + 3?"])
  assert text == "Question: What is 2 + 3?\nAnswer:"
  assert "boxed" not in text
