"""Autoregressive drafting for the paper's AR-drafter baselines: one forward pass per drafted token.

Every step feeds two tokens, (t[m-2], t[m-1]) at positions m-2 and m-1 over a cache holding [0, m-2), and reads
the prediction for position m from the last one. Re-feeding t[m-2] costs nothing on a memory-bound forward and
keeps one static shape however far verification rolled the cache back: after a round that accepted every
drafted token, the drafter has not yet seen the last draft token, and this step catches it up for free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ffjax import decoder
from ffjax.kv_cache import KVCache


def prefill(config, params, cache: KVCache, padded_prompt, prompt_len):
    """Writes the prompt's K/V (one pass); the cache then holds [0, prompt_len)."""
    _, cache = decoder.decode(config, params, padded_prompt, cache)
    return cache.with_length(prompt_len)


def step(config, params, cache: KVCache, sequence, m):
    """Predicts position m [B] from sequence[..., :m]: (token [B], confidence [B], cache holding [0, m-1))."""
    rows = jnp.arange(sequence.shape[0])
    pair = jnp.stack([sequence[rows, m - 2], sequence[rows, m - 1]], axis=1)
    hidden, cache = decoder.decode(config, params, pair, cache.with_length(m - 2))
    logits = decoder.logits(config, params, hidden[:, -1])
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    confidence = jnp.exp(jnp.max(logits, axis=-1) - jax.nn.logsumexp(logits, axis=-1))
    return token, confidence, cache.with_length(m - 1)
