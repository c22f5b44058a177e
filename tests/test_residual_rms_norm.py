"""residual_rms_norm: the residual add and the RMSNorm after it, as the decoder computes them.

The reference is checked against HF's RMSNorm written out (sum rounded to the dtype, float32 statistics,
normalised values rounded before the scale); the GPU kernel, under the Pallas interpreter, must agree with the
reference to float32 rounding (it sums the squares in another order), which bf16 outputs then hide.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import residual_rms_norm as norm


def inputs(seed, batch, tokens, width, dtype):
    rng = np.random.default_rng(seed)
    as_dtype = lambda shape: jnp.asarray(rng.standard_normal(shape), dtype)  # noqa: E731
    return as_dtype((batch, tokens, width)), as_dtype((batch, tokens, width)), as_dtype(width)


def test_reference_is_hf_rms_norm_of_the_rounded_sum():
    x, delta, scale = inputs(0, 2, 3, 40, jnp.bfloat16)
    total, normed = norm.reference(x, delta, scale, eps=1e-6)
    summed = (x.astype(jnp.float32) + delta.astype(jnp.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(total, summed)
    s32 = summed.astype(jnp.float32)
    hf = scale * (s32 / jnp.sqrt(jnp.mean(s32 ** 2, axis=-1, keepdims=True) + 1e-6)).astype(jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(normed, np.float32), np.asarray(hf, np.float32), rtol=1e-2)


def test_reference_pads_the_normed_rows_with_zeros():
    x, _, scale = inputs(1, 1, 1, 16, jnp.float32)
    total, normed = norm.reference(x, None, scale, eps=1e-6, rows=2)
    assert total.shape == (1, 1, 16) and normed.shape == (1, 2, 16)
    np.testing.assert_array_equal(total, x)
    np.testing.assert_array_equal(normed[:, 1], 0.0)


@pytest.mark.parametrize("batch, tokens, width, dtype, with_delta, rows", [
    (1, 1, 1536, jnp.bfloat16, True, 2),  # a 1.5B decode step, padded for the GEMM
    (2, 5, 96, jnp.float32, False, None),  # the first layer: nothing to add yet
    (1, 32, 896, jnp.bfloat16, True, None),  # a 0.5B drafter block
])
def test_gpu_kernel_equals_the_reference(batch, tokens, width, dtype, with_delta, rows):
    x, delta, scale = inputs(2, batch, tokens, width, dtype)
    delta = delta if with_delta else None
    want = norm.reference(x, delta, scale, eps=1e-6, rows=rows)
    got = norm.residual_rms_norm(x, delta, scale, eps=1e-6, rows=rows, backend="interpret")
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=1e-6, atol=1e-6)


def test_cpu_uses_the_reference():
    x, delta, scale = inputs(3, 1, 2, 8, jnp.float32)
    for g, w in zip(norm.residual_rms_norm(x, delta, scale, eps=1e-5), norm.reference(x, delta, scale, eps=1e-5)):
        np.testing.assert_array_equal(g, w)


def test_padding_rows_of_the_addend_are_never_read():
    """The addend may be a two-row GEMM output of which only the first row is real (ffjax.decoder.gemm_rows)."""
    x, delta, scale = inputs(4, 1, 1, 64, jnp.float32)
    padded = jnp.concatenate([delta, jnp.full_like(delta, jnp.nan)], axis=1)
    want = norm.reference(x, delta, scale, eps=1e-6, rows=2)
    for backend in ("reference", "interpret"):
        for g, w in zip(norm.residual_rms_norm(x, padded, scale, eps=1e-6, rows=2, backend=backend), want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
