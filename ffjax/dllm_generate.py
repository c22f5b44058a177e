"""Standalone Fast-dLLM v2 generation: one prefill pass, then one jitted ``lax.while_loop`` of drafter passes.

The prompt's complete blocks are prefilled in one pass (``drafter.start``); every loop iteration is one forward
pass of the current block (``drafter.advance``: a sub-block decoding step, or a commit once the block is full).
A row stops as soon as its first ``max_new_tokens`` generated positions are all unmasked, or an EOS has been
unmasked with no masked position before it; nothing past that point costs a forward pass.

Differences from Fast-dLLM v2's own ``generate`` (deliberate): it decodes ``max_new_tokens // bd_size`` whole
blocks, ffjax exactly ``max_new_tokens`` tokens; it prefills only prompts *longer* than one block, so a prompt of
exactly ``bd_size`` tokens is ignored there (its first block is all masks), while ffjax prefills every complete
block; the mask token is never predicted here (see ffjax/drafter.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ffjax import decoder, drafter, executables, shapes
from ffjax.checkpoint import Model
from ffjax.config import ModelConfig
from ffjax.executables import donate_on_accelerators
from ffjax.generate import DecodeTimings
from ffjax.inputs import as_prompt_batch, check_generation_args, check_unit_interval, pad_to_bucket, unbatch_tokens


@dataclasses.dataclass(frozen=True)
class DllmGenerateStats(DecodeTimings):  # new_tokens is summed over rows
    forward_passes: int  # batched drafter passes run, prefill included
    row_forward_passes: tuple[int, ...]  # passes each row needed (a finished row rides along without counting)

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.forward_passes if self.forward_passes else float("nan")


@dataclasses.dataclass(frozen=True)
class DllmGenerateResult:
    tokens: np.ndarray | list[np.ndarray]  # generated ids only, ending at the first EOS inclusive
    stats: DllmGenerateStats


def check_dllm_args(config: ModelConfig, threshold, small_block_size) -> None:
    if not config.is_dllm:
        raise ValueError(f"dllm_generate needs a block-diffusion (Fast-dLLM v2) model; model_type "
                         f"{config.model_type!r} is autoregressive (use ffjax.generate)")
    check_unit_interval("threshold", threshold)
    drafter.check_small_block_size(config, small_block_size)


def _finished(state: drafter.DraftState, prompt_len, max_new_tokens, eos_id):
    """[B]: all of the first max_new_tokens are known, or a known generated token before the frontier is EOS."""
    frontier = drafter.known_prefix(state)
    pos = state.block_start[:, None] + jnp.arange(state.tokens.shape[1], dtype=jnp.int32)[None, :]
    eos_seen = jnp.any((state.tokens == eos_id) & (pos >= prompt_len[:, None]) & (pos < frontier[:, None]), axis=1)
    return (frontier >= prompt_len + max_new_tokens) | eos_seen


def _prefill(config: ModelConfig, params, padded_prompt, prompt_len, *, cache_len: int):
    cache = decoder.new_cache(config, params, padded_prompt.shape[0], cache_len)
    state, _ = drafter.start(config, params, cache, padded_prompt, prompt_len,
                             prefill_chunk=shapes.round_up(padded_prompt.shape[1], config.bd_size))
    return state


def _decode_loop(config: ModelConfig, params, state, prompt_len, max_new_tokens, eos_id, threshold, *,
                 small_block_size: int, capacity: int):
    """Runs drafter passes until every row is finished; returns (generated ids [B, capacity], -1 where unknown;
    forward passes per row)."""
    batch = prompt_len.shape[0]
    # Each pass unmasks at least one token or commits a block: a bound that only guards against bugs.
    max_passes = 2 * (capacity + 2 * config.bd_size)

    def record(out, state):
        known = jnp.where(state.masked, -1, state.tokens)
        return drafter.place_block(out, known, state.block_start, origin=prompt_len)

    def cond(carry):
        _, _, done, passes = carry
        return ~jnp.all(done) & (passes < max_passes)

    def body(carry):
        state, out, done, passes = carry
        state, _ = drafter.advance(config, params, state, threshold, small_block_size=small_block_size,
                                   active=~done)
        out = record(out, state)
        return state, out, done | _finished(state, prompt_len, max_new_tokens, eos_id), passes + 1

    out = record(jnp.full((batch, capacity), -1, jnp.int32), state)
    carry = (state, out, _finished(state, prompt_len, max_new_tokens, eos_id), jnp.int32(0))
    state, out, _, _ = jax.lax.while_loop(cond, body, carry)
    return out, state.forwards


def dllm_generate(model: Model, prompt_ids, max_new_tokens: int, *, threshold: float = 0.9,
                  small_block_size: int = 8, eos_id: int | None = None) -> DllmGenerateResult:
    """Fast-dLLM v2 parallel decoding from a [T] or [B, T] prompt of token ids (greedy).

    ``threshold``: a masked position of the current sub-block is unmasked when its confidence is > threshold (the
    most confident one always is). ``eos_id=None`` generates exactly ``max_new_tokens``; otherwise each row stops
    after its first ``eos_id``. Threshold values share one compiled loop.
    """
    config = model.config
    check_dllm_args(config, threshold, small_block_size)
    prompt, was_1d = as_prompt_batch(prompt_ids, config)
    check_generation_args(config, prompt.shape[1], max_new_tokens, eos_id=eos_id)
    if eos_id is not None and eos_id == config.mask_token_id:
        raise ValueError(f"eos_id {eos_id} is the mask token, which is never emitted")
    if np.any(prompt == config.mask_token_id):
        raise ValueError(f"prompt_ids contain the mask token id {config.mask_token_id}")
    batch, prompt_len = prompt.shape
    padded = pad_to_bucket(prompt)
    capacity = shapes.new_tokens_bucket(max_new_tokens)
    # Room for every block up to the last generated position (a pass writes its whole block).
    cache_len = shapes.cache_length(padded.shape[1], max_new_tokens, extra=config.bd_size)

    lengths = jnp.full((batch,), prompt_len, jnp.int32)
    state, compile_a, prefill_s = executables.run(
        ("dllm_generate.prefill", config, cache_len), jax.jit(functools.partial(_prefill, config, cache_len=cache_len)),
        model.params, jnp.asarray(padded), lengths)
    (out, forwards), compile_b, decode_s = executables.run(
        ("dllm_generate.decode", config, capacity, small_block_size),
        jax.jit(functools.partial(_decode_loop, config, small_block_size=small_block_size, capacity=capacity),
                donate_argnums=donate_on_accelerators(1)),
        model.params, state, lengths, jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id),
        jnp.float32(threshold))
    out, forwards = np.asarray(out), np.asarray(forwards)

    rows = unbatch_tokens(out[:, :max_new_tokens], eos_id)
    stats = DllmGenerateStats(
        prompt_tokens=prompt_len, new_tokens=int(sum(len(r) for r in rows)),
        forward_passes=int(forwards.max()), row_forward_passes=tuple(int(f) for f in forwards),
        compile_s=compile_a + compile_b, prefill_s=prefill_s, decode_s=decode_s)
    return DllmGenerateResult(tokens=rows[0] if was_1d else rows, stats=stats)
