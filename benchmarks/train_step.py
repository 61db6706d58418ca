"""Train-step throughput and MFU on the DESIGN §3 train workload, beside a PyTorch reference step.

    python benchmarks/train_step.py [--configs tiny,small] [--steps 3]

Workload: 64 sequences of 96 tokens (32 prompt + 64 response), asympo loss, one AdamW update, float32,
one micro-batch, on all of this machine's CPU cores as one JAX device. The reference is transformers'
PyTorch model of the same architecture and weights with the same loss and torch.optim.AdamW, 2 threads.

FLOPs per step (counted as multiply-adds x 2, forward + backward = 3 x forward):
  6 * tokens * (N_layers + D * V)  +  12 * L * B * T^2 * H * hd
where N_layers counts the attention and MLP matrices of all layers, D * V is the LM head (tied embedding)
and the second term is attention scores and values. MFU divides the achieved FLOP/s by the best f32 matmul
rate measured in this run (2048^3 jnp.dot and torch.mm, whichever is faster).
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from flax import nnx
from jax.sharding import Mesh

from asympo_jax import hf_io, optim, train_step
from asympo_jax.config import base_config
from asympo_jax.model import Decoder
from asympo_jax.model_config import ModelConfig

CONFIGS = {  # DESIGN §3
    "tiny": dict(vocab_size=512, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, intermediate_size=768),
    "small": dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, intermediate_size=1536),
}
B, PROMPT, RESPONSE, G = 64, 32, 64, 8
T = PROMPT + RESPONSE
THREADS = 2


def hf_config(name: str) -> transformers.PretrainedConfig:
  return transformers.Qwen3Config(**CONFIGS[name], tie_word_embeddings=True, max_position_embeddings=256,
                                  rms_norm_eps=1e-6, rope_theta=10000.0)


def step_flops(c: dict) -> float:
  D, L, H, K, hd, F, V = (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                          c["num_key_value_heads"], c["head_dim"], c["intermediate_size"], c["vocab_size"])
  per_layer = D * H * hd * 2 + D * K * hd * 2 + 3 * D * F
  return 6 * B * T * (L * per_layer + D * V) + 12 * L * B * T * T * H * hd


def matmul_peak(n: int = 2048, reps: int = 5) -> tuple[float, float]:
  """Best GFLOP/s of an n^3 float32 matmul: (jax, torch)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best_jax = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
  t = torch.randn(n, n)
  torch.mm(t, t)
  best_torch = min(_timed(lambda: torch.mm(t, t)) for _ in range(reps))
  return 2 * n**3 / best_jax / 1e9, 2 * n**3 / best_torch / 1e9


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def make_batch(vocab: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  loss_mask = np.zeros((B, T), np.float32)
  loss_mask[:, PROMPT:] = 1.0
  return {"tokens": rng.integers(0, vocab, (B, T)).astype(np.int32), "input_mask": np.ones((B, T), np.int32),
          "loss_mask": loss_mask, "rewards": rng.integers(0, 2, (B,)).astype(np.float32),
          "policy_version": np.zeros((B,), np.int32)}


def jax_step_time(path: str, vocab: int, steps: int, chunk: int) -> tuple[float, float]:
  """(compile + first step, median step) seconds of our train step."""
  cfg = base_config()
  cfg.rollout.prompts_per_step, cfg.rollout.group_size = B // G, G
  cfg.optim.lr, cfg.optim.clip_norm = 1e-5, 1.0
  cfg.train.logprob_chunk = chunk
  mesh = Mesh(np.array(jax.devices()).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  graphdef, params, rest = nnx.split(hf_io.load_model(path, mesh), nnx.Param, ...)
  tx, schedule = optim.make_optimizer(cfg.optim, total_steps=100)
  state, shardings = train_step.init_state(params, tx, mesh)
  step = train_step.make_train_step(cfg, graphdef, rest, tx, schedule, mesh, shardings)
  batch = jax.device_put(make_batch(vocab), train_step.batch_sharding(mesh))
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def torch_step_time(model: torch.nn.Module, steps: int) -> float:
  """Median seconds of one reference step: forward, the asympo loss, backward, AdamW."""
  batch = {k: torch.as_tensor(v) for k, v in make_batch(model.config.vocab_size).items()}
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
  rewards = batch["rewards"].view(-1, G)
  adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).view(-1)
  tokens, mask = batch["tokens"].long(), batch["loss_mask"][:, 1:]

  def one():
    logits = model(input_ids=tokens).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
    nll = -(lp * mask).sum(1) / mask.sum(1).clamp(min=1)
    loss = (adv * nll / nll.detach().clamp(min=1e-3)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  one()
  return float(np.median([_timed(one) for _ in range(steps)]))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--configs", default="tiny,small")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--chunk", type=int, default=0, help="train.logprob_chunk")
  parser.add_argument("--workdir", default="/tmp/asympo_bench_train_step")
  args = parser.parse_args()
  torch.set_num_threads(THREADS)
  jax_peak, torch_peak = matmul_peak()
  peak = max(jax_peak, torch_peak)
  print(f"machine: {os.cpu_count()} CPU cores, JAX {jax.__version__}, torch {torch.__version__} ({THREADS} threads)")
  print(f"f32 matmul peak (2048^3): jax {jax_peak:.1f} GFLOP/s, torch {torch_peak:.1f} GFLOP/s -> {peak:.1f}")
  print(f"workload: {B} sequences x {T} tokens = {B * T} tokens/step, asympo loss, AdamW, float32")
  for name in args.configs.split(","):
    flops = step_flops(CONFIGS[name])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(name), dtype=torch.float32)
    path = os.path.join(args.workdir, name)
    model.save_pretrained(path)
    first, ours = jax_step_time(path, CONFIGS[name]["vocab_size"], args.steps, args.chunk)
    ref = torch_step_time(model.train(), args.steps)
    for label, sec in (("jax (ours)", ours), ("torch reference", ref)):
      print(f"{name:5s} {label:16s} {sec:7.3f} s/step  {B * T / sec:8.0f} tokens/s  "
            f"{flops / sec / 1e9:6.1f} GFLOP/s  MFU {100 * flops / sec / 1e9 / peak:5.1f}%")
    print(f"{name:5s} FLOPs/step {flops / 1e12:.3f} T; jax compile + first step {first:.1f} s; "
          f"jax/torch tokens/s ratio {ref / ours:.2f}")


if __name__ == "__main__":
  main()
