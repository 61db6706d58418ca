"""Peak memory of direct vs time-chunked token log-probs (forward + backward) for a 152k vocabulary.

Prints XLA's buffer assignment for the compiled gradient (arguments + outputs + temporaries), which is
what the device must hold at once. Compiles only; add --run to also execute both on this machine.

    python -m benchmarks.logprob_memory [--run]
"""
import argparse
import time

import jax
import jax.numpy as jnp

from asympo_jax.common import cpu
from asympo_jax.model.logprobs import token_logprobs

B, T, D, V = 8, 512, 1024, 151936


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--run", action="store_true")
  ap.add_argument("--chunk", type=int, default=64)
  args = ap.parse_args()
  shapes = (jax.ShapeDtypeStruct((B, T, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((B, T), jnp.int32))
  print(f"B={B} T={T} D={D} V={V}; one [B,T,V] float32 array = {B * T * V * 4 / 2**30:.2f} GiB; "
        f"backend={jax.default_backend()} ({jax.devices()[0].device_kind})")
  for chunk in (0, args.chunk):
    f = jax.jit(jax.value_and_grad(lambda h, u, t: token_logprobs(h, u, t, chunk)[0].sum(), argnums=(0, 1)))
    compiled = f.lower(*shapes).compile()
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    name = "direct" if chunk == 0 else f"chunked (time chunk {chunk})"
    line = f"{name:28s} peak {peak / 2**30:6.2f} GiB  (temporaries {m.temp_size_in_bytes / 2**30:.2f} GiB)"
    if args.run:
      k = jax.random.split(jax.random.key(0), 3)
      inputs = (jax.random.normal(k[0], (B, T, D)), jax.random.normal(k[1], (D, V)) * 0.02,
                jax.random.randint(k[2], (B, T), 0, V))
      jax.block_until_ready(compiled(*inputs))
      start = time.perf_counter()
      jax.block_until_ready(compiled(*inputs))
      line += f"  step {time.perf_counter() - start:.2f} s"
    print(line)


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
