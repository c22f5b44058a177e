"""``ffjax.speculate``: FailFast speculative decoding as one jitted ``lax.while_loop`` over rounds.

Round invariants (batch 1; shapes keep the batch axis):
* ``seq`` holds the prompt and every accepted token in [0, n); drafts are written past n while drafting.
* The verifier cache holds [0, n - 1): each verification feeds (seq[n-1], d_1 .. d_k), padded to the smallest
  bucket that holds k + 1 tokens, through a ``lax.switch`` with one branch per bucket.
* The verifier's argmaxes v_0 .. v_k decide: a = the number of leading drafts with d_i == v_{i-1}; the round
  appends v_0 .. v_a (the accepted drafts and the verifier's own correction or bonus token), so the output is
  exactly the verifier's greedy output whatever the drafter proposes.
* The diffusion drafter's cache holds complete blocks of accepted tokens; ``drafter.start`` drops blocks a
  correction touched and prefills the newly completed ones (each pass counts as a drafter forward).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ffjax import ar_drafter, decoder, draft_window, drafter, executables, reuse_rejected, shapes
from ffjax.checkpoint import Model
from ffjax.compatibility import check_drafter_matches_verifier
from ffjax.failfast_config import FailFastConfig
from ffjax.generate import prefill as prefill_verifier
from ffjax.inputs import as_prompt_batch, check_autoregressive, check_generation_args, pad_to_bucket, unbatch_tokens
from ffjax.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class SpeculateStats:
    rounds: int
    drafted: np.ndarray  # [rounds] drafted tokens proposed per round
    accepted: np.ndarray  # [rounds] drafted tokens accepted per round (each round also adds one verifier token)
    reused: np.ndarray  # [rounds] drafted tokens taken from the previous round's rejected tail (reuse_rejected)
    drafter_forwards: int
    verifier_forwards: int  # prefill included
    new_tokens: int
    compile_s: float
    wall_time_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    @property
    def acceptance_rate(self) -> float:
        return float(self.accepted.sum() / max(self.drafted.sum(), 1))

    @property
    def mean_accepted(self) -> float:
        return float(self.accepted.mean()) if self.rounds else 0.0


@dataclasses.dataclass(frozen=True)
class SpeculateResult:
    tokens: np.ndarray
    stats: SpeculateStats


class _Stream:
    """Host side of streaming: the running call's sink, fed each round's new tokens (trimmed to the budget and
    the first EOS) by an ordered ``jax.debug.callback``. The compiled program calls ``emit``, never the user's
    function, so a new sink needs no recompilation."""

    sink = None
    remaining = 0
    eos_id = None

    @classmethod
    def emit(cls, tokens, count):
        if cls.sink is None or cls.remaining <= 0:
            return
        tokens = np.asarray(tokens)[: min(int(count), cls.remaining)]
        if cls.eos_id is not None and np.any(tokens == cls.eos_id):
            tokens = tokens[: int(np.argmax(tokens == cls.eos_id)) + 1]
            cls.remaining = 0
        else:
            cls.remaining -= len(tokens)
        if len(tokens):
            cls.sink(tokens.astype(np.int32))


@struct.dataclass
class _Rounds:
    seq: jax.Array  # [B, S]
    n: jax.Array  # [B] accepted length (prompt + generated)
    verifier_cache: KVCache
    drafter_cache: KVCache
    done: jax.Array  # [B]
    round: jax.Array  # [] int32
    drafted: jax.Array  # [R]
    accepted: jax.Array  # [R]
    drafter_forwards: jax.Array  # [] int32
    verifier_forwards: jax.Array  # [] int32
    reused: jax.Array  # [R] drafted tokens taken from the previous round's rejected tail
    tail: jax.Array  # [B, W] the last round's rejected draft (reuse_rejected), -1 padded
    tail_len: jax.Array  # [B]


def _draft_diffusion(ff: FailFastConfig, dcfg, dparams, cache, seq, n, cap, tau, threshold):
    """Drafts with the block-diffusion drafter: (seq with the draft at [n, n+k), k, cache, forwards, whether the
    draft failed fast)."""
    width = ff.buckets[-1]
    bd = dcfg.bd_size

    def record(state, tokens, confidence):
        tokens = drafter.place_block(tokens, jnp.where(state.masked, -1, state.tokens), state.block_start, n)
        confidence = drafter.place_block(confidence, state.confidence, state.block_start, n)
        return tokens, confidence

    state, _ = drafter.start(dcfg, dparams, cache, seq, n, prefill_chunk=2 * bd)
    tokens, confidence = record(state, jnp.full((seq.shape[0], width), -1, jnp.int32),
                                jnp.zeros((seq.shape[0], width), jnp.float32))
    window = draft_window.initial_window(ff, cap)

    def decide(state, tokens, confidence, window):
        return draft_window.decide(ff, drafter.known_prefix(state) - n, confidence, tokens >= 0, window, cap, tau)

    stop, window = decide(state, tokens, confidence, window)

    def cond(carry):
        return ~jnp.all(carry[-1])

    def body(carry):
        state, tokens, confidence, window, stop = carry
        state, _ = drafter.advance(dcfg, dparams, state, threshold, small_block_size=ff.small_block_size)
        tokens, confidence = record(state, tokens, confidence)
        stop, window = decide(state, tokens, confidence, window)
        return state, tokens, confidence, window, stop

    state, tokens, confidence, window, _ = jax.lax.while_loop(cond, body, (state, tokens, confidence, window, stop))
    seq = _write(seq, tokens, n, window)
    failed = draft_window.failed_fast(confidence, tokens >= 0, tau)
    return seq, window, state.cache, jnp.sum(state.forwards), failed


def _draft_autoregressive(ff: FailFastConfig, dcfg, dparams, cache, seq, n, cap, tau, threshold):
    """Drafts token by token with an AR drafter; same window rule, confidence = softmax prob of the argmax."""
    del threshold
    width = ff.buckets[-1]
    batch = seq.shape[0]
    positions = jnp.arange(width)[None, :]

    def decide(known, confidence, window):
        return draft_window.decide(ff, known, confidence, positions < known[:, None], window, cap, tau)

    known = jnp.zeros((batch,), jnp.int32)
    confidence = jnp.zeros((batch, width), jnp.float32)
    stop, window = decide(known, confidence, draft_window.initial_window(ff, cap))

    def cond(carry):
        return ~jnp.all(carry[-1])

    def body(carry):
        seq, confidence, cache, known, forwards, window, stop = carry
        token, conf, cache = ar_drafter.step(dcfg, dparams, cache, seq, n + known)
        rows = jnp.arange(batch)
        seq = seq.at[rows, n + known].set(token, mode="drop")
        confidence = confidence.at[rows, known].set(conf, mode="drop")
        known = known + 1
        stop, window = decide(known, confidence, window)
        return seq, confidence, cache, known, forwards + 1, window, stop

    init = (seq, confidence, cache, known, jnp.int32(0), window, stop)
    seq, confidence, cache, known, forwards, window, _ = jax.lax.while_loop(cond, body, init)
    return seq, window, cache, forwards, draft_window.failed_fast(confidence, positions < known[:, None], tau)


def _reuse_rejected(seq, n, k, unsure, tail, tail_len, cap):
    """(seq, k) with a draft that failed fast extended from the previous round's rejected tail."""
    rows = jnp.arange(seq.shape[0])[:, None]
    draft = seq[rows, jnp.clip(n[:, None] + jnp.arange(tail.shape[1])[None, :], 0, seq.shape[1] - 1)]
    extended, grown = reuse_rejected.extend_draft(draft, k, tail, jnp.where(unsure, tail_len, 0), cap)
    return _write(seq, extended, n, grown), grown


def _write(seq, tokens, start, count):
    """seq with tokens[:, i] written at start + i for i < count (others untouched)."""
    rows = jnp.arange(seq.shape[0])[:, None]
    i = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    pos = jnp.where(i < count[:, None], start[:, None] + i, seq.shape[1])
    return seq.at[rows, pos].set(tokens, mode="drop")


def _verify(ff: FailFastConfig, vcfg, vparams, cache: KVCache, seq, n, k):
    """One verifier forward over (seq[n-1], d_1..d_k) in the smallest bucket: (the inputs as drafted,
    argmaxes [B, max bucket], cache)."""
    width = ff.buckets[-1]
    rows = jnp.arange(seq.shape[0])[:, None]
    inputs = seq[rows, jnp.clip(n[:, None] - 1 + jnp.arange(width)[None, :], 0, seq.shape[1] - 1)]

    def branch(bucket):
        def run(inputs, cache):
            # A draft id the verifier's table lacks (a larger drafter vocabulary) is fed clipped; the comparison
            # below uses the draft as proposed, so it is never accepted.
            inputs = jnp.clip(inputs, 0, vcfg.vocab_size - 1)
            hidden, cache = decoder.decode(vcfg, vparams, inputs[:, :bucket], cache)
            argmax = jnp.argmax(decoder.logits(vcfg, vparams, hidden), axis=-1).astype(jnp.int32)
            return jnp.pad(argmax, ((0, 0), (0, width - bucket))), cache
        return run

    index = jnp.searchsorted(jnp.asarray(ff.buckets), jnp.max(k) + 1)
    return inputs, *jax.lax.switch(index, [branch(b) for b in ff.buckets], inputs, cache)


def prefill_pair(vcfg, dcfg, vparams, dparams, padded_prompt, prompt_len, cache_len: int):
    """Both models' prompt passes: (seq [B, cache_len] holding the prompt and the verifier's first new token at
    ``prompt_len``, that token [B], the verifier's cache, the drafter's cache, drafter forwards run)."""
    batch, bucket = padded_prompt.shape
    seq = jnp.zeros((batch, cache_len), jnp.int32).at[:, :bucket].set(padded_prompt)
    first_logits, vcache = prefill_verifier(vcfg, vparams, padded_prompt, jnp.full((batch,), prompt_len), cache_len)
    first = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)
    seq = seq.at[:, prompt_len].set(first)

    dcache = decoder.new_cache(dcfg, dparams, batch, cache_len)
    if not dcfg.is_dllm:
        return seq, first, vcache, ar_drafter.prefill(dcfg, dparams, dcache, padded_prompt, prompt_len), jnp.int32(1)
    # The prompt's complete blocks below the one holding the first new token, in one pass; the first round's
    # start then runs only what it must (at a block boundary: the pass that predicts the new block's first token).
    chunk = shapes.round_up(bucket, dcfg.bd_size)
    target = jnp.full((batch,), (prompt_len // dcfg.bd_size) * dcfg.bd_size, jnp.int32)
    dcache, passes, _, _ = drafter.prefill(dcfg, dparams, dcache, seq, target, chunk)
    return seq, first, vcache, dcache, jnp.sum(passes)


def _speculate(ff: FailFastConfig, vcfg, dcfg, vparams, dparams, padded_prompt, prompt_len, max_new_tokens, eos_id,
               tau, threshold, *, cache_len: int, max_rounds: int, streaming: bool = False):
    batch = padded_prompt.shape[0]
    seq, first, vcache, dcache, prefill_forwards = prefill_pair(vcfg, dcfg, vparams, dparams, padded_prompt,
                                                                prompt_len, cache_len)
    n = prompt_len + 1
    if streaming:
        jax.debug.callback(_Stream.emit, first[:1], 1, ordered=True)
    draft = functools.partial(_draft_diffusion if dcfg.is_dllm else _draft_autoregressive, ff, dcfg, dparams)

    def cond(s: _Rounds):
        return ~jnp.all(s.done)

    def body(s: _Rounds):
        remaining = prompt_len + max_new_tokens - s.n  # tokens still to produce (one comes from the verifier)
        cap = jnp.clip(remaining - 1, 0, ff.longest_draft)
        seq, k, dcache, dforwards, unsure = draft(s.drafter_cache, s.seq, s.n, cap, tau, threshold)
        drafter_k = k
        if ff.reuse_rejected:
            seq, k = _reuse_rejected(seq, s.n, k, unsure, s.tail, s.tail_len, jnp.broadcast_to(cap, k.shape))
        inputs, argmax, vcache = _verify(ff, vcfg, vparams, s.verifier_cache, seq, s.n, k)
        i = jnp.arange(argmax.shape[1])[None, :]
        matches = (inputs[:, 1:] == argmax[:, :-1]) & (i[:, :-1] < k[:, None])
        accepted = jnp.sum(jnp.cumprod(matches, axis=1), axis=1).astype(jnp.int32)
        new_tokens = jnp.where(i <= accepted[:, None], argmax, -1)
        seq = _write(seq, argmax, s.n, accepted + 1)
        hit_eos = jnp.any((new_tokens == eos_id) & (i <= accepted[:, None]), axis=1)
        n = s.n + accepted + 1
        if streaming:
            jax.debug.callback(_Stream.emit, argmax[0], accepted[0] + 1, ordered=True)
        tail, tail_len = (reuse_rejected.rejected_tail(inputs, accepted, k, s.tail.shape[1]) if ff.reuse_rejected
                          else (s.tail, s.tail_len))
        return _Rounds(
            seq=seq, n=n, verifier_cache=vcache.with_length(n - 1), drafter_cache=dcache,
            done=s.done | hit_eos | (n - prompt_len >= max_new_tokens), round=s.round + 1,
            drafted=s.drafted.at[s.round].set(k[0], mode="drop"),
            accepted=s.accepted.at[s.round].set(accepted[0], mode="drop"),
            drafter_forwards=s.drafter_forwards + dforwards, verifier_forwards=s.verifier_forwards + 1,
            reused=s.reused.at[s.round].set(k[0] - drafter_k[0], mode="drop"), tail=tail, tail_len=tail_len)

    done = (first == eos_id) | (max_new_tokens <= 1)
    init = _Rounds(seq=seq, n=jnp.broadcast_to(n, (batch,)).astype(jnp.int32), verifier_cache=vcache,
                   drafter_cache=dcache, done=done, round=jnp.int32(0),
                   drafted=jnp.zeros((max_rounds,), jnp.int32), accepted=jnp.zeros((max_rounds,), jnp.int32),
                   drafter_forwards=prefill_forwards.astype(jnp.int32), verifier_forwards=jnp.int32(1),
                   reused=jnp.zeros((max_rounds,), jnp.int32),
                   tail=jnp.full((batch, ff.buckets[-1]), -1, jnp.int32), tail_len=jnp.zeros((batch,), jnp.int32))
    s = jax.lax.while_loop(cond, body, init)
    return s.seq, s.n, s.round, s.drafted, s.accepted, s.drafter_forwards, s.verifier_forwards, s.reused


def speculate(verifier: Model, drafter_model: Model, prompt_ids, max_new_tokens: int, *,
              config: FailFastConfig = FailFastConfig(), eos_id: int | None = None,
              prompt_bucket: int | None = None, stream=None) -> SpeculateResult:
    """Greedy decoding of ``verifier`` accelerated by ``drafter_model`` (a Fast-dLLM v2 block-diffusion model, or
    an AR model for the token-by-token baselines).

    The output is the verifier's own argmax at every position, so it equals ``generate(verifier, ...)`` token for
    token in float32 (tested). In bf16 the k-token verification and the one-token decode step run different
    kernels, so a near-tie between two logits can resolve differently: expect rare divergences there.
    ``prompt_bucket``: pad prompts to this length instead of the next power of two (one program for a prompt set).
    ``stream``: a function called on the host with each round's newly accepted tokens (int32 arrays, in order;
    together exactly ``tokens``), while the loop runs on the device. It costs one device-to-host copy per round."""
    check_autoregressive(verifier.config, "verifier")
    check_drafter_matches_verifier(verifier, drafter_model, config)
    prompt, was_1d = as_prompt_batch(prompt_ids, verifier.config)
    for model in (verifier, drafter_model):
        check_generation_args(model.config, prompt.shape[1], max_new_tokens, eos_id=eos_id)
    if prompt.shape[0] != 1:
        raise ValueError(f"speculate decodes one prompt at a time (batch 1), got a batch of {prompt.shape[0]}")
    if prompt.max() >= drafter_model.config.vocab_size:
        raise ValueError("prompt_ids hold ids outside the drafter's vocabulary")
    batch, prompt_len = prompt.shape
    padded = pad_to_bucket(prompt, prompt_bucket)
    capacity = shapes.new_tokens_bucket(max_new_tokens)
    block = drafter_model.config.bd_size or 0
    cache_len = shapes.cache_length(padded.shape[1], max_new_tokens, extra=config.buckets[-1] + 2 * block)
    streaming = stream is not None
    fn = functools.partial(_speculate, config, verifier.config, drafter_model.config, cache_len=cache_len,
                           max_rounds=capacity, streaming=streaming)
    _Stream.sink, _Stream.remaining, _Stream.eos_id = stream, max_new_tokens, eos_id
    try:
        outputs, compile_s, wall = executables.run(
            ("speculate", config.static_key(), verifier.config, drafter_model.config, cache_len, capacity, streaming),
            jax.jit(fn),
            verifier.params, drafter_model.params, jnp.asarray(padded), jnp.int32(prompt_len),
            jnp.int32(max_new_tokens), jnp.int32(-1 if eos_id is None else eos_id), jnp.float32(config.tau),
            jnp.float32(config.drafter_threshold))
        if streaming:
            jax.effects_barrier()  # every round's callback has run before the call returns
    finally:
        _Stream.sink = None
    seq, n, rounds, drafted, accepted, dforwards, vforwards, reused = jax.device_get(outputs)

    generated = seq[:, prompt_len: int(n[0])][:, :max_new_tokens]
    rows = unbatch_tokens(generated, eos_id)
    rounds = int(rounds)
    stats = SpeculateStats(rounds=rounds, drafted=drafted[:rounds], accepted=accepted[:rounds], reused=reused[:rounds],
                           drafter_forwards=int(dforwards), verifier_forwards=int(vforwards),
                           new_tokens=len(rows[0]), compile_s=compile_s, wall_time_s=wall)
    return SpeculateResult(tokens=rows[0] if was_1d else rows, stats=stats)
