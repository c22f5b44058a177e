"""The transformer decoder shared by the verifier and the drafter (Qwen2 / Llama / Fast-dLLM v2 weights).

Flax modules define the parameters and the computation; they are only ever used through the pure functions
at the bottom (``decode``, ``logits``, ``init_params``), so params and caches stay plain pytrees that pass
through ``jax.jit`` and ``lax.while_loop``. Layers are stacked (one [L, ...] array per weight) and run with
``nn.scan``, so tracing and compile time do not grow with depth. The verifier and the drafter differ only in
``block_size`` (causal vs block-causal mask).

Layer loop: on XLA:GPU a rolled scan copies every layer's weight matrices out of the stack before each GEMM
(measured on H200, Qwen2.5-7B shape, one-token forward: 11.6 ms rolled vs 4.7 ms unrolled, HBM limit 4.6 ms),
because its GEMM fusions cannot read a dynamically sliced operand. ``unroll_layers`` therefore defaults to True
on GPU: the same scan fully unrolled, so every slice is static and free; params keep the same stacked layout.
Elsewhere (CPU, TPU) the rolled loop is the default. See BENCHMARKS.md for the compile-time cost.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.attention import attend
from ffjax.config import ModelConfig
from ffjax.kv_cache import KVCache

Params = Any  # nested dict of arrays, as produced by Flax


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """HF's inverse frequencies (float32), with Llama-3 scaling when the config asks for it."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float32) / config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    rs = config.rope_scaling
    if rs is not None:
        wavelen = 2 * np.pi / inv_freq
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * inv_freq / rs.factor + smooth * inv_freq
        inv_freq = np.where(wavelen > low_wavelen, inv_freq / rs.factor,
                            np.where(wavelen < high_wavelen, inv_freq, smoothed))
    return inv_freq.astype(np.float32)


def rope_tables(config: ModelConfig, positions):
    """cos, sin [B, T, head_dim // 2] in float32 for integer positions [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inverse_frequencies(config))
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotates x [B, T, H, D] by the half-split (rotate_half) convention HF uses."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale * normed.astype(self.dtype)


def _dense_init(fan_in):
    return nn.initializers.normal(stddev=fan_in ** -0.5)


class DecoderLayer(nn.Module):
    """One pre-norm transformer block; reads and writes its slice of the layer-stacked KV cache."""

    config: ModelConfig
    dtype: Any
    block_size: int | None
    attention_impl: str

    @nn.compact
    def __call__(self, carry, layer_index, rope_cos, rope_sin, write_positions, q_start, kv_len):
        c = self.config
        x, cache_k, cache_v = carry
        batch, num_tokens, _ = x.shape

        h = RMSNorm(c.rms_norm_eps, self.dtype, name="attn_norm")(x)
        qkv_width = c.q_size + 2 * c.kv_size
        qkv = h @ self.param("qkv", _dense_init(c.hidden_size), (c.hidden_size, qkv_width), self.dtype)
        if c.qkv_bias:
            qkv = qkv + self.param("qkv_bias", nn.initializers.normal(0.02), (qkv_width,), self.dtype)
        q, k, v = jnp.split(qkv, [c.q_size, c.q_size + c.kv_size], axis=-1)
        q = apply_rope(q.reshape(batch, num_tokens, c.num_heads, c.head_dim), rope_cos, rope_sin)
        k = apply_rope(k.reshape(batch, num_tokens, c.num_kv_heads, c.head_dim), rope_cos, rope_sin)
        v = v.reshape(batch, num_tokens, c.num_kv_heads, c.head_dim)

        # Write the block's keys first: the attention contract is that the cache already holds them.
        rows = jnp.arange(batch)[:, None]
        cache_k = cache_k.at[layer_index, rows, write_positions].set(k.astype(cache_k.dtype), mode="drop")
        cache_v = cache_v.at[layer_index, rows, write_positions].set(v.astype(cache_v.dtype), mode="drop")
        attn = attend(q, cache_k[layer_index], cache_v[layer_index], q_start, kv_len,
                      block_size=self.block_size, impl=self.attention_impl)
        attn = attn.reshape(batch, num_tokens, c.q_size)
        x = x + attn @ self.param("o", _dense_init(c.q_size), (c.q_size, c.hidden_size), self.dtype)

        h = RMSNorm(c.rms_norm_eps, self.dtype, name="mlp_norm")(x)
        gate_up = h @ self.param("gate_up", _dense_init(c.hidden_size),
                                 (c.hidden_size, 2 * c.intermediate_size), self.dtype)
        gate, up = jnp.split(gate_up, 2, axis=-1)
        down = self.param("down", _dense_init(c.intermediate_size), (c.intermediate_size, c.hidden_size),
                          self.dtype)
        x = x + (nn.silu(gate) * up) @ down
        return (x, cache_k, cache_v), None


class Decoder(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.bfloat16
    block_size: int | None = None  # None: causal (AR); an int: block-causal (block diffusion)
    attention_impl: str = "auto"
    unroll_layers: bool = False

    def setup(self):
        c = self.config
        self.embed = self.param("embed", nn.initializers.normal(1.0), (c.vocab_size, c.hidden_size), self.dtype)
        ScannedLayers = nn.scan(
            DecoderLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_layers,
            unroll=c.num_layers if self.unroll_layers else 1,
        )
        self.layers = ScannedLayers(c, self.dtype, self.block_size, self.attention_impl)
        self.final_norm = RMSNorm(c.rms_norm_eps, self.dtype)
        if not c.tie_word_embeddings:
            self.lm_head = self.param("lm_head", _dense_init(c.hidden_size), (c.hidden_size, c.vocab_size),
                                      self.dtype)

    def __call__(self, tokens, cache: KVCache):
        """Runs tokens [B, T] placed at positions cache.length + [0, T); returns final hidden [B, T, D], cache.

        The block's K/V are written into the cache; ``cache.length`` is left for the caller to advance (a
        drafter step re-reads the same block, a verifier keeps only the accepted prefix).
        """
        num_tokens = tokens.shape[1]
        positions = cache.length[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)[None, :]
        cos, sin = rope_tables(self.config, positions)
        x = jnp.take(self.embed, tokens, axis=0)
        (x, k, v), _ = self.layers((x, cache.k, cache.v), jnp.arange(self.config.num_layers), cos, sin,
                                   positions, cache.length, cache.length + num_tokens)
        return self.final_norm(x), cache.replace(k=k, v=v)

    def logits(self, hidden):
        """float32 logits [..., V] from final hidden states."""
        head = self.embed.T if self.config.tie_word_embeddings else self.lm_head
        return jnp.matmul(hidden, head, preferred_element_type=jnp.float32)


@functools.lru_cache(maxsize=None)
def _module(config: ModelConfig, dtype, block_size, attention_impl, unroll_layers=False) -> Decoder:
    return Decoder(config, dtype=dtype, block_size=block_size, attention_impl=attention_impl,
                   unroll_layers=unroll_layers)


def default_unroll_layers() -> bool:
    """Unroll the layer loop where a rolled loop is measured to copy weights (XLA:GPU); see module docstring."""
    return jax.default_backend() == "gpu"


def params_dtype(params: Params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def default_block_size(config: ModelConfig) -> int | None:
    """The mask a model was trained with: causal for AR models, block-causal for block diffusion."""
    return config.bd_size if config.is_dllm else None


def decode(config: ModelConfig, params: Params, tokens, cache: KVCache, *, block_size="default",
           attention_impl: str = "auto", unroll_layers: bool | None = None):
    """Pure forward: (final hidden [B, T, D], cache with the block's K/V written; length unchanged)."""
    block_size = default_block_size(config) if block_size == "default" else block_size
    unroll_layers = default_unroll_layers() if unroll_layers is None else unroll_layers
    module = _module(config, params_dtype(params), block_size, attention_impl, unroll_layers)
    return module.apply({"params": params}, tokens, cache)


def logits(config: ModelConfig, params: Params, hidden):
    module = _module(config, params_dtype(params), None, "auto")
    return module.apply({"params": params}, hidden, method=Decoder.logits)


def init_params(config: ModelConfig, rng, dtype=jnp.bfloat16) -> Params:
    """Random parameters (for tests and benchmarks at real shapes)."""
    module = _module(config, dtype, None, "reference")
    cache = KVCache.create(config, 1, 1, dtype)
    return module.init(rng, jnp.zeros((1, 1), jnp.int32), cache)["params"]


def param_shapes(config: ModelConfig, dtype=jnp.bfloat16) -> Params:
    """The params pytree as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(functools.partial(init_params, config, dtype=dtype), jax.random.key(0))
