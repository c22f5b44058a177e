"""Plain autoregressive decoding: one prefill pass, then one jitted ``lax.while_loop`` with no host round-trip.

This is both a user-facing API and the baseline every speculative speedup is measured against.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ffjax import decoder, executables, shapes
from ffjax.executables import donate_on_accelerators
from ffjax.checkpoint import Model
from ffjax.config import ModelConfig
from ffjax.inputs import as_prompt_batch, check_autoregressive, check_generation_args, pad_to_bucket, unbatch_tokens


@dataclasses.dataclass(frozen=True)
class DecodeTimings:
    """What every decoding entry point reports about its own call."""

    prompt_tokens: int
    new_tokens: int
    compile_s: float  # spent compiling on this call (0 when the executables were already cached)
    prefill_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class GenerateStats(DecodeTimings):
    @property
    def decode_ms_per_token(self) -> float:
        steps = max(self.new_tokens - 1, 1)  # the first token comes from prefill
        return 1e3 * self.decode_s / steps


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    tokens: np.ndarray | list[np.ndarray]  # generated ids only, ending at the first EOS inclusive
    stats: GenerateStats


def _next_token(logits, key, temperature, greedy: bool):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def prefill(config: ModelConfig, params, padded_prompt, prompt_len, cache_len: int):
    """Runs the padded prompt in one pass; returns the last real position's logits and the cache."""
    batch = padded_prompt.shape[0]
    cache = decoder.new_cache(config, params, batch, cache_len)
    hidden, cache = decoder.decode(config, params, padded_prompt, cache)
    last_hidden = hidden[jnp.arange(batch), prompt_len - 1]
    return decoder.logits(config, params, last_hidden), cache.with_length(prompt_len)


def _decode_loop(config: ModelConfig, params, cache, first_logits, max_new_tokens, eos_id, temperature, key, *,
                 capacity: int, greedy: bool):
    """Generates up to ``max_new_tokens`` (≤ capacity) tokens; rows stop at ``eos_id`` (-1: never)."""
    batch = first_logits.shape[0]
    first = _next_token(first_logits, jax.random.fold_in(key, 0), temperature, greedy)
    out = jnp.full((batch, capacity), -1, jnp.int32).at[:, 0].set(first)

    def cond(state):
        step, _, _, done, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, token, cache, done, out = state
        hidden, cache = decoder.decode(config, params, token[:, None], cache)
        cache = cache.advance(1)
        logits = decoder.logits(config, params, hidden[:, 0])
        token = _next_token(logits, jax.random.fold_in(key, step), temperature, greedy)
        out = out.at[:, step].set(jnp.where(done, -1, token))
        return step + 1, token, cache, done | (token == eos_id), out

    state = (jnp.int32(1), first, cache, first == eos_id, out)
    steps, _, _, _, out = jax.lax.while_loop(cond, body, state)
    return out, steps


def generate(model: Model, prompt_ids, max_new_tokens: int, *, eos_id: int | None = None,
             temperature: float = 0.0, seed: int = 0, prompt_bucket: int | None = None) -> GenerateResult:
    """Autoregressive generation from a [T] or [B, T] prompt of token ids.

    Greedy when ``temperature == 0`` (the default), else samples from softmax(logits / temperature).
    ``eos_id=None`` generates exactly ``max_new_tokens``; otherwise each row stops after its first ``eos_id``.
    ``prompt_bucket``: pad prompts to this length instead of the next power of two (one program for a prompt set).
    """
    config = model.config
    check_autoregressive(config, "model of generate")
    prompt, was_1d = as_prompt_batch(prompt_ids, config)
    batch, prompt_len = prompt.shape
    check_generation_args(config, prompt_len, max_new_tokens, eos_id=eos_id, temperature=temperature)
    padded = pad_to_bucket(prompt, prompt_bucket)
    capacity = shapes.new_tokens_bucket(max_new_tokens)
    cache_len = shapes.cache_length(padded.shape[1], max_new_tokens)
    greedy = temperature == 0.0

    lengths = jnp.full((batch,), prompt_len, jnp.int32)
    (first_logits, cache), compile_a, prefill_s = executables.run(
        ("generate.prefill", config, cache_len), jax.jit(functools.partial(prefill, config, cache_len=cache_len)),
        model.params, jnp.asarray(padded), lengths)
    (out, steps), compile_b, decode_s = executables.run(
        ("generate.decode", config, capacity, greedy),
        jax.jit(functools.partial(_decode_loop, config, capacity=capacity, greedy=greedy),
                donate_argnums=donate_on_accelerators(1)),
        model.params, cache, first_logits, jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id),
        jnp.float32(temperature), jax.random.key(seed))
    out = np.asarray(out)

    rows = unbatch_tokens(out[:, : int(steps)], eos_id)
    stats = GenerateStats(prompt_tokens=prompt_len, new_tokens=int(sum(len(r) for r in rows)),
                          compile_s=compile_a + compile_b, prefill_s=prefill_s, decode_s=decode_s)
    return GenerateResult(tokens=rows[0] if was_1d else rows, stats=stats)
