"""eval.py end to end: a tiny random HF checkpoint, the local gsm8k and math500 files, JSON and PNG out."""
import json
import os
import string
import subprocess
import sys

import numpy as np
import tokenizers
import torch
import transformers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
  """One token per printable ASCII character (99 ids with the specials), so any question encodes."""
  vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
  for char in "\n" + string.printable[:95]:
    vocab.setdefault(char, len(vocab))
  raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  raw.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
  raw.decoder = tokenizers.decoders.Fuse()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", bos_token="<s>",
                                              eos_token="</s>", pad_token="</s>")


def tiny_checkpoint(path: str, seed: int) -> None:
  tokenizer = char_tokenizer()
  config = transformers.AutoConfig.for_model(
      "qwen3", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=8, intermediate_size=48, max_position_embeddings=256,
      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config)
  with torch.no_grad():  # far from HF's near-uniform init, so greedy outputs depend on the weights
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else torch.randn_like(p))
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)


def orbax_run(run_dir: str, steps_from: dict[int, str], hf_path: str) -> None:
  """A run directory as the trainer writes it: checkpoints/<step>/{state, meta}, with state["train"] holding
  (params, opt_state) and meta the run's config; params copied from HF checkpoints."""
  from flax import nnx

  from asympo_jax.train import checkpoint
  from asympo_jax.run import config
  from asympo_jax.model import hf_io

  cfg = config.base_config()
  cfg.model.hf_path = hf_path
  cfg.workdir = run_dir
  checkpointer = checkpoint.Checkpointer(run_dir, keep=5)
  for step, source in steps_from.items():
    params = nnx.state(hf_io.load_model(source), nnx.Param)
    state = {"train": {"params": params, "opt_state": {"mu": params}}, "rng": np.zeros(2, np.uint32),
             "pending": {}}
    checkpointer.save(step, state, {"step": step, "config": cfg.to_dict()})
  checkpointer.close()


def test_eval_script_end_to_end(tmp_path):
  base = tmp_path / "base"
  for step in (0, 5):
    tiny_checkpoint(str(base / f"step_{step}"), seed=step)
  orbax_run(str(tmp_path / "rl"), {3: str(base / "step_0"), 9: str(base / "step_5")}, str(base / "step_0"))
  out = tmp_path / "eval"
  cmd = [sys.executable, os.path.join(REPO, "eval.py"), f"--out_dir={out}", "--benchmarks=gsm8k_test,math500_test",
         "--max_problems=3", "--samples=2", "--max_new_tokens=6", "--max_prompt_len=48", "--batch_size=2",
         f"--checkpoint={base / 'step_0'}", f"--checkpoint={base / 'step_5'}", f"--run={tmp_path / 'rl'}"]
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # The same checkpoint on one device: the 8-device run split its batches and sampled the same outputs.
  one = tmp_path / "eval_one_device"
  cmd_one = [c for c in cmd if not c.startswith(("--checkpoint", "--run", "--out_dir"))]
  env_one = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run(cmd_one + [f"--out_dir={one}", f"--checkpoint={base / 'step_5'}"], capture_output=True,
                          text=True, env=env_one, cwd=tmp_path, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("gsm8k_test", "math500_test"):
    with open(out / f"{name}.json") as f:
      stored = json.load(f)
    records = stored["results"]
    assert stored["benchmark"] == name
    assert [(r["run"], r["step"]) for r in records] == [("base", 0), ("base", 5), ("rl", 3), ("rl", 9)]
    with open(one / f"{name}.json") as f:
      (on_one_device,) = json.load(f)["results"]
    assert on_one_device["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    for r in records:
      assert r["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
      assert r["problems"] == 3 and r["prompts_truncated"] == 3
      assert {"greedy_accuracy", "avg@2", "pass@1", "pass@2"} <= set(r)
      assert all(0.0 <= r[k] <= 1.0 for k in ("greedy_accuracy", "avg@2", "pass@1", "pass@2"))
      assert sum(r["outcomes"].values()) == 3 * (1 + 2)  # every greedy and sampled output was scored
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    outputs, samples = {}, {}
    for run_step in ("base_0", "base_5", "rl_3", "rl_9"):
      with open(out / "samples" / name / f"{run_step}.jsonl") as f:
        lines = [json.loads(line) for line in f]
      assert len(lines) == 3 and all(len(x["sample_rewards"]) == 2 for x in lines)
      outputs[run_step] = [x["greedy"] for x in lines]
      samples[run_step] = lines
    # The orbax steps hold the HF checkpoints' params: the same greedy outputs show they were loaded.
    assert outputs["base_0"] != outputs["base_5"]
    assert outputs["rl_3"] == outputs["base_0"] and outputs["rl_9"] == outputs["base_5"]
    with open(one / "samples" / name / "base_5.jsonl") as f:
      assert [json.loads(line) for line in f] == samples["base_5"]
