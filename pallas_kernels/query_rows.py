"""Shared by the kernels: grouped query heads as rows of one matrix, and where each row's visible keys end.

A KV head serves ``group = Hq // Hkv`` query heads. Both kernels treat the ``Tq * group`` queries of one KV
head as the rows of a single matrix, so one read of a K/V tile feeds every query head of the group. Rows are
ordered position-major (row ``r`` is query position ``r // group``, head ``r % group`` within the group): a
tile of consecutive rows then spans few query positions, which keeps its causal frontier tight.
"""

from __future__ import annotations

import jax.numpy as jnp


def to_rows(q, num_kv_heads):
    """[B, Tq, Hq, D] -> [B, Hkv, Tq * group, D], position-major rows."""
    batch, num_queries, num_q_heads, head_dim = q.shape
    group = num_q_heads // num_kv_heads
    rows = q.reshape(batch, num_queries, num_kv_heads, group, head_dim).transpose(0, 2, 1, 3, 4)
    return rows.reshape(batch, num_kv_heads, num_queries * group, head_dim)


def from_rows(rows, num_queries):
    """Inverse of ``to_rows``: [B, Hkv, Tq * group, D] -> [B, Tq, Hq, D]."""
    batch, num_kv_heads, num_rows, head_dim = rows.shape
    group = num_rows // num_queries
    out = rows.reshape(batch, num_kv_heads, num_queries, group, head_dim).transpose(0, 2, 1, 3, 4)
    return out.reshape(batch, num_queries, num_kv_heads * group, head_dim)


def visible_key_end(query_position, block_size):
    """Exclusive end of the keys a query at ``query_position`` may see, before the ``kv_len`` bound.

    Causal: keys ``j <= pos``. Block-causal: ``j // bs <= pos // bs``, i.e. up to the end of the query's block.
    Works on Python ints and traced int32 values alike.
    """
    if block_size is None:
        return query_position + 1
    return (query_position // block_size + 1) * block_size


def check_shapes(q, k, v, q_start, kv_len):
    """Raises ValueError unless the arguments follow the ``prefix_block_attention`` contract."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"expected q [B,Tq,Hq,D] and k, v [B,S,Hkv,D]; got {q.shape}, {k.shape}, {v.shape}")
    batch, _, num_q_heads, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"q {q.shape} and k {k.shape} disagree on batch or head_dim")
    if num_q_heads % k.shape[2]:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {k.shape[2]} KV heads")
    if jnp.shape(q_start) != (batch,) or jnp.shape(kv_len) != (batch,):
        raise ValueError(f"q_start and kv_len must be [B]={batch}; got {jnp.shape(q_start)}, {jnp.shape(kv_len)}")
