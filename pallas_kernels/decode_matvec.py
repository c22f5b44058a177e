"""A decoding row's projections: one row times a weight stored [out, in], with the layer's residual add and
RMSNorm before the product and its SwiGLU after it, in one kernel (Pallas, Triton lowering on GPUs), with the
jnp reference.

At batch-1 decoding a projection reads its whole weight to produce one row: it is a matrix-vector product,
bound by HBM bandwidth. XLA:GPU runs it as a split-K GEMM plus a reduction kernel, with the norm before it, the
SwiGLU after it and a padding row in kernels of their own (about 14 kernels per layer at the Qwen2.5-1.5B
shape). Here a program owns ``block_n`` output features: it reads their weight
rows, contiguous in the [out, in] layout, in ``block_k`` chunks and reduces them against the input row, which
it normalises itself (each program re-reads the row from L2: a few KB). No split-K, so no reduction kernel;
the norm's residual sum is written by the first program. A layer becomes six kernels: norm+qkv, attention and
the merge of its KV splits, o, norm+gate_up+SwiGLU, down.

Measured on an H200 (BENCHMARKS.md, issue 2): faster than XLA where its GEMMs are small (1.5B qkv and o: 4.1 and
3.0 µs against 16 and 14), about even at the 1.5B MLP (gate_up 19 µs with its norm and SwiGLU against XLA's
15-16 µs GEMM plus norm, SwiGLU and split-K kernels), slower where XLA already streams a large weight near full
bandwidth (7B), so the decoder uses it up to hidden size 2048 (``ffjax.decoder.matvec_projections``). A
tensor-core variant (the row padded to a 16-column MMA operand, Triton pipelining the weight tiles) measured
about twice as slow at every 1.5B projection and was dropped (commit ``b49c98b``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import residual_rms_norm as rms
from pallas_kernels.gpu_triton import _next_power_of_two


def reference(x, weight, *, residual=None, norm_scale=None, eps: float = 1e-6, swiglu: bool = False):
    """x [M, K]; weight [N, K] (out, in). Returns y [M, N] (N // 2 with ``swiglu``), or (x + residual, y) when
    ``norm_scale`` [K] is given.

    With ``norm_scale`` the product's input is RMSNorm(x + residual) (``residual`` [M' >= M, K], rows past M
    ignored, or None), rounded as ``residual_rms_norm.reference`` rounds it. The product accumulates in float32 and is rounded to x's dtype.
    ``swiglu``: the weight is [gate; up] stacked along N, and y = silu(gate) * up of the rounded halves, as the
    decoder's MLP computes it.
    """
    total = None
    if norm_scale is not None:
        residual = None if residual is None else residual[None, :x.shape[0]]
        total, x = rms.reference(x[None], residual, norm_scale, eps=eps)
        total, x = total[0], x[0]
    y = jnp.matmul(x, weight.T, preferred_element_type=jnp.float32).astype(x.dtype)
    if swiglu:
        gate, up = jnp.split(y, 2, axis=-1)
        y = jax.nn.silu(gate) * up
    return y if total is None else (total, y)


@dataclasses.dataclass(frozen=True)
class MatvecConfig:
    """Launch parameters; ``None`` fields are chosen by ``plan`` from the shapes."""

    block_n: int | None = None  # output features per program
    block_k: int | None = None  # input features per loop step
    num_warps: int | None = None
    num_stages: int | None = None


def plan(config: MatvecConfig, *, num_out: int, width: int, swiglu: bool, has_norm: bool = False) -> MatvecConfig:
    """Fills the ``None`` fields with what was fastest on an H200 at each Qwen2.5-1.5B projection
    (``benchmarks/matvec_bench.py --sweep`` over 2-8 output features, 512-2048-feature chunks and 2-8 warps per
    program; BENCHMARKS.md, issue 2), with a few output features per program (hundreds to thousands of small
    programs keep every SM's loads in flight):

    * rows up to 2048 wide: the whole row in one chunk, so a program requests all its weights at once; with the
      norm (qkv) 4 features on 2 warps, without it (o) 2 on 8 warps; with SwiGLU (gate_up, two weight rows per
      output) 2 features, 512-feature chunks, 2 warps;
    * wider rows (down): 4 features, 1024-feature chunks, 8 warps, no pipelining.

    Not tuned for wider models: at the 7B shape the SwiGLU variant ran 5x slower than XLA (310 vs 65 µs)."""
    short = width <= 2048
    if short and swiglu:
        block_n, block_k, num_warps = 2, 512, 2
    elif short:
        block_n, block_k, num_warps = (4, 2048, 2) if has_norm else (2, 2048, 8)
    else:
        block_n, block_k, num_warps = 4, 2048 if swiglu else 1024, 4 if swiglu else 8
    return MatvecConfig(
        block_n=config.block_n or block_n,
        block_k=config.block_k or min(block_k, _next_power_of_two(width)),
        num_warps=config.num_warps or num_warps,
        num_stages=config.num_stages or (3 if short else 1))


def _kernel(x_ref, residual_ref, scale_ref, w_ref, *out_refs, eps, width, num_out, block_n, block_k, has_norm,
            has_residual, swiglu):
    tile, row = pl.program_id(0), pl.program_id(1)
    num_chunks = pl.cdiv(width, block_k)
    first = tile * block_n
    out_ok = first + jnp.arange(block_n, dtype=jnp.int32) < num_out
    dtype = x_ref.dtype

    def input_chunk(i):
        """The product's input over features [i * block_k, +block_k) before the norm, rounded to the dtype."""
        ok = i * block_k + jnp.arange(block_k, dtype=jnp.int32) < width
        x = plgpu.load(x_ref.at[row, pl.ds(i * block_k, block_k)], mask=ok, other=0)
        if has_residual:
            x = (x.astype(jnp.float32) + plgpu.load(residual_ref.at[row, pl.ds(i * block_k, block_k)], mask=ok,
                                                    other=0).astype(jnp.float32)).astype(dtype)
        return x, ok

    def weight_chunk(i):
        """The program's weight rows (gate and up rows with SwiGLU) over features [i * block_k, +block_k), kept
        in the weight's dtype; past the last chunk everything is masked (no memory traffic)."""
        ok = (i * block_k + jnp.arange(block_k, dtype=jnp.int32)) < width
        mask = out_ok[:, None] & ok[None, :]
        firsts = (first, num_out + first) if swiglu else (first,)
        return tuple(plgpu.load(w_ref.at[pl.ds(f, block_n), pl.ds(i * block_k, block_k)], mask=mask, other=0)
                     for f in firsts)

    # The first weight chunk is requested before anything else: its HBM latency overlaps the norm's pass over
    # the input row (an L2 read), and each step requests the next chunk before reducing the current one.
    upcoming = weight_chunk(0)

    inv_rms = None
    if has_norm:
        total_ref = out_refs[0]

        def sum_of_squares(i, acc):
            x, ok = input_chunk(i)
            plgpu.store(total_ref.at[row, pl.ds(i * block_k, block_k)], x, mask=ok & (tile == 0))
            x32 = x.astype(jnp.float32)
            return acc + jnp.sum(x32 * x32)

        inv_rms = lax.rsqrt(lax.fori_loop(0, num_chunks, sum_of_squares, jnp.float32(0.0)) / width + eps)

    def step(i, carry):
        accs, current = carry
        upcoming = weight_chunk(i + 1)
        x, ok = input_chunk(i)
        if has_norm:
            scale = plgpu.load(scale_ref.at[pl.ds(i * block_k, block_k)], mask=ok, other=0).astype(jnp.float32)
            x = (scale * (x.astype(jnp.float32) * inv_rms).astype(dtype).astype(jnp.float32)).astype(dtype)
        x = x.astype(jnp.float32)[None, :]
        accs = tuple(acc + w.astype(jnp.float32) * x for acc, w in zip(accs, current))
        return accs, upcoming

    zeros = tuple(jnp.zeros((block_n, block_k), jnp.float32) for _ in upcoming)
    accs, _ = lax.fori_loop(0, num_chunks, step, (zeros, upcoming))
    y = jnp.sum(accs[0], axis=1).astype(dtype)
    if swiglu:
        gate = y.astype(jnp.float32)
        up = jnp.sum(accs[1], axis=1).astype(dtype).astype(jnp.float32)
        y = ((gate * jax.nn.sigmoid(gate)).astype(dtype).astype(jnp.float32) * up).astype(dtype)
    plgpu.store(out_refs[-1].at[row, pl.ds(first, block_n)], y, mask=out_ok)


@functools.partial(jax.jit, static_argnames=("eps", "swiglu", "interpret", "config"))
def gpu_matvec(x, weight, *, residual=None, norm_scale=None, eps: float = 1e-6, swiglu: bool = False,
               interpret: bool = False, config: MatvecConfig = MatvecConfig()):
    """Same contract as ``reference``; grid (output tile, row). Meant for one row (M = 1): each row re-reads
    the weight."""
    num_rows, width = x.shape
    if weight.shape[1] != width or (swiglu and weight.shape[0] % 2):
        raise ValueError(f"weight {weight.shape} does not fit input rows of {width} features"
                         + (" with an even [gate; up] split" if swiglu else ""))
    num_out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    has_norm, has_residual = norm_scale is not None, residual is not None
    cfg = plan(config, num_out=num_out, width=width, swiglu=swiglu, has_norm=has_norm)
    kernel = functools.partial(_kernel, eps=eps, width=width, num_out=num_out, block_n=cfg.block_n,
                               block_k=cfg.block_k, has_norm=has_norm, has_residual=has_residual, swiglu=swiglu)
    # Absent operands are passed as x (never read): one kernel signature for every variant.
    operands = (x, residual if has_residual else x, norm_scale if has_norm else x[0], weight)
    out_shape = ([jax.ShapeDtypeStruct(x.shape, x.dtype)] if has_norm else []) + [
        jax.ShapeDtypeStruct((num_rows, num_out), x.dtype)]
    outputs = pl.pallas_call(
        kernel,
        grid=(pl.cdiv(num_out, cfg.block_n), num_rows),
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name="decode_matvec",
    )(*operands)
    return tuple(outputs) if has_norm else outputs[0]


def matvec(x, weight, *, residual=None, norm_scale=None, eps: float = 1e-6, swiglu: bool = False,
           backend: str | None = None):
    """The platform's implementation: the Triton kernel on GPUs, ``reference`` elsewhere (or as ``backend``
    says: "reference", "gpu_triton", or "interpret" for the kernel under the Pallas interpreter)."""
    backend = backend or ("gpu_triton" if jax.default_backend() == "gpu" else "reference")
    kwargs = dict(residual=residual, norm_scale=norm_scale, eps=eps, swiglu=swiglu)
    if backend == "reference":
        return reference(x, weight, **kwargs)
    return gpu_matvec(x, weight, interpret=backend == "interpret", **kwargs)


__all__ = ["MatvecConfig", "reference", "gpu_matvec", "matvec", "plan"]
