"""A block's MLP up-projection in one kernel: the RMSNorm before it, the gate_up product, and the SwiGLU after it
(Pallas, Triton lowering on GPUs), with the jnp reference.

A drafter block (32 rows) normalises the residual stream, multiplies it by the stacked weight [gate; up] [2I, K] and
takes silu(gate) * up. XLA runs the product as a GEMM whose [M, 2I] output goes to HBM, then a SwiGLU kernel reads
it back, and the norm is a kernel of its own before them. Here a program owns ``block_n`` columns of the gate half
and the same columns of the up half. It streams both weight slabs, contiguous in the [out, in] layout, through a
pipelined loop over K (Triton's software pipeline, ``num_stages`` tiles in flight) into two float32 accumulators on
tensor cores, and writes silu(gate) * up for its columns.

The norm costs no extra pass over the rows. RMSNorm(x) @ W = diag(1 / rms(x)) ((x * scale) @ W), so the loop
multiplies the raw rows by the norm's scale and accumulates each row's sum of squares from the same tiles; the
1 / rms factor scales the accumulators at the end. The residual add before the norm is left to the caller, where
XLA fuses it into the kernel that produces the sublayer's output (the split-K sum of the o projection), so each
program reads only the rows it multiplies (an L2 read, against twice that with the residual). In exact arithmetic
this is the decoder's norm-then-project; in bf16 the product's input is rounded once, after the scale, rather than
after the 1 / rms factor and again after the scale. That moves gate and up by about a unit in the last place and
the activation by a few (the SwiGLU amplifies them), about as far from the exact result as the unfused path is.

Why this shape of kernel: at Fast_dLLM_v2_1.5B's gate_up (M = 32, 2I = 17920, K = 1536) XLA's default autotuning
picks 128-column tiles (140 programs for 132 SMs), while its exhaustive search picks 64-column tiles, 3 µs faster
per layer in a dependent chain of 28 weights on an H200 (BENCHMARKS.md, issue 3). Here 32 columns of each half make
280 programs, and the norm and SwiGLU kernels (about 1.9 and 1.8 µs per layer in the drafter pass) go away. The
kernel is **off by default** (``FFJAX_SWIGLU_GEMM=on`` turns it on) until it is measured in the drafter pass.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import decode_matvec
from pallas_kernels.decode_matvec import rounded_swiglu, swiglu_product

# Whether the decoder uses the kernel for blocks of MIN_ROWS..MAX_ROWS rows on GPUs: "off" (default) or "on".
SWIGLU_GEMM_ENV = "FFJAX_SWIGLU_GEMM"
MIN_ROWS, MAX_ROWS = 2, 64  # a lone decoding row has decode_matvec; larger blocks are GEMMs XLA tiles well


@dataclasses.dataclass(frozen=True)
class SwigluConfig:
    """Launch parameters: columns of each half per program, the K chunk per loop step, warps, pipeline stages."""

    block_n: int = 32
    block_k: int = 128
    num_warps: int = 4
    num_stages: int = 4


def enabled() -> bool:
    mode = os.environ.get(SWIGLU_GEMM_ENV, "off")
    if mode not in ("on", "off"):
        raise ValueError(f"{SWIGLU_GEMM_ENV} must be on or off, not {mode!r}")
    return mode == "on"


def reference(x, weight, *, norm_scale=None, eps: float = 1e-6):
    """x [M, K]; weight [2I, K] = [gate; up] (out, in). Returns silu(gate) * up [M, I] of x times the weight, the
    product accumulated in float32 and rounded to x's dtype before the SwiGLU; with ``norm_scale`` [K], of
    RMSNorm(x) instead (``decode_matvec.reference`` with its SwiGLU)."""
    y = decode_matvec.reference(x, weight, norm_scale=norm_scale, eps=eps, swiglu=True)
    return y if norm_scale is None else y[1]


def fits(num_rows: int, half: int, width: int, config: SwigluConfig = SwigluConfig()) -> bool:
    """Whether the kernel takes a block of ``num_rows`` times a [2 * half, width] weight with ``config``."""
    return MIN_ROWS <= num_rows <= MAX_ROWS and half % config.block_n == 0 and width % config.block_k == 0


def _check(x, weight, norm_scale, config: SwigluConfig):
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1] or weight.shape[0] % 2:
        raise ValueError(f"swiglu_gemm takes x [M, K] and weight [2I, K]; got {x.shape} and {weight.shape}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must share a dtype; got {x.dtype} and {weight.dtype}")
    if norm_scale is not None and norm_scale.shape != (x.shape[1],):
        raise ValueError(f"norm_scale must be [K] = [{x.shape[1]}], got {norm_scale.shape}")
    half, width = weight.shape[0] // 2, weight.shape[1]
    c = config
    if half % c.block_n or width % c.block_k:
        raise ValueError(f"block_n {c.block_n} must divide I = {half} and block_k {c.block_k} must divide K = {width}")


def _kernel(x_ref, scale_ref, gate_ref, up_ref, out_ref, *, block_k, num_steps, has_norm, eps):
    dtype = x_ref.dtype
    rows, block_n = out_ref.shape

    def step(i, carry):
        accs, squares = carry
        chunk = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
        x = x_ref[:, chunk]
        if has_norm:
            x32 = x.astype(jnp.float32)
            squares = squares + jnp.sum(x32 * x32, axis=1)
            x = (x32 * scale_ref[chunk].astype(jnp.float32)[None, :]).astype(dtype)
        products = [lax.dot_general(x, w_ref[:, chunk], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
                    for w_ref in (gate_ref, up_ref)]
        return tuple(acc + p for acc, p in zip(accs, products)), squares

    zeros = jnp.zeros((rows, block_n), jnp.float32)
    (gate, up), squares = lax.fori_loop(0, num_steps, step, ((zeros, zeros), jnp.zeros((rows,), jnp.float32)))
    if has_norm:
        inv_rms = lax.rsqrt(squares / (num_steps * block_k) + eps)[:, None]
        gate, up = gate * inv_rms, up * inv_rms
    out_ref[...] = rounded_swiglu(gate.astype(dtype).astype(jnp.float32), up.astype(dtype).astype(jnp.float32), dtype)


@functools.partial(jax.jit, static_argnames=("eps", "config", "interpret"))
def gpu_swiglu_gemm(x, weight, *, norm_scale=None, eps: float = 1e-6, config: SwigluConfig = SwigluConfig(),
                    interpret: bool = False):
    """Same contract as ``reference``; one program per ``block_n`` columns of each half."""
    _check(x, weight, norm_scale, config)
    rows, width = x.shape
    half = weight.shape[0] // 2
    has_norm = norm_scale is not None
    padded = max(16, pl.next_power_of_2(rows))  # Triton's tiles are powers of two; zero rows give zero outputs
    norm_scale = jnp.ones((width,), x.dtype) if norm_scale is None else norm_scale
    num_tiles = half // config.block_n
    kernel = functools.partial(_kernel, block_k=config.block_k, num_steps=width // config.block_k,
                               has_norm=has_norm, eps=eps)
    out = pl.pallas_call(
        kernel,
        grid=(num_tiles,),
        in_specs=[pl.BlockSpec((padded, width), lambda j: (0, 0)), pl.BlockSpec((width,), lambda j: (0,)),
                  pl.BlockSpec((config.block_n, width), lambda j: (j, 0)),  # the gate half's rows
                  pl.BlockSpec((config.block_n, width), lambda j: (j + num_tiles, 0))],  # the up half's rows
        out_specs=pl.BlockSpec((padded, config.block_n), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((padded, half), x.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages),
        interpret=interpret,
        name="swiglu_gemm",
    )(jnp.pad(x, ((0, padded - rows), (0, 0))), norm_scale, weight, weight)
    return out[:rows]


__all__ = ["MAX_ROWS", "MIN_ROWS", "SWIGLU_GEMM_ENV", "SwigluConfig", "enabled", "fits", "gpu_swiglu_gemm",
           "reference", "swiglu_product"]
