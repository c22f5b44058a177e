"""Shared helpers for GPU benchmarks: model shapes, bandwidth measurement, timing, result output."""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ffjax.config import ModelConfig

# Real Qwen2.5 shapes (random weights are used: speed does not depend on their values).
SHAPES = {
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                       num_kv_heads=4, head_dim=128, tie_word_embeddings=False),
    "qwen2.5-32b": dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_layers=64, num_heads=40,
                        num_kv_heads=8, head_dim=128, tie_word_embeddings=False),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                         num_heads=12, num_kv_heads=2, head_dim=128, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                         num_kv_heads=2, head_dim=64, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, tie_word_embeddings=False),
}


def shape_config(name: str, **overrides) -> ModelConfig:
    kwargs = dict(model_type="qwen2", rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
                  qkv_bias=True, **SHAPES[name])
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def random_params(config: ModelConfig, dtype=jnp.bfloat16):
    """Random params (normal, std 0.02) at ``config``'s shapes in the platform's layout, each array drawn directly
    with the fast ``rbg`` generator: seconds at 32B, where Flax's init under jit outran a 5-minute limit."""
    from ffjax import decoder
    from ffjax.kv_cache import default_layout
    shapes = decoder.param_shapes(config, dtype, layout=default_layout())
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(0, impl="rbg"), len(leaves))
    return jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)])


def measured_read_bandwidth(num_bytes: int = 4 << 30) -> float:
    """Bytes/s of the fastest of several large on-device reductions (each reads every byte once): the
    practical HBM read limit. Taking the best pattern makes the limit strict, not flattering."""
    x = jnp.ones((num_bytes // 2 // 8192, 8192), jnp.bfloat16)
    reductions = [lambda a: jnp.sum(a, axis=1, dtype=jnp.float32), lambda a: jnp.sum(a, axis=0, dtype=jnp.float32),
                  lambda a: jnp.sum(a, dtype=jnp.float32)]
    best = min(time_fn(functools.partial(jax.jit(r), x), repeats=20) for r in reductions)
    del x
    return num_bytes / best


def time_fn(fn, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall seconds of fn() (its result blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def decode_bytes_per_token(config: ModelConfig, context: int, dtype_bytes: int = 2) -> dict:
    """Bytes one decode step must read: every weight except the embedding table (only one row is gathered,
    unless it doubles as the output head) plus the K/V of the context."""
    c = config
    per_layer = (c.hidden_size * (c.q_size + 2 * c.kv_size) + (c.q_size + 2 * c.kv_size)
                 + c.q_size * c.hidden_size + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size)
    head = c.vocab_size * c.hidden_size
    weights = (c.num_layers * per_layer + head + c.hidden_size) * dtype_bytes
    kv = 2 * c.num_layers * context * c.kv_size * dtype_bytes
    return {"weights": weights, "kv": kv, "total": weights + kv}


def write_results(name: str, results) -> None:
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, name), "w") as f:
            json.dump(results, f, indent=2)
