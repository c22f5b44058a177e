"""Prefix-block attention on TPUs: a Pallas kernel for Mosaic TPU. NOT YET RUN ON TPU HARDWARE.

It has only been checked in Pallas interpret mode on CPU (tests/test_kernels.py). Expect Mosaic to reject or
mis-tile something on first contact with a real chip; head_dim must be a multiple of 128 there (K/V blocks
are head_dim wide in the lane dimension), while interpret mode also accepts 64.

Work decomposition: grid (batch, KV head, query-row tile, key tile). A TPU core runs its grid sequentially, so
unlike the GPU kernel there is no split of the keys and no merge step: the key tiles are the innermost,
"arbitrary" axis, and the online-softmax state lives in VMEM scratch across them. ``q_start`` and ``kv_len``
are scalar-prefetched so that the K/V index map can stop at the tile's last visible key: grid steps past it
repeat the previous block index, which Pallas does not fetch again, and the body skips them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.query_rows import check_shapes, from_rows, to_rows, visible_key_end

LANES = 128


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _floor_div(numerator, divisor: int):
    """Exact floor(numerator / divisor) for int32 vectors in [0, 2**22), without vector integer division.

    (n + 0.5) / d lies strictly between floor(n / d) and the next integer, at least 0.5 / d away from both,
    far more than the float32 rounding of the product.
    """
    return ((numerator.astype(jnp.float32) + 0.5) * (1.0 / divisor)).astype(jnp.int32)


def _any_end(q_start, kv_len, last_row, group, block_size):
    """Exclusive end of the keys any row up to ``last_row`` may see (scalars)."""
    return jnp.maximum(jnp.minimum(visible_key_end(q_start + last_row // group, block_size), kv_len), 0)


def _kernel(q_start_ref, kv_len_ref, q_ref, k_ref, v_ref, o_ref, acc_ref, max_ref, sum_ref, *, scale,
            block_size, group, num_rows, block_m, block_k, precision):
    b, tile, key_tile = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    q_start, kv_len = q_start_ref[b], kv_len_ref[b]
    first_row = tile * block_m
    last_row = jnp.minimum(first_row + block_m, num_rows) - 1
    any_end = _any_end(q_start, kv_len, last_row, group, block_size)

    @pl.when(key_tile == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)
        max_ref[...] = jnp.full_like(max_ref, -jnp.inf)
        sum_ref[...] = jnp.zeros_like(sum_ref)

    @pl.when(key_tile * block_k < any_end)
    def _accumulate():
        shape = (block_m, block_k)
        keys = key_tile * block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
        rows = first_row + lax.broadcasted_iota(jnp.int32, shape, 0)
        positions = q_start + _floor_div(rows, group)
        if block_size is None:
            row_end = positions + 1
        else:
            row_end = (_floor_div(positions, block_size) + 1) * block_size
        visible = keys < jnp.minimum(row_end, kv_len)

        scores = lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32) * scale
        scores = jnp.where(visible, scores, -jnp.inf)
        # Cache rows at or past kv_len (and past the array end, in a partial last block) hold arbitrary
        # values: zero them so that 0 * garbage cannot turn into NaN.
        key_is_cached = (key_tile * block_k + lax.broadcasted_iota(jnp.int32, (block_k, 1), 0)) < kv_len
        v = jnp.where(key_is_cached, v_ref[...], jnp.zeros((), v_ref.dtype))

        prev_max = max_ref[...]  # [block_m, LANES], every lane equal
        new_max = jnp.maximum(prev_max, jnp.max(scores, axis=1, keepdims=True))
        # A row that has seen nothing yet keeps max -inf; exponentiate against 0 so -inf - -inf cannot occur.
        pivot = jnp.where(new_max == -jnp.inf, 0.0, new_max)
        correction = jnp.exp(prev_max - pivot)
        probs = jnp.exp(scores - jnp.tile(pivot, (1, block_k // LANES)))
        sum_ref[...] = sum_ref[...] * correction + jnp.sum(probs, axis=1, keepdims=True)
        max_ref[...] = new_max
        head_dim = acc_ref.shape[-1]
        acc_correction = jnp.tile(correction, (1, pl.cdiv(head_dim, LANES)))[:, :head_dim]
        acc_ref[...] = acc_ref[...] * acc_correction + lax.dot_general(
            probs.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision,
            preferred_element_type=jnp.float32)

    @pl.when(key_tile == pl.num_programs(3) - 1)
    def _finish():
        head_dim = acc_ref.shape[-1]
        total = sum_ref[...]
        inverse = jnp.where(total > 0.0, 1.0 / jnp.where(total > 0.0, total, 1.0), 0.0)  # unseen rows: zeros
        o_ref[...] = (acc_ref[...] * jnp.tile(inverse, (1, pl.cdiv(head_dim, LANES)))[:, :head_dim]
                      ).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_size", "scale", "interpret", "block_m", "block_k"))
def prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False,
                           block_m=None, block_k=128):
    """Same contract as ``pallas_kernels.reference.prefix_block_attention``; runs the Mosaic TPU kernel."""
    check_shapes(q, k, v, q_start, kv_len)
    batch, num_queries, num_q_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    if block_k % LANES:
        raise ValueError(f"block_k must be a multiple of {LANES}, got {block_k}")
    group = num_q_heads // num_kv_heads
    num_rows = num_queries * group
    sublanes = 16 if k.dtype.itemsize == 2 else 8  # q is cast to the cache's dtype below
    block_m = block_m or min(256, _round_up(num_rows, sublanes))
    if block_m >= 256 and num_rows > 256:
        block_m = 128  # a long block: smaller row tiles waste less on the causal frontier
    num_tiles = pl.cdiv(num_rows, block_m)
    num_key_tiles = pl.cdiv(num_keys, block_k)
    scale = head_dim ** -0.5 if scale is None else scale
    out_dtype = q.dtype
    q = q.astype(k.dtype)  # the products run in the cache's dtype; a no-op when they agree
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None

    q_rows = to_rows(q, num_kv_heads)
    q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, num_tiles * block_m - num_rows), (0, 0)))
    # [B, S, Hkv * D] is a free view; a [block_k, head_dim] block of it is one KV head's keys.
    k_flat = k.reshape(batch, num_keys, num_kv_heads * head_dim)
    v_flat = v.reshape(batch, num_keys, num_kv_heads * head_dim)
    kv_len = jnp.minimum(jnp.asarray(kv_len, jnp.int32), num_keys)

    def kv_index(b, h, tile, key_tile, q_start_ref, kv_len_ref):
        last_row = jnp.minimum((tile + 1) * block_m, num_rows) - 1
        any_end = _any_end(q_start_ref[b], kv_len_ref[b], last_row, group, block_size)
        # Past the last visible key, keep pointing at the last needed block: it is not fetched again.
        return b, jnp.minimum(key_tile, jnp.maximum(pl.cdiv(any_end, block_k) - 1, 0)), h

    def row_index(b, h, tile, key_tile, q_start_ref, kv_len_ref):
        return b, h, tile, 0

    kernel = functools.partial(_kernel, scale=scale, block_size=block_size, group=group, num_rows=num_rows,
                               block_m=block_m, block_k=block_k, precision=precision)
    out_rows = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(batch, num_kv_heads, num_tiles, num_key_tiles),
            in_specs=[
                pl.BlockSpec((None, None, block_m, head_dim), row_index),
                pl.BlockSpec((None, block_k, head_dim), kv_index),
                pl.BlockSpec((None, block_k, head_dim), kv_index),
            ],
            out_specs=pl.BlockSpec((None, None, block_m, head_dim), row_index),
            scratch_shapes=[
                pltpu.VMEM((block_m, head_dim), jnp.float32),
                pltpu.VMEM((block_m, LANES), jnp.float32),
                pltpu.VMEM((block_m, LANES), jnp.float32),
            ],
        ),
        out_shape=jax.ShapeDtypeStruct(q_rows.shape, out_dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="prefix_block_attention_tpu",
    )(jnp.asarray(q_start, jnp.int32), kv_len, q_rows, k_flat, v_flat)
    return from_rows(out_rows[:, :, :num_rows], num_queries)


__all__ = ["prefix_block_attention"]
