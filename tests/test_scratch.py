"""Scratch checkpoints: tokenizer, chat template, and a model that transformers loads with the same logits."""
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from tests import tiny_checkpoints as tc
from asympo_jax.model import hf_io
from asympo_jax.model import scratch
from asympo_jax.model.decoder import create_model

CORPUS = ["Question: what is 12 + 7? Answer: 19.", "Compute 3 * 4. The answer is 12."] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("scratch"))
  return path, scratch.build(path, "tiny", CORPUS, seed=5)


def test_tokenizer_encodes_any_text_and_has_a_chat_template(tiny):
  path, cfg = tiny
  tok = transformers.AutoTokenizer.from_pretrained(path)
  assert len(tok) <= cfg.vocab_size
  text = "Übung: 3² = 9 ✓\n\ttabs & émojis 🙂"
  assert tok.decode(tok(text)["input_ids"]) == text
  assert len(tok("what is 12 + 7?")["input_ids"]) < len("what is 12 + 7?")  # merges learned from the corpus
  chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
  assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  assert cfg.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id


def test_scratch_model_loads_in_transformers_and_here(tiny):
  path, cfg = tiny
  model = hf_io.load_model(path)
  assert model.cfg == cfg
  fresh = create_model(cfg, seed=5)
  for (key, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(fresh))):
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(key))
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager").eval()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 5)).astype(np.int32)
  mask = np.array([[1] * 5, [0, 0, 1, 1, 1]], np.int32)
  hidden, _ = model(tokens, tc.positions_from_mask(mask), mask)
  ours = np.asarray(model.logits(hidden))
  np.testing.assert_allclose(ours[mask > 0], tc.torch_logits(torch_model, tokens, mask)[mask > 0], atol=1e-4)
