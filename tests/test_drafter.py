"""The Fast-dLLM v2 drafter: block-causal forward, conversion, and the pure drafting functions (ffjax.drafter)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
from ffjax import decoder, drafter
from ffjax.kv_cache import KVCache
from tests import dllm_reference as reference
from tests import tiny_models

MASK_ID = 150  # inside the tiny 160-token vocabulary
SMALL_BLOCK = {8: 4, 32: 8}
SEQ = 128

start = jax.jit(drafter.start, static_argnums=0, static_argnames="prefill_chunk")
advance = jax.jit(drafter.advance, static_argnums=0, static_argnames="small_block_size")
step = jax.jit(drafter.step, static_argnums=0, static_argnames="small_block_size")
commit = jax.jit(drafter.commit, static_argnums=0)
rollback = jax.jit(drafter.rollback, static_argnums=0)


@pytest.fixture(scope="module")
def dllm(tmp_path_factory):
    """bd_size -> (ffjax.Model, torch model) of a tiny Fast_dLLM_Qwen checkpoint."""
    models = {}

    def make(bd_size):
        if bd_size not in models:
            models[bd_size] = reference.make_tiny_dllm(str(tmp_path_factory.mktemp(f"dllm{bd_size}")),
                                                       bd_size=bd_size, mask_token_id=MASK_ID)
        return models[bd_size]

    return make


def random_tokens(n, seed):
    return np.random.default_rng(seed).integers(3, MASK_ID, n).astype(np.int32)


def sequence_buffer(seed, rows=1):
    """[rows, SEQ] random ids: the buffer drafting starts from (one shape keeps compilations few)."""
    return np.stack([random_tokens(SEQ, seed + r) for r in range(rows)])


@functools.partial(jax.jit, static_argnums=0)
def block_logits(config, params, tokens, cache):
    """Logits of a block run over the cache (the cache is not kept)."""
    hidden, _ = decoder.decode(config, params, tokens, cache)
    return decoder.logits(config, params, hidden)


def full_logits(hf_model, bd_size, tokens):
    """transformers' logits for the whole sequence under the explicit block-causal mask."""
    return reference.torch_logits_fn(hf_model, bd_size)([int(t) for t in tokens])


def empty_cache(model, batch=1, length=256):
    return KVCache.create(model.config, batch, length, model.dtype)


def unmasked_by(state, report):
    """Per row, {absolute position: (token, confidence)} of what one call unmasked."""
    state, report = jax.device_get((state, report))
    return [{int(report.block_start[r] + j): (int(state.tokens[r, j]), float(report.confidence[r, j]))
             for j in np.flatnonzero(report.unmasked[r])} for r in range(len(report.ran))]


def drafter_traces(model, sequences, n, passes, *, threshold, cache=None, prefill_chunk=64):
    """Per row: start + advance for ``passes`` forward passes, as the per-pass record the reference keeps."""
    config = model.config
    sequences = jnp.asarray(sequences)
    cache = empty_cache(model, sequences.shape[0]) if cache is None else cache
    state, report = start(config, model.params, cache, sequences, n, prefill_chunk=prefill_chunk)
    traces = [[found] if ran else [] for found, ran in zip(unmasked_by(state, report), np.asarray(report.ran))]
    while min(len(t) for t in traces) < passes:
        state, report = advance(config, model.params, state, jnp.float32(threshold),
                                small_block_size=SMALL_BLOCK[config.bd_size])
        for trace, found in zip(traces, unmasked_by(state, report)):
            trace.append(found)
    return [t[:passes] for t in traces], state


def assert_same_trace(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert sorted(got) == sorted(want)
        for pos in want:
            assert got[pos][0] == want[pos][0]
            assert got[pos][1] == pytest.approx(want[pos][1], abs=1e-5)


def reference_trace(hf_model, config, prompt, max_new_tokens, threshold):
    return reference.generate(reference.torch_logits_fn(hf_model, config.bd_size), prompt, max_new_tokens,
                              bd_size=config.bd_size, small_block_size=SMALL_BLOCK[config.bd_size],
                              threshold=threshold, mask_id=MASK_ID)


# --- the model: block-causal attention and conversion ---------------------------------------------------------

@pytest.mark.parametrize("bd_size, length", [(8, 21), (8, 16), (32, 70)])
def test_forward_matches_transformers_with_explicit_block_causal_mask(dllm, bd_size, length):
    model, hf_model = dllm(bd_size)
    ids = random_tokens(length, seed=length)
    ours = np.asarray(ffjax.forward(model, ids))
    theirs = reference.torch_logits_fn(hf_model, bd_size)(list(ids))
    assert np.abs(ours - theirs).max() <= 1e-4
    causal = tiny_models.hf_logits(hf_model, ids[None])[0]
    assert np.abs(ours - causal).max() > 1e-2  # the mask matters: this is not the causal model


def test_conversion_keeps_block_size_and_mask_token(dllm):
    model, _ = dllm(8)
    assert model.config.is_dllm and model.config.model_type == "fast_dllm_qwen"
    assert (model.config.bd_size, model.config.mask_token_id) == (8, MASK_ID)
    with open(os.path.join(model.path, "config.json")) as f:
        saved = json.load(f)
    assert (saved["model_type"], saved["bd_size"], saved["mask_token_id"]) == ("Fast_dLLM_Qwen", 8, MASK_ID)


# --- cached drafting ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, prefill_chunk", [(19, 64), (19, 8), (24, 8), (5, 64)])
def test_cached_block_logits_equal_a_full_forward_with_the_mask(dllm, n, prefill_chunk):
    model, hf_model = dllm(8)
    config = model.config
    sequence = sequence_buffer(seed=n)
    state, _ = start(config, model.params, empty_cache(model), jnp.asarray(sequence), n,
                     prefill_chunk=prefill_chunk)
    block_start = int(state.block_start[0])
    assert block_start == n // 8 * 8
    cached = np.asarray(block_logits(config, model.params, state.tokens, state.cache))[0]
    full_sequence = np.concatenate([sequence[0, :block_start], np.asarray(state.tokens[0])])  # masks included
    full = full_logits(hf_model, 8, full_sequence)[block_start:]
    assert np.abs(cached - full).max() <= 1e-4


@pytest.mark.parametrize("bd_size, n", [(8, 5), (8, 13), (8, 16), (8, 1), (32, 40), (32, 64)])
def test_start_then_advance_follows_the_reference_pass_by_pass(dllm, bd_size, n):
    """Starting at any accepted length n (inside a block, on a boundary, below one block), every forward pass
    unmasks the same positions with the same tokens and confidences as the cache-free reference, across block
    commits; tokens past n in the sequence buffer are never read."""
    model, hf_model = dllm(bd_size)
    sequence = sequence_buffer(seed=n)
    expected = reference_trace(hf_model, model.config, sequence[0, :n], 2 * bd_size + 3, threshold=0.05)
    (actual,), state = drafter_traces(model, sequence, n, len(expected.trace), threshold=0.05)
    assert_same_trace(actual, expected.trace)
    assert int(state.forwards[0]) == expected.forward_passes
    assert any(len(t) > 1 for t in expected.trace)  # some pass unmasked several tokens at once


def test_rows_of_a_batch_draft_independently(dllm):
    model, hf_model = dllm(8)
    sequences = sequence_buffer(seed=1, rows=2)
    lengths = [13, 24]  # one inside a block, one on a boundary
    traces, _ = drafter_traces(model, sequences, jnp.asarray(lengths, jnp.int32), 8, threshold=0.3)
    for row, n in enumerate(lengths):
        expected = reference_trace(hf_model, model.config, sequences[row, :n], 24, threshold=0.3).trace
        assert_same_trace(traces[row], expected[:8])


def test_step_unmasks_strictly_above_threshold_plus_the_most_confident(dllm):
    model, _ = dllm(32)
    config = model.config
    state, _ = start(config, model.params, empty_cache(model), jnp.asarray(sequence_buffer(7)), 35,
                     prefill_chunk=64)
    _, report = step(config, model.params, state, jnp.float32(1.0), small_block_size=8)
    considered = np.flatnonzero(report.considered[0])
    conf = np.asarray(report.confidence[0])
    assert list(considered) == [3, 4, 5, 6, 7]  # the masked part of the first sub-block
    assert list(np.flatnonzero(report.unmasked[0])) == [considered[np.argmax(conf[considered])]]
    # A threshold equal to a confidence does not unmask it (strict >); one just below does.
    runner_up = considered[np.argsort(conf[considered])[-2]]
    at = np.float32(conf[runner_up])
    _, equal = step(config, model.params, state, at, small_block_size=8)
    _, below = step(config, model.params, state, np.nextafter(at, np.float32(0)), small_block_size=8)
    assert not bool(equal.unmasked[0, runner_up]) and bool(below.unmasked[0, runner_up])
    # Threshold 0: the whole sub-block in one step; the state records each token's confidence when unmasked.
    after, everything = step(config, model.params, state, jnp.float32(0.0), small_block_size=8)
    assert list(np.flatnonzero(everything.unmasked[0])) == list(considered)
    np.testing.assert_array_equal(after.confidence[0, 3:8], everything.confidence[0, 3:8])
    assert bool(np.all(after.masked[0, 8:])) and int(after.forwards[0]) == int(state.forwards[0]) + 1


def test_commit_writes_the_block_and_predicts_the_next_first_token(dllm):
    model, hf_model = dllm(8)
    config = model.config
    state, _ = start(config, model.params, empty_cache(model), jnp.asarray(sequence_buffer(4)), 5,
                     prefill_chunk=8)
    while bool(np.any(state.masked)):
        state, _ = step(config, model.params, state, jnp.float32(0.5), small_block_size=4)
    same, idle = step(config, model.params, state, jnp.float32(0.5), small_block_size=4)  # nothing left to unmask
    assert not bool(idle.ran[0]) and int(same.forwards[0]) == int(state.forwards[0])
    committed, report = commit(config, model.params, state)
    assert bool(report.committed[0]) and int(committed.block_start[0]) == 8
    block = np.asarray(state.tokens[0])
    token, confidence = reference.predict(full_logits(hf_model, 8, block)[-1], MASK_ID)
    assert int(committed.tokens[0, 0]) == token
    assert float(committed.confidence[0, 0]) == pytest.approx(confidence, abs=1e-5)
    assert list(np.asarray(committed.masked[0])) == [False] + [True] * 7
    assert list(np.flatnonzero(report.unmasked[0])) == [0]
    # The committed block's K/V are in the cache: the next block sees it as a full forward would.
    full = np.concatenate([block, np.asarray(committed.tokens[0])])
    np.testing.assert_allclose(np.asarray(block_logits(config, model.params, committed.tokens, committed.cache))[0],
                               full_logits(hf_model, 8, full)[8:], atol=1e-4)


@pytest.mark.parametrize("correction_at", [15, 11, 5])
def test_restart_after_verification_equals_a_fresh_start(dllm, correction_at):
    """The drafter committed two blocks of its own draft; the verifier accepts the draft up to ``correction_at``
    and replaces the token there. Starting at the new accepted length from the same cache (a correction on the
    last position of a committed block included) behaves exactly like a fresh start."""
    model, _ = dllm(8)
    config = model.config
    prompt = sequence_buffer(5)[0, :3]
    state, _ = start(config, model.params, empty_cache(model), jnp.asarray(sequence_buffer(5)), 3, prefill_chunk=64)
    drafted = jnp.zeros((1, SEQ), jnp.int32).at[0, :3].set(prompt)
    while int(state.block_start[0]) < 16:
        state, _ = advance(config, model.params, state, jnp.float32(0.3), small_block_size=4)
        drafted = drafter.place_block(drafted, state.tokens, state.block_start)
    sequence = np.asarray(drafted).copy()
    sequence[0, correction_at] = (sequence[0, correction_at] + 1) % MASK_ID
    n = correction_at + 1
    resumed, _ = start(config, model.params, rollback(config, state.cache, n), jnp.asarray(sequence), n,
                       prefill_chunk=64)
    fresh, _ = start(config, model.params, empty_cache(model), jnp.asarray(sequence), n, prefill_chunk=64)
    for _ in range(3):
        np.testing.assert_array_equal(resumed.tokens, fresh.tokens)
        np.testing.assert_allclose(resumed.confidence, fresh.confidence, atol=1e-5)
        resumed, _ = advance(config, model.params, resumed, jnp.float32(0.3), small_block_size=4)
        fresh, _ = advance(config, model.params, fresh, jnp.float32(0.3), small_block_size=4)


def test_rollback_keeps_only_whole_blocks_below_the_valid_length(dllm):
    model, _ = dllm(8)
    cache = empty_cache(model, batch=3).with_length(jnp.asarray([24, 24, 8]))
    rolled = drafter.rollback(model.config, cache, jnp.asarray([17, 24, 20]))
    assert list(np.asarray(rolled.length)) == [16, 24, 8]


def test_start_prefills_only_missing_blocks(dllm):
    model, _ = dllm(8)
    config = model.config
    sequence = jnp.asarray(sequence_buffer(6))
    fresh, _ = start(config, model.params, empty_cache(model), sequence, 29, prefill_chunk=8)
    assert int(fresh.forwards[0]) == 3  # blocks [0, 24) in passes of 8 tokens
    resumed, report = start(config, model.params, drafter.rollback(config, fresh.cache, 16), sequence, 29,
                            prefill_chunk=8)
    assert int(resumed.forwards[0]) == 1 and bool(report.ran[0])
    up_to_date, report = start(config, model.params, fresh.cache, sequence, 29, prefill_chunk=8)
    assert int(up_to_date.forwards[0]) == 0 and not bool(report.ran[0])
    np.testing.assert_array_equal(up_to_date.tokens, fresh.tokens)
    # On a block boundary the last complete block is re-run once for the first token, even when cached.
    boundary, report = start(config, model.params, fresh.cache, sequence, 24, prefill_chunk=8)
    assert int(boundary.forwards[0]) == 1 and list(np.flatnonzero(report.unmasked[0])) == [0]


def test_new_thresholds_do_not_recompile(dllm):
    model, _ = dllm(8)
    config = model.config

    def one_pass(config, params, state, threshold):  # its own function: a fresh compilation cache to count
        return drafter.advance(config, params, state, threshold, small_block_size=4)

    run = jax.jit(one_pass, static_argnums=0)
    state, _ = start(config, model.params, empty_cache(model), jnp.asarray(sequence_buffer(8)), 5,
                     prefill_chunk=8)
    for threshold in (0.05, 0.3, 0.9, 1.0):
        run(config, model.params, state, jnp.float32(threshold))
    assert run._cache_size() == 1
