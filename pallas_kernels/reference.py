"""Pure-jnp attention: the ground truth every kernel is tested against."""

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


def pad_token_rows(out, rows: int | None):
    """out [B, T, ...] with zero token rows appended up to ``rows`` (None: unchanged): the padding rows of the
    GEMM that reads an attention output (``append_attention``'s ``out_rows``)."""
    if rows is None:
        return out
    return jnp.pad(out, ((0, 0), (0, rows - out.shape[1])) + ((0, 0),) * (out.ndim - 2))


def apply_rope(x, cos, sin):
    """Rotates x [B, T, H, D] by the half-split (rotate_half) convention HF uses; cos, sin [B, T, D // 2]
    float32. Computed in float32, returned in x's dtype."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def split_heads(qkv, cos, sin, *, num_q_heads, num_kv_heads, qkv_bias=None):
    """A block's raw projections qkv [B, T' >= T, Hq + 2 Hkv, D] (T from cos; rows past it are GEMM padding) plus
    their bias (qkv_bias [(Hq + 2 Hkv) * D], if any), split into heads, with q and k rotated by RoPE (cos, sin
    [B, T, D // 2] float32). Returns q [B, T, Hq, D], k and v [B, T, Hkv, D]."""
    qkv = qkv[:, :cos.shape[1]]
    if qkv_bias is not None:
        qkv = qkv + qkv_bias.reshape(qkv.shape[2:])
    q, k, v = jnp.split(qkv, [num_q_heads, num_q_heads + num_kv_heads], axis=2)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def rotate_and_append(qkv, cos, sin, k_cache, v_cache, q_start, *, num_q_heads, qkv_bias=None):
    """``split_heads``, then k, v written into the cache [B, S, Hkv, D] at ``q_start + [0, T)`` (positions past
    S dropped). Returns (rotated q [B, T, Hq, D], k_cache, v_cache)."""
    q, k, v = split_heads(qkv, cos, sin, num_q_heads=num_q_heads, num_kv_heads=k_cache.shape[2], qkv_bias=qkv_bias)
    rows = jnp.arange(qkv.shape[0])[:, None]
    positions = q_start[:, None] + jnp.arange(q.shape[1], dtype=jnp.int32)[None, :]
    k_cache = k_cache.at[rows, positions].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[rows, positions].set(v.astype(v_cache.dtype), mode="drop")
    return q, k_cache, v_cache


def append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, *, num_q_heads, qkv_bias=None,
                     block_size=None, scale=None, interpret=False):
    """A new block's attention from its raw projections: ``rotate_and_append``, then ``prefix_block_attention``.

    qkv: [B, T, Hq + 2 Hkv, D] before RoPE; cos, sin: [B, T, D // 2] float32 at positions ``q_start + [0, T)``;
    k_cache, v_cache: [B, S, Hkv, D]. Returns (out [B, T, Hq, D], k_cache, v_cache).
    """
    del interpret
    q, k_cache, v_cache = rotate_and_append(qkv, cos, sin, k_cache, v_cache, q_start, num_q_heads=num_q_heads,
                                            qkv_bias=qkv_bias)
    out = prefix_block_attention(q, k_cache, v_cache, q_start, kv_len, block_size=block_size, scale=scale)
    return out, k_cache, v_cache
