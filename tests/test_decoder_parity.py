"""The ffjax decoder is numerically the HF model: logits, cached decoding and greedy generation (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
from ffjax import decoder
from ffjax.kv_cache import KVCache
from tests import tiny_models

decode = jax.jit(decoder.decode, static_argnums=0)

MODELS = {
    "qwen2-untied-gqa": tiny_models.qwen2_config(),
    "qwen2-tied": tiny_models.qwen2_config(tie_word_embeddings=True, num_key_value_heads=4),
    "llama3-mqa": tiny_models.llama_config(),
}


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_transformers(converted, name):
    model, reference = converted(name, MODELS[name])
    tokens = np.random.RandomState(1).randint(0, tiny_models.VOCAB, (2, 45))
    ours = np.asarray(ffjax.forward(model, tokens))
    theirs = tiny_models.hf_logits(reference, tokens)
    assert np.abs(ours - theirs).max() <= 1e-4
    # Confident models: the test would be vacuous on near-uniform logits.
    assert np.abs(theirs).max() > 1.0


@pytest.mark.parametrize("name", MODELS)
def test_cached_step_by_step_logits_equal_full_sequence_logits(converted, name):
    model, _ = converted(name, MODELS[name])
    config, params = model.config, model.params
    tokens = np.random.RandomState(2).randint(0, tiny_models.VOCAB, (1, 21)).astype(np.int32)
    full = np.asarray(ffjax.forward(model, tokens))[0]

    cache = KVCache.create(config, 1, 32, jnp.float32)
    stepwise = []
    for chunk in ([0, 7], [7, 8], [8, 13], [13, 21]):  # a prefill, a single token, then verifier-like blocks
        piece = jnp.asarray(tokens[:, chunk[0]:chunk[1]])
        hidden, cache = decode(config, params, piece, cache)
        cache = cache.advance(piece.shape[1])
        stepwise.append(np.asarray(decoder.logits(config, params, hidden))[0])
    assert np.abs(np.concatenate(stepwise) - full).max() <= 1e-4


def test_rolled_back_cache_is_rewritten_correctly(converted):
    """Rollback is resetting the length: stale keys past it must never leak into later logits."""
    model, _ = converted("qwen2-untied-gqa", MODELS["qwen2-untied-gqa"])
    config, params = model.config, model.params
    tokens = np.random.RandomState(3).randint(0, tiny_models.VOCAB, (1, 12)).astype(np.int32)
    cache = KVCache.create(config, 1, 32, jnp.float32)
    _, cache = decode(config, params, jnp.asarray(tokens[:, :10]), cache)
    wrong_draft = jnp.asarray((tokens[:, 5:10] + 1) % tiny_models.VOCAB)
    cache = cache.with_length(5)
    _, cache = decode(config, params, wrong_draft, cache)  # writes a rejected draft at 5..9
    cache = cache.with_length(5)  # ...which is rolled back
    hidden, _ = decode(config, params, jnp.asarray(tokens[:, 5:12]), cache)
    ours = np.asarray(decoder.logits(config, params, hidden))[0]
    assert np.abs(ours - np.asarray(ffjax.forward(model, tokens))[0, 5:12]).max() <= 1e-4


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("prompt_len", [1, 9, 16, 33])
def test_greedy_generate_is_token_identical_to_transformers(converted, name, prompt_len):
    model, reference = converted(name, MODELS[name])
    prompt = np.random.RandomState(prompt_len).randint(0, tiny_models.VOCAB, prompt_len)
    ours = ffjax.generate(model, prompt, 70).tokens
    theirs = tiny_models.hf_greedy(reference, prompt, 70)
    assert len(ours) == 70
    np.testing.assert_array_equal(ours, theirs)


def test_bfloat16_model_tracks_float32_logits(hf_dir, tmp_path):
    from checkpoints_convert import convert
    directory, _ = hf_dir("qwen2-untied-gqa", MODELS["qwen2-untied-gqa"])
    convert(directory, str(tmp_path), "bfloat16", progress=False)
    bf16 = ffjax.load(str(tmp_path))
    f32 = ffjax.load(str(tmp_path), dtype=jnp.float32)
    assert bf16.dtype == jnp.bfloat16 and f32.dtype == jnp.float32
    tokens = np.random.RandomState(4).randint(0, tiny_models.VOCAB, (1, 30))
    a, b = np.asarray(ffjax.forward(bf16, tokens)), np.asarray(ffjax.forward(f32, tokens))
    # bf16 keeps ~3 significant digits through 3 layers; argmax agreement is what decoding relies on.
    assert np.abs(a - b).max() < 0.1 * np.abs(b).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9
