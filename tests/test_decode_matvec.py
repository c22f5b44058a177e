"""A decoding row's projection kernel (pallas_kernels.decode_matvec): the reference against its definition,
the kernel (Pallas interpreter) against the reference, and bad shapes refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pallas_kernels import decode_matvec as dm


def inputs(seed, rows, width, num_out, *, dtype, norm, residual, swiglu):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((rows, width)), dtype)
    weight = jnp.asarray(rng.standard_normal((num_out * (2 if swiglu else 1), width)) / width ** 0.5, dtype)
    extra = dict(swiglu=swiglu)
    if norm:
        extra["norm_scale"] = jnp.asarray(1 + 0.2 * rng.standard_normal(width), dtype)
    if residual:
        extra["residual"] = jnp.asarray(rng.standard_normal((rows, width)), dtype)
    return x, weight, extra


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def test_reference_is_norm_then_product_then_swiglu_in_float64():
    x, weight, extra = inputs(0, 1, 24, 10, dtype=jnp.float32, norm=True, residual=True, swiglu=True)
    total, y = dm.reference(x, weight, eps=1e-6, **extra)
    s = np.asarray(x, np.float64) + np.asarray(extra["residual"], np.float64)
    h = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + 1e-6) * np.asarray(extra["norm_scale"], np.float64)
    gate, up = np.split(h @ np.asarray(weight, np.float64).T, 2, axis=-1)
    np.testing.assert_allclose(total, s, rtol=1e-6)
    np.testing.assert_allclose(y, gate / (1 + np.exp(-gate)) * up, rtol=1e-4, atol=1e-5)


CASES = [  # rows, width, num_out, norm, residual, swiglu
    (1, 96, 40, False, False, False),  # out features not a multiple of the tile
    (1, 1536, 64, True, True, False),  # norm + residual (the qkv projection)
    (1, 1536, 48, True, True, True),  # norm + residual + SwiGLU (gate_up)
    (1, 3000, 24, False, False, False),  # several chunks, the last one partial (down)
    (1, 200, 36, True, False, True),  # norm without residual (a model's first layer)
    (2, 130, 20, True, True, False),  # more than one row
]


@pytest.mark.parametrize("unroll", [False, True], ids=["chunk_loop", "unrolled"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rows,width,num_out,norm,residual,swiglu", CASES)
def test_kernel_matches_reference(rows, width, num_out, norm, residual, swiglu, dtype, unroll):
    x, weight, extra = inputs(1, rows, width, num_out, dtype=dtype, norm=norm, residual=residual, swiglu=swiglu)
    expected = as_tuple(dm.reference(x, weight, **extra))
    got = as_tuple(dm.gpu_matvec(x, weight, interpret=True, config=dm.MatvecConfig(block_k=512, unroll=unroll),
                                 **extra))
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert all(g.dtype == dtype for g in got)
    # float32: summation order only. bf16: the output is rounded to 8 bits, so one unit in its last place.
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=1e-2, atol=1e-2)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), **tolerance)


@settings(max_examples=8, deadline=None)
@given(width=st.integers(1, 700), num_out=st.integers(1, 70), block_n=st.sampled_from([2, 4, 8]),
       block_k=st.sampled_from([64, 128, 256]), norm=st.booleans(), swiglu=st.booleans(), unroll=st.booleans())
def test_kernel_matches_reference_for_any_shape_and_tiling(width, num_out, block_n, block_k, norm, swiglu, unroll):
    x, weight, extra = inputs(width, 1, width, num_out, dtype=jnp.float32, norm=norm, residual=norm,
                              swiglu=swiglu)
    config = dm.MatvecConfig(block_n=block_n, block_k=block_k, unroll=unroll)
    got = as_tuple(dm.gpu_matvec(x, weight, interpret=True, config=config, **extra))
    for g, e in zip(got, as_tuple(dm.reference(x, weight, **extra))):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_residual_rows_past_the_input_rows_are_ignored():
    """The decoder passes a GEMM's output with its padding row as the residual of a one-row norm."""
    x, weight, extra = inputs(3, 1, 64, 16, dtype=jnp.float32, norm=True, residual=False, swiglu=False)
    padded = jnp.concatenate([x * 0.5, jnp.full_like(x, jnp.nan)])
    expected = dm.reference(x, weight, residual=x * 0.5, norm_scale=extra["norm_scale"])
    for got in (dm.reference(x, weight, residual=padded, norm_scale=extra["norm_scale"]),
                dm.gpu_matvec(x, weight, residual=padded, norm_scale=extra["norm_scale"], interpret=True)):
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_plan_fills_only_what_is_unset():
    planned = dm.plan(dm.MatvecConfig(block_n=8), num_out=1536, width=8960, swiglu=False)
    assert planned.block_n == 8 and planned.block_k and planned.num_warps and planned.num_stages
    assert dm.plan(dm.MatvecConfig(), num_out=10, width=100, swiglu=False).block_k == 128


@pytest.mark.parametrize("width", [896, 1536, 2048, 3584, 4096])
@pytest.mark.parametrize("norm,swiglu", [(True, False), (False, False), (True, True)], ids=["qkv", "o", "gate_up"])
def test_unrolled_plans_hold_a_programs_weights_in_registers(width, norm, swiglu):
    """An unrolled program keeps all its weight values in registers; past ~192 a thread they spill (a 7B gate_up
    plan that did took 320 µs instead of 80 on an H200)."""
    planned = dm.plan(dm.MatvecConfig(), num_out=4096, width=width, swiglu=swiglu, has_norm=norm)
    assert planned.unroll
    chunks = -(-width // planned.block_k)
    values = planned.block_n * (2 if swiglu else 1) * chunks * planned.block_k
    assert values / (32 * planned.num_warps) <= dm._UNROLLED_VALUES


def test_mismatched_weight_is_refused():
    x = jnp.ones((1, 16))
    with pytest.raises(ValueError, match="does not fit"):
        dm.gpu_matvec(x, jnp.ones((8, 12)), interpret=True)
    with pytest.raises(ValueError, match="gate; up"):
        dm.gpu_matvec(x, jnp.ones((7, 16)), swiglu=True, interpret=True)


def test_default_dispatch_on_cpu_is_the_reference():
    x, weight, extra = inputs(2, 1, 32, 8, dtype=jnp.float32, norm=True, residual=False, swiglu=False)
    if jax.default_backend() == "cpu":
        for g, e in zip(dm.matvec(x, weight, **extra), dm.reference(x, weight, **extra)):
            np.testing.assert_array_equal(g, e)
