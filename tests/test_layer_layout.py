"""The per-layer params layout (the GPU default) computes exactly what the stacked checkpoint layout does."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
from ffjax import decoder
from ffjax.checkpoint import Model
from ffjax.kv_cache import KVCache
from ffjax.speculate import speculate
from tests import tiny_models

QWEN = tiny_models.qwen2_config()


@pytest.fixture(scope="module")
def both_layouts(converted):
    stacked = converted("layout-qwen", QWEN)[0]
    per_layer = Model(stacked.config, decoder.unstack_layers(stacked.params), stacked.path)
    return stacked, per_layer


def test_unstack_then_stack_is_the_identity(both_layouts):
    stacked, per_layer = both_layouts
    assert decoder.layout_of(per_layer.params) == decoder.PER_LAYER
    assert sorted(k for k in per_layer.params if k.startswith("layer_")) == [f"layer_{i}" for i in range(3)]
    jax.tree.map(np.testing.assert_array_equal, decoder.stack_layers(per_layer.params), stacked.params)
    # Per layer, the projections are stored [out, in] (what the decoding-row kernels read contiguously).
    for name in decoder.PROJECTIONS:
        np.testing.assert_array_equal(per_layer.params["layer_1"][name], stacked.params["layers"][name][1].T)


def test_per_layer_logits_generation_and_speculation_match_stacked(both_layouts):
    stacked, per_layer = both_layouts
    tokens = np.random.RandomState(0).randint(0, tiny_models.VOCAB, (1, 27))
    np.testing.assert_allclose(np.asarray(ffjax.forward(per_layer, tokens)),
                               np.asarray(ffjax.forward(stacked, tokens)), atol=1e-5)
    prompt = tokens[0, :9]
    np.testing.assert_array_equal(ffjax.generate(per_layer, prompt, 40).tokens,
                                  ffjax.generate(stacked, prompt, 40).tokens)
    dllm_config = dataclasses.replace(stacked.config, model_type="fast_dllm_qwen", bd_size=8,
                                      mask_token_id=tiny_models.VOCAB - 1)
    drafted = speculate(per_layer, Model(dllm_config, per_layer.params), prompt, 40).tokens
    np.testing.assert_array_equal(drafted, ffjax.generate(stacked, prompt, 40).tokens)


def test_load_can_return_either_layout_and_save_restacks(both_layouts, tmp_path):
    stacked, per_layer = both_layouts
    ffjax.checkpoint.save(str(tmp_path), per_layer.config, per_layer.params)
    again = ffjax.load(str(tmp_path), layout=decoder.STACKED)
    jax.tree.map(np.testing.assert_array_equal, again.params, stacked.params)
    assert decoder.layout_of(ffjax.load(str(tmp_path), layout=decoder.PER_LAYER).params) == decoder.PER_LAYER


def test_cache_in_the_wrong_layout_is_refused(both_layouts):
    _, per_layer = both_layouts
    cache = KVCache.create(per_layer.config, 1, 16, jnp.float32, layout=decoder.STACKED)
    with pytest.raises(ValueError, match="cache layout does not match"):
        decoder.decode(per_layer.config, per_layer.params, jnp.ones((1, 3), jnp.int32), cache)


@pytest.mark.parametrize("mode", ["on", "off", "o", "qkv,o", "qkv,o,gate_up"])
def test_decoding_row_kernels_do_not_change_generation(both_layouts, monkeypatch, mode):
    """FFJAX_MATVEC switches a decoding row's projections between decode_matvec and XLA's dots: same tokens."""
    stacked, per_layer = both_layouts
    monkeypatch.setenv(decoder.MATVEC_ENV, mode)
    prompt = np.arange(1, 8, dtype=np.int32)
    np.testing.assert_array_equal(ffjax.generate(per_layer, prompt, 24).tokens,
                                  ffjax.generate(stacked, prompt, 24).tokens)


def test_unknown_matvec_mode_is_refused(both_layouts, monkeypatch):
    monkeypatch.setenv(decoder.MATVEC_ENV, "sometimes")
    with pytest.raises(ValueError, match="FFJAX_MATVEC must be auto, on, off or a comma-separated list"):
        decoder.matvec_projections(both_layouts[0].config)
