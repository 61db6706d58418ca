"""The PyTorch side of the benchmarks, in a process of its own that never starts JAX's runtime.

Run in the same process as JAX's CPU runtime, transformers' `generate` on `tiny` ran several-fold slower than
alone (docs/benchmarks.md, "Generation"), so the JAX benchmarks start this script as a subprocess
and read one JSON line back. It also writes the shared checkpoint, so the JAX process never imports torch.

    python -m benchmarks.torch_reference write --size tiny --path /tmp/ckpt
    python -m benchmarks.torch_reference generate --path /tmp/ckpt --repeats 3
    python -m benchmarks.torch_reference train_step --path /tmp/ckpt --repeats 3
    python -m benchmarks.torch_reference generate_longtail --path /tmp/ckpt --size tiny --mode sdpa
"""
from __future__ import annotations

import argparse
import json

import torch
import transformers

from benchmarks import workloads


def write(size: str, path: str, seed: int = 0) -> None:
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3Config(**workloads.hf_fields(size)),
                                                        dtype=torch.float32)
  model.save_pretrained(path)


def generate(model: torch.nn.Module, repeats: int) -> float:
  """Best seconds of transformers' sampling `generate` on the generation workload of docs/design.md §10."""
  ids = torch.as_tensor(workloads.generation_prompts(model.config.vocab_size))
  mask = torch.ones_like(ids)

  def run():
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=workloads.NEW_TOKENS,
                           min_new_tokens=workloads.NEW_TOKENS, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           eos_token_id=None, pad_token_id=0)
    assert out.shape == (workloads.PROMPTS, workloads.PROMPT_LEN + workloads.NEW_TOKENS)

  return workloads.best_seconds(run, repeats)


# transformers' settings for the long-tailed workload: sdpa attention with its default dynamic cache, a static
# cache with the model's forward under torch.compile, and continuous batching (`generate_batch`).
LONGTAIL_MODES = ("sdpa", "static_compile", "generate_batch")


def generate_longtail(model: torch.nn.Module, repeats: int, size: str, mode: str) -> tuple[float, list[int]]:
  """Best seconds of `mode` on the long-tailed workload of `size` (workloads.LONGTAIL), and the response
  lengths of its last run (EOS included; every run draws the same, from the same torch seed)."""
  _, cap = workloads.LONGTAIL[size]
  eos = workloads.longtail_eos(size)
  prompts = workloads.longtail_prompts(model.config.vocab_size)
  config = transformers.GenerationConfig(max_new_tokens=cap, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                         eos_token_id=eos, pad_token_id=0)
  lengths: list[int] = []
  if mode == "static_compile":
    config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

  def lengths_of(responses_BxN: torch.Tensor) -> list[int]:
    is_eos = torch.isin(responses_BxN, torch.as_tensor(eos))
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses_BxN.shape[1])
    return first.tolist()

  def run():
    torch.manual_seed(0)
    with torch.no_grad():
      if mode == "generate_batch":
        out = model.generate_batch(inputs=prompts.tolist(), generation_config=config, progress_bar=False)
        lengths[:] = [len(o.generated_tokens) for o in out.values()]
      else:
        ids = torch.as_tensor(prompts)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        lengths[:] = lengths_of(out[:, ids.shape[1]:])

  return workloads.best_seconds(run, repeats), lengths


def train_step(model: torch.nn.Module, repeats: int) -> float:
  """Best seconds of one reference step: forward, the asympo loss, backward, clipping, torch AdamW."""
  batch = workloads.train_batch(model.config.vocab_size)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
  rewards = torch.as_tensor(batch.rewards_B).view(-1, workloads.G)
  adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).view(-1)
  tokens, mask = torch.as_tensor(batch.tokens_BxT).long(), torch.as_tensor(batch.loss_mask_BxT)[:, 1:]
  model.train()

  def run():
    logits = model(input_ids=tokens).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
    nll = -(lp * mask).sum(1) / mask.sum(1).clamp(min=1)
    loss = (adv * nll / nll.detach().clamp(min=1e-3)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return workloads.best_seconds(run, repeats)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """Best FLOP/s of an n^3 float32 torch.mm."""
  a = torch.randn(n, n)
  return 2 * n**3 / workloads.best_seconds(lambda: torch.mm(a, a), repeats)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("task", choices=["write", "generate", "generate_longtail", "train_step"])
  ap.add_argument("--path", required=True, help="Hugging Face checkpoint directory")
  ap.add_argument("--size", help="model size to write, or whose long-tailed workload to run")
  ap.add_argument("--mode", choices=LONGTAIL_MODES, default="sdpa", help="generate_longtail: transformers' setting")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=workloads.THREADS)
  args = ap.parse_args()
  if args.task == "write":
    write(args.size, args.path)
    return
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  attention = "paged|sdpa" if args.mode == "generate_batch" and args.task == "generate_longtail" else "sdpa"
  model = transformers.AutoModelForCausalLM.from_pretrained(args.path, dtype=torch.float32,
                                                            attn_implementation=attention).eval()
  extra = {}
  if args.task == "generate_longtail":
    seconds, lengths = generate_longtail(model, args.repeats, args.size, args.mode)
    extra = {"lengths": lengths, "mode": args.mode}
  else:
    seconds = {"generate": generate, "train_step": train_step}[args.task](model, args.repeats)
  print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "matmul_peak_flops": matmul_peak(), **extra}))


if __name__ == "__main__":
  main()
