"""Shared helpers for GPU benchmarks: model shapes, bandwidth measurement, timing, result output."""

from __future__ import annotations

import functools
import json
import math
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


def read_patterns(width: int) -> dict:
    """Ways to read a [rows, width] bf16 array once, each a function of it: XLA's reductions, XLA's
    matrix-vector products (the decode step's own pattern) and the Pallas decode matvec (GPU only)."""
    from pallas_kernels import decode_matvec
    one_row, two_rows = jnp.ones((1, width), jnp.bfloat16), jnp.ones((2, width), jnp.bfloat16)
    return {
        "xla sum over rows": lambda w: jnp.sum(w, axis=1, dtype=jnp.float32),
        "xla sum over columns": lambda w: jnp.sum(w, axis=0, dtype=jnp.float32),
        "xla sum of all": lambda w: jnp.sum(w, dtype=jnp.float32),
        "xla matvec, 1 row": lambda w: one_row @ w.T,
        "xla matvec, 2 rows": lambda w: two_rows @ w.T,
        "pallas decode_matvec": lambda w: decode_matvec.gpu_matvec(one_row, w),
    }


def read_array(num_bytes: int = 4 << 30, width: int = 8192):
    """A random bf16 [rows, width] array of about ``num_bytes`` (random, not constant: the GPU draws real power)."""
    rows = max(1, num_bytes // 2 // width)
    return jax.random.normal(jax.random.key(0, impl="rbg"), (rows, width), jnp.bfloat16)


def read_bandwidth_by_pattern(array, clock=None) -> dict:
    """{pattern: bytes/s} for each of ``read_patterns`` this platform runs (the Pallas kernel needs a GPU),
    timed by ``clock`` (default: back-to-back dispatches, so host overhead is not counted)."""
    clock = clock or (lambda fn: time_back_to_back(fn, repeats=10))
    rates = {}
    for name, pattern in read_patterns(array.shape[1]).items():
        call = jax.jit(pattern)
        try:
            rates[name] = array.nbytes / clock(functools.partial(call, array))
        except Exception:  # noqa: BLE001 - a pattern the platform cannot run is skipped, not fatal
            continue
    return rates


def measured_read_bandwidth(num_bytes: int = 4 << 30) -> float:
    """Bytes/s of the fastest of several ways to read a large array once (``read_patterns``), timed back to
    back: the practical HBM read limit. Both choices keep the limit strict, not flattering: on an H200, timing
    each call blocked on counted the host's round trip and under-read by 20-30% (benchmarks/read_bandwidth.py)."""
    array = read_array(num_bytes)
    rates = read_bandwidth_by_pattern(array)
    array.delete()
    if not rates:
        raise RuntimeError("no read pattern ran on this platform: no read bandwidth to divide by")
    return max(rates.values())


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


def time_back_to_back(run, repeats: int = 5, min_seconds: float = 0.03) -> float:
    """Median seconds per call of ``run`` (returns device arrays), timed over back-to-back dispatches: host
    overhead overlaps the device's work instead of adding to it."""
    jax.block_until_ready(run())
    start = time.perf_counter()
    jax.block_until_ready(run())
    once = time.perf_counter() - start
    calls = max(1, min(200, math.ceil(min_seconds / max(once, 1e-6))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = run()
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - start) / calls)
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
