"""A tiny random model pair in Hugging Face format (config.json + model.safetensors), made with numpy.

Stands in for real checkpoints where none can be downloaded: a Qwen2 verifier and a Fast-dLLM v2 drafter
that shares its weights. Nothing here needs torch or a model hub.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 512, 64, 128, 2, 4, 2
MASK_TOKEN_ID = VOCAB - 1
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _hf_config(model_type: str) -> dict:
    config = {"model_type": model_type, "architectures": ["Qwen2ForCausalLM"], "vocab_size": VOCAB,
              "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "max_position_embeddings": 4096,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "use_sliding_window": False, "bos_token_id": 1, "eos_token_id": 2}
    if model_type == "Fast_dLLM_Qwen":
        config.update(bd_size=32, mask_token_id=MASK_TOKEN_ID)
    return config


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def linear(out_features, in_features):
        return (rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)).astype(np.float32)

    tensors = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
               # A large final norm makes the random model confident, as trained models are.
               "model.norm.weight": np.full((HIDDEN,), 6.0, np.float32),
               "lm_head.weight": linear(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones((HIDDEN,), np.float32),
            p + "post_attention_layernorm.weight": np.ones((HIDDEN,), np.float32),
            p + "self_attn.q_proj.weight": linear(HEADS * head_dim, HIDDEN),
            p + "self_attn.k_proj.weight": linear(KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": linear(KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.o_proj.weight": linear(HIDDEN, HEADS * head_dim),
            p + "self_attn.q_proj.bias": (0.1 * rng.standard_normal(HEADS * head_dim)).astype(np.float32),
            p + "self_attn.k_proj.bias": (0.1 * rng.standard_normal(KV_HEADS * head_dim)).astype(np.float32),
            p + "self_attn.v_proj.bias": (0.1 * rng.standard_normal(KV_HEADS * head_dim)).astype(np.float32),
            p + "mlp.gate_proj.weight": linear(FFN, HIDDEN),
            p + "mlp.up_proj.weight": linear(FFN, HIDDEN),
            p + "mlp.down_proj.weight": linear(HIDDEN, FFN),
        })
    return tensors


def write_pair(directory: str, seed: int = 0) -> tuple[str, str]:
    """Writes ``directory/hf-verifier`` and ``directory/hf-drafter``; returns their paths."""
    tensors = _tensors(seed)
    paths = []
    for name, model_type in (("hf-verifier", "qwen2"), ("hf-drafter", "Fast_dLLM_Qwen")):
        path = os.path.join(directory, name)
        os.makedirs(path, exist_ok=True)
        save_file(tensors, os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(_hf_config(model_type), f, indent=2)
        paths.append(path)
    return paths[0], paths[1]


def chat_tokenizer():
    """A character-level tokenizer over the tiny vocabulary, with Qwen's chat markers and template, so scripts
    take the same tokenize / chat-template / decode path as with Qwen2.5."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["[UNK]", "<|endoftext|>", "<|im_end|>", "<|im_start|>", "\n"] + [chr(c) for c in range(32, 127)]
    tokens += [f"<unused{i}>" for i in range(VOCAB - len(tokens))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
                                   chat_template=CHAT_TEMPLATE)
