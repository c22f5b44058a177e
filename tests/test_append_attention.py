"""append_attention: a new block's attention from its raw QKV projection (bias, RoPE, cache append, attention).

The reference is checked against its definition (the block's rotated keys and values land in the cache at
q_start + [0, T), nothing else changes, and the output is ``prefix_block_attention`` over that cache); the fused
GPU kernel, run by the Pallas interpreter on CPU, is checked against the reference. Tolerances as in
test_kernels.py: float32 1e-5 absolute; bfloat16 2e-2 absolute per element (a few bf16 ulps at magnitude 1).
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pallas_kernels
from pallas_kernels import reference
from pallas_kernels.gpu_append_attention import append_attention as gpu_append_attention

TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def make_inputs(seed, *, batch, tokens, num_q_heads, num_kv_heads, head_dim, cache_length, q_start, dtype,
                bias=True, stale_from_q_start=False):
    """Random projections, RoPE tables at the block's positions and caches; with ``stale_from_q_start`` the
    cache from each row's q_start on holds NaN (what a kernel must never read)."""
    rng = np.random.default_rng(seed)
    heads = num_q_heads + 2 * num_kv_heads
    qkv = jnp.asarray(rng.standard_normal((batch, tokens, heads, head_dim)), dtype)
    qkv_bias = jnp.asarray(rng.standard_normal(heads * head_dim), dtype) if bias else None
    positions = np.asarray(q_start)[:, None] + np.arange(tokens)[None, :]
    angles = positions[..., None] * (1e4 ** -(np.arange(0, head_dim, 2) / head_dim))
    cos, sin = jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)
    caches = rng.standard_normal((2, batch, cache_length, num_kv_heads, head_dim))
    if stale_from_q_start:
        for row, start in enumerate(q_start):
            caches[:, row, start:] = np.nan
    return qkv, qkv_bias, cos, sin, jnp.asarray(caches[0], dtype), jnp.asarray(caches[1], dtype)


def test_reference_appends_the_rotated_block_and_attends_over_the_cache():
    qkv, bias, cos, sin, k_cache, v_cache = make_inputs(0, batch=2, tokens=5, num_q_heads=4, num_kv_heads=2,
                                                        head_dim=16, cache_length=12, q_start=[3, 9],
                                                        dtype=jnp.float32)
    q_start, kv_len = jnp.array([3, 9], jnp.int32), jnp.array([8, 12], jnp.int32)
    out, new_k, new_v = reference.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, num_q_heads=4,
                                                   qkv_bias=bias, block_size=None)
    with_bias = qkv + bias.reshape(8, 16)
    rotated = reference.apply_rope(with_bias, cos, sin)
    for row, start in enumerate([3, 9]):
        written = min(5, 12 - start)  # row 1's last two positions fall past the cache: dropped
        np.testing.assert_array_equal(new_k[row, start:start + written], rotated[row, :written, 4:6])
        np.testing.assert_array_equal(new_v[row, start:start + written], with_bias[row, :written, 6:8])
        np.testing.assert_array_equal(new_k[row, :start], k_cache[row, :start])
        np.testing.assert_array_equal(new_v[row, start + written:], v_cache[row, start + written:])
    expected = reference.prefix_block_attention(rotated[:, :, :4], new_k, new_v, q_start, kv_len)
    np.testing.assert_allclose(out, expected, atol=1e-6)


# (batch, T, Hq, Hkv, head_dim, cache length, block_size, dtype, q_start per row, kv_len per row, bias)
CASES = [
    (1, 1, 12, 2, 64, 300, None, "bfloat16", [257], [258], True),  # a decode step, group 6
    (1, 1, 7, 1, 32, 70, None, "float32", [69], [70], False),  # the cache's last position, group 7, no bias
    (1, 32, 12, 2, 64, 200, 32, "bfloat16", [128], [160], True),  # a drafter block
    (2, 13, 4, 4, 32, 64, None, "float32", [0, 58], [13, 64], True),  # prefill from 0; a block past the end
    (2, 40, 6, 1, 32, 160, 8, "float32", [64, 5], [104, 30], True),  # kv_len inside the block
    (1, 70, 2, 1, 128, 96, 32, "float32", [0], [70], False),  # a long prompt: several block key tiles
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-T{c[1]}-{c[2]}x{c[3]}-d{c[4]}-bs{c[6]}-{c[7]}")
def test_gpu_kernel_matches_reference_and_never_reads_the_cache_from_q_start(case):
    batch, tokens, num_q_heads, num_kv_heads, head_dim, cache_length, block_size, dtype, q_start, kv_len, bias = case
    shapes = dict(batch=batch, tokens=tokens, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                  cache_length=cache_length, q_start=q_start, dtype=jnp.dtype(dtype), bias=bias)
    qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(1, **shapes)
    _, _, _, _, stale_k, stale_v = make_inputs(1, **shapes, stale_from_q_start=True)
    args = dict(num_q_heads=num_q_heads, qkv_bias=qkv_bias, block_size=block_size)
    q_start, kv_len = jnp.asarray(q_start, jnp.int32), jnp.asarray(kv_len, jnp.int32)
    want = reference.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, **args)
    got = gpu_append_attention(qkv, cos, sin, stale_k, stale_v, q_start, kv_len, interpret=True, **args)

    assert got[0].shape == want[0].shape and got[0].dtype == qkv.dtype
    np.testing.assert_allclose(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32),
                               atol=TOLERANCE[dtype])
    for got_cache, want_cache in zip(got[1:], want[1:]):  # identical up to each row's block end; stale after
        for row, start in enumerate(np.asarray(q_start)):
            end = min(start + tokens, cache_length)
            np.testing.assert_allclose(np.asarray(got_cache[row, :end], np.float32),
                                       np.asarray(want_cache[row, :end], np.float32), atol=TOLERANCE[dtype])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_gpu_kernel_matches_reference_on_random_shapes(data):
    tokens = data.draw(st.integers(1, 24), label="T")
    num_kv_heads = data.draw(st.sampled_from([1, 2]), label="Hkv")
    group = data.draw(st.sampled_from([1, 3, 6, 7]), label="group")
    block_size = data.draw(st.sampled_from([None, 8, 32]), label="block_size")
    cache_length = data.draw(st.integers(tokens, 150), label="S")
    q_start = [data.draw(st.integers(0, cache_length - 1), label=f"q_start{row}") for row in range(2)]
    kv_len = [data.draw(st.integers(0, start + tokens), label=f"kv_len{row}") for row, start in enumerate(q_start)]
    qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(
        2, batch=2, tokens=tokens, num_q_heads=group * num_kv_heads, num_kv_heads=num_kv_heads, head_dim=32,
        cache_length=cache_length, q_start=q_start, dtype=jnp.float32)
    args = dict(num_q_heads=group * num_kv_heads, qkv_bias=qkv_bias, block_size=block_size)
    q_start, kv_len = jnp.asarray(q_start, jnp.int32), jnp.asarray(kv_len, jnp.int32)
    want = reference.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, **args)
    got = gpu_append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, interpret=True, **args)
    for got_part, want_part in zip(got, want):
        np.testing.assert_allclose(got_part, want_part, atol=1e-5)


def test_dispatch_runs_the_reference_on_cpu_and_the_kernel_when_asked():
    qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(3, batch=1, tokens=3, num_q_heads=6, num_kv_heads=2,
                                                            head_dim=32, cache_length=40, q_start=[20],
                                                            dtype=jnp.float32)
    q_start, kv_len = jnp.array([20], jnp.int32), jnp.array([23], jnp.int32)
    args = (qkv, cos, sin, k_cache, v_cache, q_start, kv_len)
    on_cpu = pallas_kernels.append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias)
    interpreted = pallas_kernels.append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias, interpret=True)
    want = reference.append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias)
    for a, b, c in zip(on_cpu, interpreted, want):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_allclose(b, c, atol=1e-5)


def test_gpu_kernel_rejects_a_projection_that_does_not_split_into_the_heads():
    qkv, _, cos, sin, k_cache, v_cache = make_inputs(4, batch=1, tokens=2, num_q_heads=4, num_kv_heads=2,
                                                     head_dim=32, cache_length=16, q_start=[0], dtype=jnp.float32)
    with pytest.raises(ValueError, match="query heads"):
        gpu_append_attention(qkv, cos, sin, k_cache, v_cache, jnp.array([0]), jnp.array([2]), num_q_heads=6,
                             interpret=True)


def test_padding_rows_past_the_block_are_never_read():
    """A lone decoding row's projection arrives as a two-row GEMM output (ffjax.decoder.gemm_rows): the second
    row is padding, here NaN, and must not reach the output or the cache."""
    qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(5, batch=1, tokens=1, num_q_heads=6, num_kv_heads=2,
                                                            head_dim=32, cache_length=50, q_start=[30],
                                                            dtype=jnp.float32)
    padded = jnp.concatenate([qkv, jnp.full_like(qkv, jnp.nan)], axis=1)
    q_start, kv_len = jnp.array([30], jnp.int32), jnp.array([31], jnp.int32)
    args = dict(num_q_heads=6, qkv_bias=qkv_bias)
    want = reference.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, **args)
    for got in (reference.append_attention(padded, cos, sin, k_cache, v_cache, q_start, kv_len, **args),
                gpu_append_attention(padded, cos, sin, k_cache, v_cache, q_start, kv_len, interpret=True, **args)):
        for got_part, want_part in zip(got, want):
            np.testing.assert_allclose(got_part, want_part, atol=1e-5)


@pytest.mark.parametrize("num_splits", [1, 4], ids=["one-split", "split-merge"])
def test_out_rows_pads_the_output_with_zero_rows_for_the_next_gemm(num_splits):
    """A lone decoding row's output projection is a two-row GEMM (ffjax.decoder.gemm_rows): with out_rows=2 the
    attention writes row 1 as zeros itself (the split merge does, when there are splits), row 0 unchanged."""
    from pallas_kernels.gpu_triton import TritonConfig

    qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(7, batch=1, tokens=1, num_q_heads=6, num_kv_heads=2,
                                                            head_dim=32, cache_length=256, q_start=[200],
                                                            dtype=jnp.float32)
    args = (qkv, cos, sin, k_cache, v_cache, jnp.array([200], jnp.int32), jnp.array([201], jnp.int32))
    want, _, _ = reference.append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias)
    config = TritonConfig(block_k=32, num_splits=num_splits)
    for got in (gpu_append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias, interpret=True, config=config,
                                     out_rows=2)[0],
                pallas_kernels.append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias, out_rows=2)[0]):
        assert got.shape == (1, 2, 6, 32)
        np.testing.assert_allclose(got[:, :1], want, atol=1e-5)
        np.testing.assert_array_equal(got[:, 1:], 0.0)
    for append in (gpu_append_attention, pallas_kernels.append_attention):
        with pytest.raises(ValueError, match=r"out_rows \(0\) must be at least the block's 1 tokens"):
            append(*args, num_q_heads=6, qkv_bias=qkv_bias, out_rows=0)


def test_default_dispatch_falls_back_where_the_gpu_kernel_cannot_take_the_head_dim(monkeypatch):
    """On a GPU the default must never fail where the reference works: a head_dim the Triton kernels cannot
    tile (not a power of two, such as 48 or 80) goes through XLA and the reference attention instead."""
    from pallas_kernels import dispatch
    monkeypatch.setattr(dispatch.jax, "default_backend", lambda: "gpu")
    for head_dim in (48, 80):
        qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(6, batch=1, tokens=2, num_q_heads=2, num_kv_heads=1,
                                                                head_dim=head_dim, cache_length=8, q_start=[3],
                                                                dtype=jnp.float32)
        args = (qkv, cos, sin, k_cache, v_cache, jnp.array([3]), jnp.array([5]))
        got = pallas_kernels.append_attention(*args, num_q_heads=2, qkv_bias=qkv_bias)
        want = reference.append_attention(*args, num_q_heads=2, qkv_bias=qkv_bias)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_short_caches_get_short_pipelines_and_long_ones_keep_the_32k_plan():
    from pallas_kernels.gpu_append_attention import plan_fused
    from pallas_kernels.gpu_triton import TritonConfig, plan

    shape = dict(batch=1, num_kv_heads=2, head_dim=128, itemsize=2, sm_count=132)
    decode = plan_fused(TritonConfig(), num_rows=8, num_keys=1152, **shape)
    assert (decode.block_k, decode.num_stages, decode.num_warps) == (32, 2, 4)
    assert decode.num_splits == 1152 // 32  # one key tile per program
    block = plan_fused(TritonConfig(), num_rows=256, num_keys=1152, **shape)
    assert (block.block_m, block.num_stages) == (64, 1)
    assert plan_fused(TritonConfig(num_stages=3), num_rows=256, num_keys=1152, **shape).num_stages == 3
    long_cache = dict(num_rows=256, num_keys=32768, **shape)
    assert plan_fused(TritonConfig(), **long_cache) == plan(TritonConfig(), **long_cache)
