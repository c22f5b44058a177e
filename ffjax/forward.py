"""``ffjax.forward``: full-sequence logits from a fresh cache (causal for AR models, block-causal for dLLMs)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ffjax import decoder, executables, shapes
from ffjax.checkpoint import Model
from ffjax.inputs import as_prompt_batch


def _full_logits(config, params, tokens):
    batch, length = tokens.shape
    cache = decoder.new_cache(config, params, batch, shapes.round_up(length, 16))
    hidden, _ = decoder.decode(config, params, tokens, cache)
    return decoder.logits(config, params, hidden)


def forward(model: Model, token_ids) -> jax.Array:
    """Logits [B, T, V] (float32) for token ids [B, T] placed at positions 0..T-1; [T] gives [T, V]."""
    tokens, was_1d = as_prompt_batch(token_ids, model.config)
    args = (model.params, jnp.asarray(tokens))
    exe, _ = executables.get(("forward", model.config),
                             jax.jit(functools.partial(_full_logits, model.config)), *args)
    logits = exe(*args)
    return logits[0] if was_1d else logits
