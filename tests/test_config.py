"""ModelConfig: what ffjax reads from an HF config.json, and what it refuses."""

import json

import pytest

from ffjax.config import FAST_DLLM_DEFAULT_MASK_TOKEN_ID, ConfigError, ModelConfig
from tests import tiny_models


def hf_dict(config):
    return json.loads(config.to_json_string())


def test_qwen2_fields_are_read():
    config = ModelConfig.from_hf(hf_dict(tiny_models.qwen2_config(tie_word_embeddings=True)))
    assert config.model_type == "qwen2" and config.architecture == "qwen2"
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (3, 4, 2, 16)
    assert config.qkv_bias and config.tie_word_embeddings and not config.is_dllm
    assert config.rope_theta == 10000.0 and config.rope_scaling is None
    assert config.eos_token_ids == (2,)


def test_llama_has_no_bias_and_reads_llama3_rope_scaling():
    config = ModelConfig.from_hf(hf_dict(tiny_models.llama_config()))
    assert config.architecture == "llama" and not config.qkv_bias
    assert config.rope_scaling.factor == 8.0 and config.rope_scaling.original_max_position_embeddings == 64
    assert config.rope_theta == 50000.0


def test_fast_dllm_variant_has_block_size_and_default_mask_token():
    hf = hf_dict(tiny_models.qwen2_config(vocab_size=151936))
    hf.update(model_type="Fast_dLLM_Qwen", bd_size=32)
    config = ModelConfig.from_hf(hf)
    assert config.is_dllm and config.architecture == "qwen2"
    assert config.bd_size == 32 and config.mask_token_id == FAST_DLLM_DEFAULT_MASK_TOKEN_ID


def test_config_round_trips_through_hf_dict():
    for hf in (tiny_models.qwen2_config(), tiny_models.llama_config()):
        config = ModelConfig.from_hf(hf_dict(hf))
        assert ModelConfig.from_hf(config.to_hf()) == config


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt_neox"}, "unknown architecture"),
    ({"model_type": None}, "unknown architecture"),
    ({"hidden_size": None}, "missing the field 'hidden_size'"),
    ({"use_sliding_window": True}, "sliding-window"),
    ({"num_key_value_heads": 3}, "multiple of"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "unsupported rope_scaling"),
])
def test_unsupported_or_incomplete_configs_are_refused_clearly(change, message):
    hf = hf_dict(tiny_models.qwen2_config())
    hf.update(change)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(hf)


def test_mask_token_outside_vocabulary_is_refused():
    hf = hf_dict(tiny_models.qwen2_config())
    hf.update(model_type="Fast_dLLM_Qwen", bd_size=8, mask_token_id=10_000)
    with pytest.raises(ConfigError, match="mask_token_id"):
        ModelConfig.from_hf(hf)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_json(tmp_path)
