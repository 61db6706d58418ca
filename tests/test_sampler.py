"""The jitted sampler against transformers' generate and against full forward passes."""
import logging

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from scipy import stats

from jax.sharding import Mesh

from asympo_jax.run import config as config_lib
from asympo_jax.model import hf_io
from asympo_jax.run import assemble as run
from asympo_jax.rollout import token_choice as sampling
from asympo_jax.model import decoder as model_lib
from asympo_jax.rollout import sampler as sampler_lib
from asympo_jax.rollout.sampler import EXIT_CHECK_STEPS, Sampler, cache_lengths, prompt_bucket, rollout_mesh
from asympo_jax.common.sharding import MESH_AXES, data_mesh
from tests.tiny_checkpoints import make_checkpoint, positions_from_mask, torch_logits

VOCAB = 101  # tiny_checkpoints' vocabulary


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "qwen3")
  return path, make_checkpoint("qwen3_tied", path)


@pytest.fixture(scope="module")
def checkpoint(checkpoint_path):
  path, torch_model = checkpoint_path
  return torch_model, hf_io.load_model(path)


def rollout_cfg(**overrides):
  cfg = config_lib.base_config().rollout
  cfg.update(dict(prompts_per_step=4, group_size=1, max_prompt_len=16, max_new_tokens=10), **overrides)
  return cfg


def random_prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, VOCAB, n).tolist() for n in lengths]


def left_pad(prompts, length):
  ids = np.zeros((len(prompts), length), np.int64)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, length - len(p):] = p
    mask[i, length - len(p):] = 1
  return ids, mask


def full_sequences(prompts, samples, group):
  """Prompt + response rows, left-padded, as one forward pass sees them."""
  rows = [p for p in prompts for _ in range(group)]
  width = max(map(len, rows)) + samples.tokens_BxN.shape[1]
  tokens, mask = left_pad([r + t[m > 0].tolist() for r, t, m in zip(rows, samples.tokens_BxN, samples.mask_BxN)],
                          width)
  return tokens, mask, width - samples.mask_BxN.sum(1)  # where each response starts


@pytest.mark.parametrize("eos", [2, 11])  # 11: a token greedy decoding emits, so some rows stop early
def test_greedy_matches_transformers_generate(checkpoint, eos):
  torch_model, model = checkpoint
  prompts = random_prompts([3, 9, 5, 16])
  cfg = rollout_cfg(temperature=0.0, group_size=2)
  samples = Sampler(model, cfg, eos_ids=[eos], pad_id=0).generate(nnx.state(model), prompts, seed=0, step=0)
  ids, mask = left_pad(prompts, 16)
  want = torch_model.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                              max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)[:, 16:].numpy()
  for row in range(8):
    ref = want[row // 2]
    length = next((i + 1 for i, t in enumerate(ref) if t == eos), len(ref))
    assert samples.mask_BxN[row].sum() == length
    np.testing.assert_array_equal(samples.tokens_BxN[row, :length], ref[:length])
    assert samples.finish_B[row] == (1 if ref[length - 1] == eos else 0)
  assert eos == 2 or (samples.finish_B == 1).any()


def test_rollout_micro_batches_sample_the_same_rows(checkpoint):
  """Three calls of 2, 2 and 1 prompts give the rows one call of 5 gives: a row's keys name its prompt, not
  its call."""
  _, model = checkpoint
  prompts = random_prompts([3, 9, 5, 16, 7])
  cfg = rollout_cfg(prompts_per_step=5, group_size=2, record_behaviour_logprobs=True)
  whole = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompts, seed=3, step=1)
  cfg.micro_batches = 3
  parts = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompts, seed=3, step=1)
  np.testing.assert_array_equal(parts.tokens_BxN, whole.tokens_BxN)
  np.testing.assert_array_equal(parts.mask_BxN, whole.mask_BxN)
  np.testing.assert_array_equal(parts.finish_B, whole.finish_B)
  np.testing.assert_allclose(parts.logprobs_BxN, whole.logprobs_BxN, atol=1e-5)
  assert parts.forward_passes >= whole.forward_passes


def test_decoding_stops_within_the_exit_check_steps_of_the_last_row_finishing(checkpoint):
  # Every row's token at step 3 of a free greedy run is an EOS: each row ends at its first EOS (step <= 3).
  _, model = checkpoint
  prompts = random_prompts([3, 9, 5, 16])
  cfg = rollout_cfg(temperature=0.0, max_new_tokens=40)
  free = Sampler(model, cfg, eos_ids=[], pad_id=0).generate(nnx.state(model), prompts, seed=0, step=0)
  assert free.forward_passes == 40  # the prefill gives token 0, then 39 decode steps
  eos = sorted(set(free.tokens_BxN[:, 3].tolist()))
  ended = Sampler(model, cfg, eos_ids=eos, pad_id=0).generate(nnx.state(model), prompts, seed=0, step=0)
  last = max(next(i for i, t in enumerate(row) if t in eos) for row in free.tokens_BxN.tolist())
  assert ended.mask_BxN.sum(1).max() == last + 1
  assert last + 1 <= ended.forward_passes < last + 1 + EXIT_CHECK_STEPS


def test_first_token_follows_the_model_distribution(checkpoint):
  torch_model, model = checkpoint
  prompt = random_prompts([6], seed=3)
  group = 4000
  cfg = rollout_cfg(prompts_per_step=1, group_size=group, max_new_tokens=1, temperature=1.0)
  samples = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompt, seed=5, step=1)
  logits = torch_logits(torch_model, np.array(prompt), np.ones((1, 6), np.int64))[0, -1].astype(np.float64)
  p = np.exp(logits - logits.max())
  p /= p.sum()
  counts = np.bincount(samples.tokens_BxN[:, 0], minlength=VOCAB)
  # pool rare tokens so every expected count is >= 5
  order = np.argsort(p)
  rare = order[np.cumsum(p[order]) * group < 5]
  common = np.setdiff1d(np.arange(VOCAB), rare)
  observed = np.append(counts[common], counts[rare].sum())
  expected = np.append(p[common], p[rare].sum()) * group
  assert stats.chisquare(observed, expected).pvalue > 1e-3


# One compiled sampler serves the three tests below: tempered, top-k filtered, recording log-probs.
FILTERED = dict(prompts_per_step=2, group_size=16, temperature=1.3, top_k=4, record_behaviour_logprobs=True)


def assert_in_filtered_sets(torch_model, prompts, samples, group, temperature, top_k, top_p):
  tokens, mask, starts = full_sequences(prompts, samples, group)
  logits = torch_logits(torch_model, tokens, mask).astype(np.float64) / temperature
  for row in range(len(tokens)):
    for t in range(starts[row], tokens.shape[1]):
      x = logits[row, t - 1]
      tok = tokens[row, t]
      p = np.exp(x - x.max())
      p /= p.sum()
      if top_k:
        assert (x > x[tok]).sum() < top_k
      assert p[p > p[tok]].sum() < top_p + 1e-6


@pytest.mark.parametrize("overrides", [FILTERED, dict(FILTERED, top_k=0, top_p=0.6, temperature=1.0)])
def test_top_k_top_p_stay_in_their_sets_at_every_position(checkpoint, overrides):
  torch_model, model = checkpoint
  prompts = random_prompts([4, 7], seed=1)
  cfg = rollout_cfg(**overrides)
  samples = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompts, seed=0, step=0)
  assert_in_filtered_sets(torch_model, prompts, samples, cfg.group_size, cfg.temperature, cfg.top_k, cfg.top_p)


def test_behaviour_logprobs_equal_full_forward(checkpoint):
  _, model = checkpoint
  prompts = random_prompts([2, 11], seed=2)
  samples = Sampler(model, rollout_cfg(**FILTERED), eos_ids=[11], pad_id=0).generate(
      nnx.state(model), prompts, seed=1, step=4)
  assert (samples.finish_B == 1).any() and (samples.finish_B == 0).any()
  tokens, mask, starts = full_sequences(prompts, samples, FILTERED["group_size"])
  hidden, _ = model(tokens, positions_from_mask(mask), mask)
  logprobs = jax.nn.log_softmax(np.asarray(model.logits(hidden)), axis=-1)  # untempered, unfiltered
  for row in range(len(tokens)):
    n = samples.mask_BxN[row].sum()
    want = [logprobs[row, starts[row] + i - 1, tokens[row, starts[row] + i]] for i in range(n)]
    np.testing.assert_allclose(samples.logprobs_BxN[row, :n], want, atol=1e-5)
    assert (samples.logprobs_BxN[row, n:] == 0).all()


def test_sampled_behaviour_logprobs_are_those_of_the_filtered_renormalised_distribution(checkpoint):
  # rollout.behaviour_logprobs = "sampled": at every position, log of softmax(logits / 0.7) restricted to the top-p
  # 0.9 nucleus and renormalised, from a full forward pass of the torch model over the sampled sequence.
  torch_model, model = checkpoint
  temperature, top_p = 0.7, 0.9
  cfg = rollout_cfg(prompts_per_step=2, group_size=8, temperature=temperature, top_p=top_p,
                    record_behaviour_logprobs=True, behaviour_logprobs="sampled")
  prompts = random_prompts([5, 12], seed=6)
  samples = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompts, seed=2, step=1)
  tokens, mask, starts = full_sequences(prompts, samples, cfg.group_size)
  logits = torch_logits(torch_model, tokens, mask).astype(np.float64)
  gaps = []
  for row in range(len(tokens)):
    n = samples.mask_BxN[row].sum()
    for i in range(n):
      x = logits[row, starts[row] + i - 1]
      tok = tokens[row, starts[row] + i]
      p = np.exp(x / temperature - (x / temperature).max())
      p /= p.sum()
      nucleus = np.array([p[p > q].sum() < top_p for q in p])  # less than top_p of the mass is more likely
      assert nucleus[tok]
      want = np.log(p[tok] / p[nucleus].sum())
      np.testing.assert_allclose(samples.logprobs_BxN[row, i], want, atol=1e-5, err_msg=(row, i))
      raw = x[tok] - x.max() - np.log(np.exp(x - x.max()).sum())
      gaps.append(want - raw)
    assert (samples.logprobs_BxN[row, n:] == 0).all()
  assert max(np.abs(gaps)) > 0.1  # the processed log-probs are not the raw model ones


def test_response_depends_only_on_seed_step_prompt_and_sample(checkpoint):
  _, model = checkpoint
  a, b, c = random_prompts([5, 8, 3], seed=4)
  sampler = Sampler(model, rollout_cfg(**FILTERED), eos_ids=[2], pad_id=0)
  state = nnx.state(model)
  g = FILTERED["group_size"]
  one = sampler.generate(state, [a, b], seed=7, step=3, prompt_ids=[10, 11])
  two = sampler.generate(state, [c, a], seed=7, step=3, prompt_ids=[12, 10])
  np.testing.assert_array_equal(one.tokens_BxN[:g], two.tokens_BxN[g:])
  assert len({tuple(r) for r in one.tokens_BxN[:g]}) > 1  # the samples of a group differ
  other_step = sampler.generate(state, [a, b], seed=7, step=4, prompt_ids=[10, 11])
  assert not np.array_equal(one.tokens_BxN, other_step.tokens_BxN)


def test_stop_sequence_ends_the_response_after_it(checkpoint):
  _, model = checkpoint
  prompts = random_prompts([3, 9, 5, 16])
  greedy = Sampler(model, rollout_cfg(temperature=0.0, group_size=2), eos_ids=[2], pad_id=0)
  free = greedy.generate(nnx.state(model), prompts, seed=0, step=0).tokens_BxN
  stop = free[2, 2:4].tolist()  # appears in row 2 at positions 2..3
  cfg = rollout_cfg(temperature=0.0, group_size=2, stop_sequences=[[99, 98, 97], stop])
  samples = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompts, seed=0, step=0)
  for row in range(8):
    ends = [i + 1 for i in range(1, 10) if free[row, i - 1:i + 1].tolist() == stop]
    length = ends[0] if ends else 10
    assert samples.mask_BxN[row].sum() == length
    np.testing.assert_array_equal(samples.tokens_BxN[row, :length], free[row, :length])
    assert (samples.tokens_BxN[row, length:] == 0).all()
    assert samples.finish_B[row] == (2 if ends else 0)


def test_disjoint_rollout_devices_sample_the_same(checkpoint):
  _, model = checkpoint
  prompts = random_prompts([3, 9, 5, 16])
  run_cfg = config_lib.base_config()
  run_cfg.rollout.devices = "4:8"
  training_mesh = data_mesh(jax.devices()[:4])
  mesh = run.sampling_mesh(run_cfg, training_mesh)
  cfg = rollout_cfg(temperature=0.0, group_size=2, devices="4:8")
  here = Sampler(model, rollout_cfg(temperature=0.0, group_size=2), eos_ids=[2], pad_id=0)
  there = Sampler(model, cfg, eos_ids=[2], pad_id=0, mesh=mesh)
  moved = run.make_transfer(mesh)(nnx.state(model))
  assert all(leaf.sharding.device_set == set(jax.devices()[4:8]) for leaf in jax.tree.leaves(moved))
  want = here.generate(nnx.state(model), prompts, seed=3, step=2)
  got = there.generate(moved, prompts, seed=3, step=2)
  np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_the_training_mesh_splits_the_rows_and_samples_the_same(checkpoint_path, checkpoint, shape, monkeypatch):
  # Parameters on 8 devices and no mesh: jit runs the whole batch on every device ((8,1,1)), or splits only
  # part of the work. On the mesh each device's program (XLA's per-device cost analysis) does an eighth of one
  # device's FLOPs, and the samples and behaviour log-probs are one device's.
  path, _ = checkpoint_path
  _, model = checkpoint
  training_mesh = Mesh(np.array(jax.devices()).reshape(shape), MESH_AXES)
  mesh = run.sampling_mesh(config_lib.base_config(), training_mesh)
  assert mesh is training_mesh
  on_mesh = hf_io.load_model(path, mesh)
  flops = []

  def spy(*args, **kwargs):  # compiles in the caller's context (the sampler's mesh, if any), as the call does
    flops.append(real.lower(*args, **kwargs).compile().cost_analysis()["flops"])
    return real(*args, **kwargs)

  real = sampler_lib.generate_arrays
  monkeypatch.setattr(sampler_lib, "generate_arrays", spy)
  cfg = rollout_cfg(temperature=0.0, prompts_per_step=8, group_size=2, record_behaviour_logprobs=True)
  prompts = random_prompts([3, 9, 5, 16, 2, 7, 11, 4], seed=4)
  want = Sampler(model, cfg, eos_ids=[2], pad_id=0).generate(nnx.state(model), prompts, seed=1, step=3)
  state = run.make_transfer(mesh)(nnx.state(on_mesh))
  got = Sampler(on_mesh, cfg, eos_ids=[2], pad_id=0, mesh=mesh).generate(state, prompts, seed=1, step=3)
  np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN)
  np.testing.assert_allclose(got.logprobs_BxN, want.logprobs_BxN, atol=1e-5)

  one, per_device = flops
  assert per_device < 1.1 * one / 8, (per_device, one)


def test_no_exit_check_when_nothing_can_stop(checkpoint_path, monkeypatch):
  # The exit check is an all-reduce over the row shards; with no EOS id and no stop sequence it can never
  # fire, so the compiled loop must not hold it, and every row runs to max_new_tokens.
  mesh = data_mesh(jax.devices())
  model = hf_io.load_model(checkpoint_path[0], mesh)
  state = run.make_transfer(mesh)(nnx.state(model))
  programs = []

  def spy(*args, **kwargs):
    programs.append(real.lower(*args, **kwargs).compile().as_text())
    return real(*args, **kwargs)

  real = sampler_lib.generate_arrays
  monkeypatch.setattr(sampler_lib, "generate_arrays", spy)
  cfg = rollout_cfg(prompts_per_step=8, max_new_tokens=20)
  prompts = random_prompts([3, 9, 5, 16, 2, 7, 11, 4], seed=8)
  outs = [Sampler(model, cfg, eos_ids=eos_ids, pad_id=0, mesh=mesh).generate(state, prompts, seed=0, step=0)
          for eos_ids in ([], [11])]
  never, can = programs
  assert "all-reduce" not in never and "all-reduce" in can
  assert outs[0].mask_BxN.all() and outs[0].forward_passes == 20


def test_prompts_on_fewer_rows_than_shards_sample_the_same(checkpoint_path, checkpoint):
  # 2 prompts x 8 samples on 8 devices: the prefill cannot split 2 prompts 8 ways, so every device prefills
  # both, and its rows are taken from the repeated cache.
  path, _ = checkpoint_path
  _, model = checkpoint
  mesh = data_mesh(jax.devices())
  cfg = rollout_cfg(prompts_per_step=2, group_size=8, record_behaviour_logprobs=True)
  prompts = random_prompts([5, 13], seed=6)
  want = Sampler(model, cfg, eos_ids=[11], pad_id=0).generate(nnx.state(model), prompts, seed=2, step=1)
  state = run.make_transfer(mesh)(nnx.state(hf_io.load_model(path, mesh)))
  got = Sampler(model, cfg, eos_ids=[11], pad_id=0, mesh=mesh).generate(state, prompts, seed=2, step=1)
  np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN)
  np.testing.assert_allclose(got.logprobs_BxN, want.logprobs_BxN, atol=1e-5)


def test_rows_that_do_not_split_are_sampled_whole_with_a_warning(checkpoint_path, checkpoint, caplog):
  # 3 rows on 8 devices (as when a process's rows do not divide its local devices): every device samples
  # them all, the samples are one device's, and the log says why this is slow.
  path, _ = checkpoint_path
  _, model = checkpoint
  mesh = data_mesh(jax.devices())
  cfg = rollout_cfg(prompts_per_step=3, group_size=1, record_behaviour_logprobs=True)
  prompts = random_prompts([5, 13, 2], seed=9)
  want = Sampler(model, cfg, eos_ids=[11], pad_id=0).generate(nnx.state(model), prompts, seed=2, step=1)
  assert "do not split" not in caplog.text
  state = run.make_transfer(mesh)(nnx.state(hf_io.load_model(path, mesh)))
  with caplog.at_level(logging.WARNING):
    got = Sampler(model, cfg, eos_ids=[11], pad_id=0, mesh=mesh).generate(state, prompts, seed=2, step=1)
  assert "3 rows do not split over the mesh's 8 data x fsdp shards" in caplog.text
  np.testing.assert_array_equal(got.tokens_BxN, want.tokens_BxN)
  np.testing.assert_allclose(got.logprobs_BxN, want.logprobs_BxN, atol=1e-5)


def test_one_prefill_per_prompt_samples_as_one_per_row(checkpoint):
  # generate_arrays prefills P prompts once for their G rows each. Given every row's prompt instead (G = 1),
  # it prefills B rows: the samples must be the same, and the shared prefill must cost fewer FLOPs.
  _, model = checkpoint
  group = 8
  prompt_PxL, mask_PxL = (x.astype(np.int32) for x in left_pad(random_prompts([3, 16, 9], seed=7), 16))
  keys_B = sampling.row_keys(5, 4, np.arange(3), group)
  eos_E = np.asarray([11], np.int32)
  spec = Sampler(model, rollout_cfg(**FILTERED), eos_ids=[11], pad_id=0).spec
  graphdef, state = nnx.split(model)
  call_args = lambda p_PxL, m_PxL: (graphdef, state, p_PxL, m_PxL, keys_B, eos_E,
                                    model_lib.rope_inputs(graphdef, m_PxL, state))
  shared = call_args(prompt_PxL, mask_PxL)
  per_row = call_args(np.repeat(prompt_PxL, group, 0), np.repeat(mask_PxL, group, 0))
  got, want = (sampler_lib.generate_arrays(*args, spec=spec) for args in (shared, per_row))
  assert (want["finish"] == 1).any() and (want["finish"] == 0).any()
  for name in ("tokens", "mask", "finish", "forward_passes"):
    np.testing.assert_array_equal(got[name], want[name])
  np.testing.assert_allclose(got["logprobs"], want["logprobs"], atol=1e-5)  # matmuls of 3 or 24 rows round apart
  flops = [sampler_lib.generate_arrays.lower(*args, spec=spec).compile().cost_analysis()["flops"]
           for args in (shared, per_row)]
  assert flops[0] < 0.6 * flops[1], flops


def test_transfer_copies_even_onto_the_same_shardings(checkpoint_path):
  # The learner donates its parameters to the next step: the sampler's copy must not share their buffers.
  mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), MESH_AXES)
  params = nnx.state(hf_io.load_model(checkpoint_path[0], mesh))
  want = jax.tree.map(np.asarray, params)
  copy = run.make_transfer(mesh)(params)
  assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(copy), jax.tree.leaves(params)))
  jax.tree.map(lambda x: x.delete(), params)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, copy), want)


def test_decode_segments_change_nothing_but_the_cache_length(checkpoint):
  # 64 new tokens after a 16-token bucket: the cache grows 64 -> 96 slots (2 segments) or 32 -> 64 -> 96 (4);
  # EOS 11 ends some rows early, so a segment also starts with finished rows.
  _, model = checkpoint
  prompts = random_prompts([3, 16], seed=5)
  runs = {}
  for segments in (1, 2, 4):
    cfg = rollout_cfg(**{**FILTERED, "max_new_tokens": 64, "decode_segments": segments})
    runs[segments] = Sampler(model, cfg, eos_ids=[11], pad_id=0).generate(nnx.state(model), prompts, seed=1,
                                                                          step=2)
  assert (runs[1].mask_BxN.sum(1) > 40).any() and (runs[1].finish_B == 1).any()
  for segments in (2, 4):
    np.testing.assert_array_equal(runs[segments].tokens_BxN, runs[1].tokens_BxN)
    np.testing.assert_array_equal(runs[segments].finish_B, runs[1].finish_B)
    np.testing.assert_allclose(runs[segments].logprobs_BxN, runs[1].logprobs_BxN, atol=1e-6)


def test_cache_lengths_cover_every_step_in_whole_chunks():
  for prompt_len, new, segments in [(16, 64, 2), (32, 64, 2), (16, 64, 4), (64, 1, 3), (16, 10, 2), (128, 1000, 5)]:
    lengths = cache_lengths(prompt_len, new, segments)
    assert lengths == sorted(set(lengths)) and len(lengths) <= segments
    assert all(n % 32 == 0 for n in lengths)
    assert prompt_len + new <= lengths[-1] < prompt_len + new + 32
  assert cache_lengths(32, 64, 2) == [64, 96]
  assert cache_lengths(16, 64, 4) == [32, 64, 96]
  assert cache_lengths(32, 64, 1) == [96]


def test_prompt_buckets_are_few_and_fit():
  for max_len in (16, 48, 64):
    buckets = {prompt_bucket(n, max_len) for n in range(1, max_len + 1)}
    assert len(buckets) <= 4
    assert all(prompt_bucket(n, max_len) >= n for n in range(1, max_len + 1))


@pytest.mark.parametrize("key,value", [("top_p", 0.0), ("temperature", -1.0), ("top_k", -2),
                                       ("stop_sequences", [[]]), ("devices", "6:12"), ("devices", "3"),
                                       ("group_size", 0), ("decode_segments", 0)])
def test_bad_rollout_config_names_the_key(checkpoint, key, value):
  _, model = checkpoint
  cfg = rollout_cfg(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=f"rollout.{key}"):
    Sampler(model, cfg, eos_ids=[2], pad_id=0, mesh=rollout_mesh(cfg))
