"""Residual add + RMSNorm in one kernel (Pallas, Triton lowering on GPUs), with its jnp reference.

A pre-norm decoder layer adds a sublayer's output to the residual stream and normalises the sum for the next
projection. XLA:GPU runs that as an add-and-reduce kernel and a normalise kernel (plus a pad kernel for the
two-row GEMM trick of ``ffjax.decoder.project``); at batch-1 decoding each is a few microseconds of launch
and latency for a 3 KB row. This kernel does all of it per row, and can write the normalised rows padded with
zero rows, so the GEMM that follows reads them directly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import dependent_launch
from pallas_kernels.gpu_triton import _next_power_of_two


def reference(x, delta, scale, *, eps: float, rows: int | None = None):
    """(x + delta, RMSNorm(x + delta)) for x [B, T, D], delta [B, T' >= T, D] (rows past T ignored; None:
    nothing added), scale [D].

    The sum is rounded to x's dtype; the norm runs in float32 and the normalised values are rounded to the
    dtype before the scale multiplies them (HF's order). With ``rows`` > T the normalised output has ``rows``
    rows, the extra ones zero.
    """
    total = x if delta is None else x + delta[:, :x.shape[1]]
    x32 = total.astype(jnp.float32)
    normed = scale * (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)
    if rows is not None and rows > x.shape[1]:
        normed = jnp.pad(normed, ((0, 0), (0, rows - x.shape[1]), (0, 0)))
    return total, normed


def _kernel(x_ref, delta_ref, scale_ref, total_ref, normed_ref, *, eps, width, num_tokens, has_delta, pdl,
            interpret):
    token = pl.program_id(1)
    if pdl:  # every load's row comes from the token, so all of them wait for the predecessor kernel
        token = dependent_launch.triton_after_predecessor(token, interpret=interpret)
    lanes = jnp.arange(_next_power_of_two(width), dtype=jnp.int32)
    in_row = lanes < width
    row = pl.ds(0, lanes.shape[0])

    @pl.when(token >= num_tokens)
    def _padding_row():
        plgpu.store(normed_ref.at[token, row], jnp.zeros(lanes.shape, normed_ref.dtype), mask=in_row)

    @pl.when(token < num_tokens)
    def _real_row():
        x = plgpu.load(x_ref.at[token, row], mask=in_row, other=0)
        if has_delta:
            x = (x.astype(jnp.float32) + plgpu.load(delta_ref.at[token, row], mask=in_row, other=0)
                 .astype(jnp.float32)).astype(x_ref.dtype)
        plgpu.store(total_ref.at[token, row], x, mask=in_row)
        x32 = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.sum(x32 * x32) / width + eps)
        scale = plgpu.load(scale_ref.at[row], mask=in_row, other=0).astype(jnp.float32)
        normed = scale * (x32 * inv_rms).astype(x_ref.dtype).astype(jnp.float32)
        plgpu.store(normed_ref.at[token, row], normed.astype(normed_ref.dtype), mask=in_row)


@functools.partial(jax.jit, static_argnames=("eps", "rows", "interpret", "pdl"))
def gpu_residual_rms_norm(x, delta, scale, *, eps: float, rows: int | None = None, interpret: bool = False,
                          pdl: bool = False):
    """Same contract as ``reference``; one program per (batch row, token). ``pdl``: with the instructions of
    programmatic dependent launch (``dependent_launch``)."""
    batch, num_tokens, width = x.shape
    rows = max(rows or num_tokens, num_tokens)
    has_delta = delta is not None
    kernel = functools.partial(_kernel, eps=eps, width=width, num_tokens=num_tokens, has_delta=has_delta,
                               pdl=pdl, interpret=interpret)
    delta = x if delta is None else delta
    per_batch = lambda tokens: pl.BlockSpec((None, tokens, width), lambda b, t: (b, 0, 0))  # noqa: E731
    total, normed = pl.pallas_call(
        kernel,
        grid=(batch, rows),
        in_specs=[per_batch(num_tokens), per_batch(delta.shape[1]), pl.BlockSpec((width,), lambda b, t: (0,))],
        out_specs=[per_batch(num_tokens), per_batch(rows)],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((batch, rows, width), x.dtype)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="residual_rms_norm",
    )(x, delta, scale)
    return total, normed


def residual_rms_norm(x, delta, scale, *, eps: float, rows: int | None = None, backend: str | None = None):
    """The platform's implementation: the Triton kernel on GPUs, ``reference`` elsewhere (or as ``backend``
    says: "reference", "gpu_triton", or "interpret" for the kernel under the Pallas interpreter)."""
    backend = backend or ("gpu_triton" if jax.default_backend() == "gpu" else "reference")
    if backend == "reference":
        return reference(x, delta, scale, eps=eps, rows=rows)
    return gpu_residual_rms_norm(x, delta, scale, eps=eps, rows=rows, interpret=backend == "interpret",
                                 pdl=dependent_launch.enabled())


__all__ = ["reference", "gpu_residual_rms_norm", "residual_rms_norm"]
