"""Tiny random Hugging Face checkpoints built on the fly (nothing is downloaded)."""

from __future__ import annotations

import os

import numpy as np
import torch
import transformers

VOCAB = 160


def qwen2_config(**overrides) -> transformers.Qwen2Config:
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
                  bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    return transformers.Qwen2Config(**kwargs)


def llama_config(**overrides) -> transformers.LlamaConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64})
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


def build(config, seed: int = 0, confidence: float = 4.0):
    """A random float32 HF causal LM. ``confidence`` scales the final norm so the softmax is peaked (tiny random
    models are otherwise near-uniform, and thresholds, acceptance and argmax ties would not be exercised)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
        model.model.norm.weight.mul_(confidence)
    return model.eval()


def save(model, directory: str, *, max_shard_size=None) -> str:
    os.makedirs(directory, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


def hf_logits(model, tokens: np.ndarray, attention_mask=None) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.as_tensor(tokens, dtype=torch.long), attention_mask=attention_mask)
    return out.logits.float().numpy()


def hf_greedy(model, prompt: np.ndarray, max_new_tokens: int, eos_id=None) -> np.ndarray:
    """transformers' own greedy generate; returns only the new ids."""
    ids = torch.as_tensor(prompt[None, :], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_id, pad_token_id=0, min_new_tokens=0)
    return out[0, len(prompt):].numpy()
