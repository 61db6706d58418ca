"""asympo_jax: asynchronous RL post-training of language models with current-policy-only objectives."""
