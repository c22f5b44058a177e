"""Fast-dLLM v2 block-diffusion drafting as pure, jittable functions over a small state pytree.

Semantics (Fast-dLLM v2 inference, see ../shared/FAILFAST_REFERENCE.md):

* Blocks of ``bd = config.bd_size`` tokens are aligned at absolute positions 0, bd, 2*bd, ...; the decoder runs
  with the block-causal mask (a query sees every key of its own and earlier blocks).
* The drafter KV cache holds the *complete* blocks before the current block: ``cache.length`` is always the
  current block's start (a multiple of bd).
* A forward pass always runs the whole current block (``bd`` tokens, mask tokens included) over the cache. It
  writes the block's K/V at [block_start, block_start + bd); a decoding step leaves ``cache.length`` alone, so
  those keys stay dead until a commit.
* Token shift: position j of the block is predicted from the output at j - 1 (position 0 from its own output, as
  the reference's duplicated first logit does; ffjax never leaves position 0 masked, so this is never used).
* Prediction at a position: token = argmax of the softmax over the vocabulary *without the mask token* (the mask
  token is never emitted; a trained Fast-dLLM never predicts it, so this matches the reference there),
  confidence = that token's softmax probability over the full vocabulary (float32).
* Decoding step (`step`): the current sub-block is the first ``small_block_size``-aligned sub-block that still
  has a masked position. Each of its masked positions is unmasked if its confidence is *strictly greater* than
  ``threshold`` (the reference compares ``p > threshold``); the single most confident one (first on ties) is
  always unmasked.
* Commit (`commit`): a block with no mask left is run once more; that pass leaves its K/V in the cache (the cache
  advances by bd) and the argmax at its last position becomes the next block's first token. That token is
  *drafted* (it is a prediction, reported as unmasked by the commit, with its confidence).
* Starting (`start`) at accepted length n: the current block is the one holding position n; its positions
  [block_start, n) are the given tokens and the rest are masked. When n is a multiple of bd the block's first
  token is instead predicted from position n - 1 by the pass that prefills the last complete block (exactly as
  the reference predicts it from its prefill); if that block is already cached it is re-run once for it.

State and reports (all shapes static; B = batch rows, which advance independently):

``DraftState`` (a flax.struct.dataclass):
    cache       KVCache; ``cache.length`` [B] is the current block's start.
    tokens      [B, bd] int32: the current block (``mask_token_id`` at masked positions).
    masked      [B, bd] bool: still masked.
    confidence  [B, bd] float32: the confidence recorded when the position was unmasked; 1.0 for given tokens
                (those below the accepted length passed to ``start``); 0.0 while masked.
    forwards    [B] int32: drafter forward passes this row has run (prefill passes included).

``StepReport`` describes one call, in the coordinates of the block that starts at ``block_start`` (for a commit:
the *new* block, whose first token the commit produced):
    block_start [B] int32, committed [B] bool, ran [B] bool (the row ran a forward pass in this call),
    considered  [B, bd] bool: positions whose confidence was evaluated (the still-masked positions of the current
                sub-block; for a commit or a start at a block boundary: position 0),
    confidence  [B, bd] float32: this call's confidence at considered positions (0 elsewhere),
    unmasked    [B, bd] bool: positions that received their token in this call.
FailFast's reference records the confidence of every considered position at every step (not only of the
unmasked ones); ``considered``/``confidence`` allow that rule, ``unmasked`` the per-token one.

Functions (``config`` is static; ``threshold`` is traced, so a new threshold never recompiles):
    start(config, params, cache, sequence, n, *, prefill_chunk) -> (DraftState, StepReport)
    step(config, params, state, threshold, *, small_block_size, active=None) -> (DraftState, StepReport)
    commit(config, params, state, *, active=None) -> (DraftState, StepReport)
    advance(config, params, state, threshold, *, small_block_size, active=None) -> (DraftState, StepReport)
        per row: a step while the block has masks, else a commit; one forward pass either way.
    rollback(config, cache, valid_len) -> KVCache
    known_prefix(state) -> [B]: every position below it holds a known token (the first masked position).
    place_block(buffer, values, block_start, origin=0) -> buffer with the block written at absolute positions.

Speculative use (FailFast): keep the state's cache across rounds. After verification, ``start`` at the new
accepted length n from the same cache: it keeps only blocks that end below the block holding position n - 1
(so a verifier correction at n - 1 never survives in the cache, even on the last position of a committed block),
and prefills the complete blocks it lacks in passes of ``prefill_chunk`` tokens, each counted as a forward.
The cached blocks it keeps must hold the accepted tokens: true for blocks the drafter committed from its own
accepted draft, and for prefilled ones. ``rollback`` is the explicit form of that clamp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ffjax import decoder
from ffjax.config import ModelConfig
from ffjax.kv_cache import KVCache


@struct.dataclass
class DraftState:
    cache: KVCache
    tokens: jax.Array  # [B, bd] int32
    masked: jax.Array  # [B, bd] bool
    confidence: jax.Array  # [B, bd] float32
    forwards: jax.Array  # [B] int32

    @property
    def block_start(self) -> jax.Array:
        return self.cache.length


@struct.dataclass
class StepReport:
    block_start: jax.Array  # [B] int32
    committed: jax.Array  # [B] bool
    ran: jax.Array  # [B] bool
    considered: jax.Array  # [B, bd] bool
    confidence: jax.Array  # [B, bd] float32
    unmasked: jax.Array  # [B, bd] bool


def check_small_block_size(config: ModelConfig, small_block_size) -> None:
    """Sub-blocks must tile the drafter's blocks."""
    bd = _check_dllm(config)
    if isinstance(small_block_size, bool) or not isinstance(small_block_size, int) or small_block_size < 1 \
            or bd % small_block_size:
        raise ValueError(f"small_block_size must be a positive divisor of the drafter's block size {bd}, "
                         f"got {small_block_size!r}")


def _check_dllm(config: ModelConfig) -> int:
    if not config.is_dllm:
        raise ValueError(f"the drafter needs a block-diffusion model (bd_size set); {config.model_type} is not one")
    return config.bd_size


def _rows(active, batch):
    return jnp.ones((batch,), bool) if active is None else jnp.broadcast_to(jnp.asarray(active, bool), (batch,))


def predict(config: ModelConfig, params, hidden):
    """(token, confidence) for final hidden states [..., D]: argmax without the mask token, its softmax prob."""
    logits = decoder.logits(config, params, hidden)
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    token = jnp.argmax(logits.at[..., config.mask_token_id].set(-jnp.inf), axis=-1).astype(jnp.int32)
    chosen = jnp.take_along_axis(logits, token[..., None], axis=-1)[..., 0]
    return token, jnp.exp(chosen - log_norm)


def known_prefix(state: DraftState) -> jax.Array:
    """[B]: the first masked absolute position (earlier blocks are complete, later ones not started)."""
    bd = state.tokens.shape[1]
    first_masked = jnp.where(jnp.any(state.masked, axis=1), jnp.argmax(state.masked, axis=1), bd)
    return state.block_start + first_masked.astype(jnp.int32)


def place_block(buffer, values, block_start, origin=0):
    """Writes values [B, bd] at absolute positions block_start + j, shifted by -origin; the rest is dropped."""
    bd = values.shape[1]
    base = jnp.broadcast_to(jnp.asarray(block_start - origin, jnp.int32), (buffer.shape[0],))
    pos = base[:, None] + jnp.arange(bd, dtype=jnp.int32)[None, :]
    pos = jnp.where(pos >= 0, pos, buffer.shape[1])  # negative indices would wrap around: drop them instead
    rows = jnp.arange(buffer.shape[0])[:, None]
    return buffer.at[rows, pos].set(values.astype(buffer.dtype), mode="drop")


def rollback(config: ModelConfig, cache: KVCache, valid_len) -> KVCache:
    """Keeps only cached blocks that lie entirely below ``valid_len`` [B] (dead keys past it get overwritten)."""
    bd = _check_dllm(config)
    return cache.with_length(jnp.minimum(cache.length, (jnp.asarray(valid_len, jnp.int32) // bd) * bd))


def prefill(config: ModelConfig, params, cache: KVCache, sequence, target, chunk: int):
    """Writes K/V of sequence[cache.length : target) (whole blocks) in passes of ``chunk`` tokens.

    Returns (cache with length = target, passes per row, (token, confidence) predicted from position target - 1
    by the pass that covered it). Tokens past ``target`` in a pass only produce dead keys (block-causal: no query
    below ``target`` sees them).
    """
    if chunk % _check_dllm(config):
        # A block split across passes would not see its own later keys (block-causal attention).
        raise ValueError(f"prefill chunk {chunk} must be a multiple of the block size {config.bd_size}")
    batch, seq_len = sequence.shape
    offsets = jnp.arange(chunk, dtype=jnp.int32)

    def cond(carry):
        cache = carry[0]
        return jnp.any(cache.length < target)

    def body(carry):
        cache, passes, token, conf = carry
        begin = cache.length
        active = begin < target
        chunk_tokens = jnp.take_along_axis(sequence, jnp.clip(begin[:, None] + offsets, 0, seq_len - 1), axis=1)
        hidden, cache = decoder.decode(config, params, chunk_tokens, cache)
        last = target - 1 - begin  # where position target - 1 falls in this pass
        has_last = active & (last < chunk)
        rows = jnp.arange(batch)
        new_token, new_conf = predict(config, params, hidden[rows, jnp.clip(last, 0, chunk - 1)])
        token = jnp.where(has_last, new_token, token)
        conf = jnp.where(has_last, new_conf, conf)
        cache = cache.with_length(jnp.where(active, jnp.minimum(target, begin + chunk), begin))
        return cache, passes + active.astype(jnp.int32), token, conf

    init = (cache, jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.float32))
    return jax.lax.while_loop(cond, body, init)


def start(config: ModelConfig, params, cache: KVCache, sequence, n, *, prefill_chunk: int):
    """Starts drafting after the first ``n`` [B] (>= 1) tokens of ``sequence`` [B, S].

    ``cache`` must hold correct K/V for its first ``cache.length`` positions (``rollback`` first); blocks it lacks
    below the current block are prefilled here. Returns (DraftState, StepReport of the start).
    """
    bd = _check_dllm(config)
    batch = sequence.shape[0]
    n = jnp.broadcast_to(jnp.asarray(n, jnp.int32), (batch,))
    block_start = (n // bd) * bd
    on_boundary = (n % bd) == 0
    # At a block boundary the first token comes from the pass over the previous block: make sure one runs.
    resume = jnp.minimum(cache.length, jnp.maximum(jnp.where(on_boundary, block_start - bd, block_start), 0))
    cache, passes, first_token, first_conf = prefill(config, params, cache.with_length(resume), sequence,
                                                      block_start, prefill_chunk)

    j = jnp.arange(bd, dtype=jnp.int32)[None, :]
    pos = block_start[:, None] + j
    given = pos < n[:, None]
    seq_tokens = jnp.take_along_axis(sequence, jnp.clip(pos, 0, sequence.shape[1] - 1), axis=1)
    first = on_boundary[:, None] & (j == 0)
    tokens = jnp.where(given, seq_tokens, jnp.where(first, first_token[:, None], config.mask_token_id))
    masked = ~(given | first)
    confidence = jnp.where(given, 1.0, jnp.where(first, first_conf[:, None], 0.0)).astype(jnp.float32)
    state = DraftState(cache=cache, tokens=tokens.astype(jnp.int32), masked=masked, confidence=confidence,
                       forwards=passes)
    report = StepReport(block_start=block_start, committed=jnp.zeros((batch,), bool), ran=passes > 0,
                        considered=first, confidence=jnp.where(first, confidence, 0.0), unmasked=first)
    return state, report


def _advance(config: ModelConfig, params, state: DraftState, threshold, small_block_size: int, active,
             allow_step: bool, allow_commit: bool):
    bd = _check_dllm(config)
    check_small_block_size(config, small_block_size)
    batch = state.tokens.shape[0]
    active = _rows(active, batch)
    has_mask = jnp.any(state.masked, axis=1)
    do_step = active & has_mask if allow_step else jnp.zeros((batch,), bool)
    do_commit = active & ~has_mask if allow_commit else jnp.zeros((batch,), bool)

    hidden, cache = decoder.decode(config, params, state.tokens, state.cache, block_size=bd)
    j = jnp.arange(bd, dtype=jnp.int32)[None, :]
    first_masked = jnp.argmax(state.masked, axis=1)
    sub_block = (first_masked // small_block_size)[:, None]

    # Only small_block_size + 1 output rows are ever read: those predicting the current sub-block (token shift:
    # position p from output p - 1) and the last one (a commit's next first token). The vocabulary projection
    # and its softmax run on those rows alone, not on all bd.
    sub_start = sub_block * small_block_size
    read_rows = jnp.concatenate([jnp.clip(sub_start - 1 + j[:, :small_block_size], 0, bd - 1),
                                 jnp.full_like(sub_start, bd - 1)], axis=1)
    token, conf = predict(config, params, jnp.take_along_axis(hidden, read_rows[..., None], axis=1))

    # Decoding step on the current sub-block: position p reads entry p - sub_start of the rows above.
    in_sub_block = j // small_block_size == sub_block
    entry = jnp.clip(j - sub_start, 0, small_block_size - 1)
    shifted_token = jnp.take_along_axis(token, entry, axis=1)
    shifted_conf = jnp.take_along_axis(conf, entry, axis=1)
    considered = state.masked & in_sub_block & do_step[:, None]
    candidate_conf = jnp.where(considered, shifted_conf, -jnp.inf)
    most_confident = j == jnp.argmax(candidate_conf, axis=1)[:, None]
    unmask = considered & ((shifted_conf > threshold) | most_confident)
    step_tokens = jnp.where(unmask, shifted_token, state.tokens)
    step_masked = state.masked & ~unmask
    step_confidence = jnp.where(unmask, shifted_conf, state.confidence)

    # Commit: the next block starts with the prediction from the last position.
    first = j == 0
    commit_tokens = jnp.where(first, token[:, -1:], config.mask_token_id)
    commit_confidence = jnp.where(first, conf[:, -1:], 0.0)

    c = do_commit[:, None]
    new_state = DraftState(
        cache=cache.with_length(state.cache.length + bd * do_commit.astype(jnp.int32)),
        tokens=jnp.where(c, commit_tokens, step_tokens).astype(jnp.int32),
        masked=jnp.where(c, ~first, step_masked),
        confidence=jnp.where(c, commit_confidence, step_confidence).astype(jnp.float32),
        forwards=state.forwards + (do_step | do_commit).astype(jnp.int32),
    )
    report_considered = jnp.where(c, first, considered)
    report = StepReport(
        block_start=new_state.block_start,
        committed=do_commit,
        ran=do_step | do_commit,
        considered=report_considered,
        confidence=jnp.where(report_considered, jnp.where(c, commit_confidence, shifted_conf), 0.0),
        unmasked=jnp.where(c, first, unmask),
    )
    return new_state, report


def step(config: ModelConfig, params, state: DraftState, threshold, *, small_block_size: int, active=None):
    """One decoding step of the current sub-block (one forward pass; the cache does not advance).

    Rows without a masked position (or with ``active`` False) are left unchanged and count no forward.
    """
    return _advance(config, params, state, threshold, small_block_size, active, True, False)


def commit(config: ModelConfig, params, state: DraftState, *, active=None):
    """Commits rows whose block is complete: writes its K/V, advances the cache, predicts the next first token."""
    return _advance(config, params, state, 1.0, _check_dllm(config), active, False, True)


def advance(config: ModelConfig, params, state: DraftState, threshold, *, small_block_size: int, active=None):
    """Per row, a decoding step while the block has masks, else a commit: one forward pass either way."""
    return _advance(config, params, state, threshold, small_block_size, active, True, True)
