"""Pure-jnp prefix-block attention: the ground truth every kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def visibility_mask(q_start, kv_len, num_queries, num_keys, block_size=None):
    """[B, Tq, S] bool: may query i of row b see key j?

    Causal (block_size=None): ``j <= q_start + i``; block-causal: ``j // bs <= (q_start + i) // bs``.
    Always ``j < kv_len``.
    """
    q_pos = q_start[:, None] + jnp.arange(num_queries, dtype=jnp.int32)[None, :]  # [B, Tq]
    k_pos = jnp.arange(num_keys, dtype=jnp.int32)
    if block_size is None:
        visible = k_pos[None, None, :] <= q_pos[:, :, None]
    else:
        visible = (k_pos // block_size)[None, None, :] <= (q_pos // block_size)[:, :, None]
    return visible & (k_pos[None, None, :] < kv_len[:, None, None])


def prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False):
    """Attention of a query block over a KV cache that already holds the block's own keys.

    q: [B, Tq, Hq, D]; k, v: [B, S, Hkv, D]; q_start, kv_len: [B] int32. Returns [B, Tq, Hq, D] in q's dtype.
    Grouped query heads share their K/V head without materialising repeats. ``interpret`` is accepted for
    signature parity with the kernels and ignored.
    """
    del interpret
    batch, num_queries, num_q_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    group = num_q_heads // num_kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    qg = q.reshape(batch, num_queries, num_kv_heads, group, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = visibility_mask(q_start.astype(jnp.int32), kv_len.astype(jnp.int32), num_queries, num_keys,
                           block_size)
    scores = jnp.where(mask[:, None, None, :, :], scores, -jnp.inf)
    # A query that sees no key (only padding rows do) gets zeros rather than NaN.
    max_score = jnp.max(scores, axis=-1, keepdims=True)
    max_score = jnp.where(jnp.isfinite(max_score), max_score, 0.0)
    weights = jnp.exp(scores - max_score)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(batch, num_queries, num_q_heads, head_dim).astype(q.dtype)
