"""The Mosaic GPU (Hopper) prefix-block attention kernel, ``pallas_kernels.gpu_mosaic``.

On CPU it runs in Mosaic GPU's interpreter: its pipeline, barriers, masks, KV splits and merge are the kernel's
own code, its two tensor-core products ``dot_general`` on the same tiles (the interpreter has no WGMMA on a
transposed or register operand). The tensor-core lowering is checked here for CUDA and its numbers on the GPU
(``benchmarks/kernels_gpu_check.py --mosaic-only``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import gpu_mosaic, reference

# (batch, Tq, Hq, Hkv, head_dim, cache length, block_size, q_start per row, kv_len per row, config)
CASES = [
    # two compute warpgroups and their schedule barrier (66 rows: the second mostly padding), 2 KV splits,
    # block-causal, one row that sees no key
    (2, 11, 6, 1, 64, 256, 8, [150, 0], [161, 0], gpu_mosaic.MosaicConfig(block_kv=64, num_splits=2)),
    # one warpgroup, causal, GQA 7, head_dim 128, kv_len inside the block, the split count chosen
    (1, 6, 7, 1, 128, 256, None, [130], [134], gpu_mosaic.MosaicConfig(compute_warpgroups=1)),
]


def inputs(case, dtype=jnp.bfloat16, seed=0, past_kv_len=0.0):
    """q, k, v, q_start, kv_len for a case; the caches hold ``past_kv_len`` from each row's kv_len on."""
    batch, num_queries, num_q_heads, num_kv_heads, head_dim, num_keys = case[:6]
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, num_queries, num_q_heads, head_dim)), dtype)
    past = np.arange(num_keys)[None, :, None, None] >= np.asarray(case[8])[:, None, None, None]
    k, v = (jnp.asarray(np.where(past, past_kv_len, rng.standard_normal((batch, num_keys, num_kv_heads, head_dim))),
                        dtype) for _ in range(2))
    return q, k, v, jnp.asarray(case[7], jnp.int32), jnp.asarray(case[8], jnp.int32)


def reference_f32(q, k, v, q_start, kv_len, block_size):
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        return reference.prefix_block_attention(up(q), up(k), up(v), q_start, kv_len, block_size=block_size)


@pytest.mark.parametrize("case", CASES, ids=["two-warpgroups-block-causal", "one-warpgroup-causal"])
def test_interpreted_kernel_matches_the_reference_whatever_finite_values_lie_past_kv_len(case):
    q, k, v, q_start, kv_len = inputs(case, past_kv_len=3e4)  # read with probability zero: no effect
    out = gpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, block_size=case[6], interpret=True,
                                            config=case[9])
    want = reference_f32(*inputs(case), case[6])
    assert out.shape == q.shape and out.dtype == q.dtype
    # bf16 inputs, probabilities rounded to bf16 before the PV product: relative error ~2^-8.
    error = float(jnp.linalg.norm(out.astype(jnp.float32) - want) / jnp.linalg.norm(want))
    assert error < 1e-2
    assert not np.asarray(out[1:] if case[0] > 1 else out[:0]).any()  # a row that sees no key: zeros


def test_kernel_lowers_to_warp_specialised_wgmmas_for_cuda():
    q = jax.ShapeDtypeStruct((1, 32, 28, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 4096, 4, 128), jnp.bfloat16)
    rows = jax.ShapeDtypeStruct((1,), jnp.int32)
    text = (jax.jit(lambda *a: gpu_mosaic.prefix_block_attention(*a))
            .trace(q, kv, kv, rows, rows).lower(lowering_platforms=("cuda",)).as_text())
    assert "custom_call @mosaic_gpu" in text
    assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16" in text  # S = Q K^T and O += P V


@pytest.mark.parametrize("dtype,num_keys", [(jnp.float32, 256), (jnp.bfloat16, 200)])
def test_dispatch_uses_the_triton_kernel_where_mosaic_cannot(dtype, num_keys):
    case = (1, 3, 4, 2, 64, num_keys, None, [100], [103], None)
    assert not gpu_mosaic.supports((1, 3, 4, 64), (1, num_keys, 2, 64), dtype)
    q, k, v, q_start, kv_len = inputs(case, dtype)
    out = pallas_kernels.prefix_block_attention(q, k, v, q_start, kv_len, interpret=True, backend="gpu_mosaic")
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference_f32(q, k, v, q_start, kv_len, None)),
                               atol=2e-2 if dtype == jnp.bfloat16 else 1e-5)


def test_shapes_it_cannot_take_are_refused_by_name():
    q, k, v, q_start, kv_len = inputs((1, 3, 4, 2, 64, 200, None, [100], [103], None))
    with pytest.raises(ValueError, match="cache length a multiple of 128"):
        gpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, interpret=True)


QWEN_7B_CACHE = lambda keys: (1, keys, 4, 128)  # noqa: E731  (batch, keys, KV heads, head_dim)
QWEN_1_5B_CACHE = lambda keys: (1, keys, 2, 128)  # noqa: E731


@pytest.mark.parametrize("num_tokens,cache,dtype,hopper,expected", [
    (32, QWEN_7B_CACHE(16384), jnp.bfloat16, True, "gpu_mosaic"),  # a verify over 16.8 MB of K/V per layer
    (16, QWEN_7B_CACHE(8192), jnp.bfloat16, True, "gpu_mosaic"),
    (32, QWEN_1_5B_CACHE(16384), jnp.bfloat16, True, "gpu_mosaic"),  # a drafter block over 16k keys
    (32, QWEN_1_5B_CACHE(8192), jnp.bfloat16, True, "gpu_triton"),  # 8.4 MB: Triton measured faster
    (64, QWEN_7B_CACHE(4096), jnp.bfloat16, True, "gpu_triton"),
    (64, QWEN_7B_CACHE(16384), jnp.bfloat16, True, "gpu_mosaic"),
    (1, QWEN_7B_CACHE(32768), jnp.bfloat16, True, "gpu_triton"),  # a decoding row: the fused kernel
    (15, QWEN_7B_CACHE(32768), jnp.bfloat16, True, "gpu_triton"),
    (65, QWEN_7B_CACHE(16384), jnp.bfloat16, True, "gpu_triton"),  # longer blocks (prefill): not measured
    (4096, QWEN_7B_CACHE(16384), jnp.bfloat16, True, "gpu_triton"),
    (32, QWEN_7B_CACHE(16384), jnp.bfloat16, False, "gpu_triton"),  # not Hopper: no WGMMA
    (32, QWEN_7B_CACHE(16384), jnp.float32, True, "gpu_triton"),  # Mosaic takes bf16/f16 only
    (32, QWEN_7B_CACHE(16400), jnp.bfloat16, True, "gpu_triton"),  # not whole 128-key tiles
])
def test_default_gpu_append_kernel_is_mosaic_only_for_long_blocks_over_large_caches(num_tokens, cache, dtype,
                                                                                      hopper, expected):
    assert pallas_kernels.dispatch.gpu_append_backend(num_tokens, cache, dtype, hopper=hopper) == expected


@pytest.mark.parametrize("num_tokens,impl,expected", [
    (32, "auto", "mosaic"),  # a verify block over 16.8 MB of K/V per layer
    (1, "auto", "fused triton"),  # a decoding row
    (32, "gpu_triton", "fused triton"),  # the switch back to Triton everywhere
    (1, "gpu_mosaic", "mosaic"),
])
def test_the_decoder_s_append_attention_takes_the_kernel_the_size_rule_picks(monkeypatch, num_tokens, impl,
                                                                             expected):
    """Traced as on a Hopper GPU, with both kernels stood in for: which one the dispatch calls."""
    from ffjax import attention
    from pallas_kernels import dispatch, gpu_append_attention

    called = []

    def fused(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, *, num_q_heads, **kwargs):
        called.append("fused triton")
        return jnp.zeros((*qkv.shape[:2], num_q_heads, qkv.shape[-1]), qkv.dtype), k_cache, v_cache

    def mosaic(q, k, v, q_start, kv_len, **kwargs):
        called.append("mosaic")
        return jnp.zeros_like(q)

    monkeypatch.setattr(dispatch, "default_backend", lambda interpret=False: "gpu_triton")
    monkeypatch.setattr(dispatch, "hopper_gpu", lambda: True)
    monkeypatch.setattr(gpu_append_attention, "append_attention", fused)
    monkeypatch.setattr(gpu_mosaic, "prefix_block_attention", mosaic)
    cache = jax.ShapeDtypeStruct(QWEN_7B_CACHE(16384), jnp.bfloat16)
    qkv = jax.ShapeDtypeStruct((1, num_tokens, 28 + 2 * 4, 128), jnp.bfloat16)
    cos = jax.ShapeDtypeStruct((1, num_tokens, 64), jnp.float32)
    rows = jax.ShapeDtypeStruct((1,), jnp.int32)
    jax.eval_shape(lambda *a: attention.append_and_attend(*a, num_q_heads=28, block_size=None, impl=impl),
                   qkv, cos, cos, cache, cache, rows, rows)
    assert called == [expected]
