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

Measured on an H200 (BENCHMARKS.md, issue 2): faster than XLA where its GEMMs are small (1.5B qkv and o: 3.9 and
3.0 µs against 16 and 14), about even at the 1.5B MLP (gate_up 18 µs with its norm and SwiGLU against XLA's
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

from pallas_kernels import dependent_launch
from pallas_kernels import residual_rms_norm as rms
from pallas_kernels.gpu_triton import _next_power_of_two


def reference(x, weight, *, residual=None, norm_scale=None, eps: float = 1e-6, swiglu: bool = False):
    """x [M, K]; weight [N, K] (out, in). Returns y [M, N] (N // 2 with ``swiglu``), or (x + residual, y) when
    ``norm_scale`` [K] is given.

    With ``norm_scale`` the product's input is RMSNorm(x + residual) (``residual`` [M' >= M, K], rows past M
    ignored, or None), rounded as ``residual_rms_norm.reference`` rounds it. The product accumulates in float32
    and is rounded to x's dtype.
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
        y = swiglu_product(*jnp.split(y, 2, axis=-1))
    return y if total is None else (total, y)


def swiglu_product(gate, up):
    """silu(gate) * up in the input dtype, as the decoder's MLP computes it."""
    return jax.nn.silu(gate) * up


def rounded_swiglu(gate, up, dtype):
    """silu(gate) * up of float32 values already rounded to ``dtype``: the silu is rounded to ``dtype`` before the
    product and the result is in ``dtype`` (the decoder's MLP, in the float32 arithmetic Triton kernels need)."""
    return ((gate * jax.nn.sigmoid(gate)).astype(dtype).astype(jnp.float32) * up).astype(dtype)


# Weight values an unrolled program may hold per thread: the largest plan measured fast (1.5B gate_up) holds 192.
_UNROLLED_VALUES = 192


@dataclasses.dataclass(frozen=True)
class MatvecConfig:
    """Launch parameters; ``None`` fields are chosen by ``plan`` from the shapes."""

    block_n: int | None = None  # output features per program
    block_k: int | None = None  # input features per chunk
    num_warps: int | None = None
    num_stages: int | None = None
    unroll: bool | None = None  # all of a program's weight chunks requested at once, the input row read once
    weight_eviction: str | None = None  # Triton's eviction policy for the weight loads (read once), e.g. "evict_first"


def plan(config: MatvecConfig, *, num_out: int, width: int, swiglu: bool, has_norm: bool = False) -> MatvecConfig:
    """Fills the ``None`` fields with what was fastest on an H200 (``benchmarks/matvec_bench.py --sweep`` and
    ``--unrolled``; BENCHMARKS.md, issue 2), with a few output features per program (thousands of small programs
    keep every SM's loads in flight):

    * rows up to 2048 wide whose programs hold at most ``_UNROLLED_VALUES`` (Qwen2.5-1.5B's qkv, o, gate_up):
      unrolled, so a program requests all its weights at once and reads the input row once; with the norm (qkv)
      and with SwiGLU (gate_up, two weight rows per output) 4 features in 512-feature chunks on 2 warps, without
      either (o) 2 features in one chunk on 8 warps;
    * other rows up to 4096 wide (Qwen2.5-7B's qkv, o, gate_up; a 182-config sweep): unrolled in 1024-feature
      chunks, 4 features on 4 warps with the norm, 2 with SwiGLU, 1 on 8 warps for a plain product (at most 128
      weight values a thread);
    * wider rows (down): a loop over chunks, no pipelining: 4 features in 1024-feature chunks on 8 warps, with
      SwiGLU 2 in 512-feature chunks on 2 warps (the larger tiles spilled registers: 7B gate_up took 320 µs).

    At the 7B shape even the best plans read the weights at 3.4-3.8 TB/s, against 4.0-4.2 for XLA's GEMMs, so the
    decoder keeps XLA there (``ffjax.decoder.matvec_projections``)."""
    rows_per_output = 2 if swiglu else 1

    def fits(block_n, block_k, num_warps):  # an unrolled program's weight values per thread (more spill)
        return block_n * rows_per_output * pl.cdiv(width, block_k) * block_k <= _UNROLLED_VALUES * 32 * num_warps

    short = (4, 512, 2) if swiglu or has_norm else (2, 2048, 8)
    medium = (2, 1024, 4) if swiglu else (4, 1024, 4) if has_norm else (1, 1024, 8)
    if width <= 2048 and fits(*short):
        unroll, num_stages, (block_n, block_k, num_warps) = True, 3, short
    elif width <= 4096 and fits(*medium):
        unroll, num_stages, (block_n, block_k, num_warps) = True, 1, medium
    else:
        unroll, num_stages = False, 1
        block_n, block_k, num_warps = (2, 512, 2) if swiglu else (4, 1024, 8)
    return MatvecConfig(
        block_n=config.block_n or block_n,
        block_k=config.block_k or min(block_k, _next_power_of_two(width)),
        num_warps=config.num_warps or num_warps,
        num_stages=config.num_stages or num_stages,
        unroll=unroll if config.unroll is None else config.unroll, weight_eviction=config.weight_eviction)


def _kernel(x_ref, residual_ref, scale_ref, w_ref, *out_refs, eps, width, num_out, block_n, block_k, has_norm,
            has_residual, swiglu, unroll, weight_eviction, pdl, interpret):
    tile, row = pl.program_id(0), pl.program_id(1)
    if pdl:  # the input row's loads wait for the predecessor kernel; the weight's (never written) need not
        row = dependent_launch.triton_after_predecessor(row, interpret=interpret)
    num_chunks = pl.cdiv(width, block_k)
    first = tile * block_n
    out_ok = None if num_out % block_n == 0 else first + jnp.arange(block_n, dtype=jnp.int32) < num_out
    dtype = x_ref.dtype

    def whole(i):
        """Chunk i lies inside the row (known only when i is static)."""
        return isinstance(i, int) and (i + 1) * block_k <= width

    def chunk_ok(i):
        """Which of chunk i's features lie inside the row; None for a whole chunk, so its loads carry no mask."""
        return None if whole(i) else i * block_k + jnp.arange(block_k, dtype=jnp.int32) < width

    def chunk_start(i):
        # A static partial chunk's slice runs past the row (masked), which Pallas refuses for a static start.
        return row * 0 + i * block_k if isinstance(i, int) and not whole(i) else i * block_k

    def load(ref, mask, **hints):
        return plgpu.load(ref, **hints) if mask is None else plgpu.load(ref, mask=mask, other=0, **hints)

    def store(ref, value, mask):
        if mask is None:
            plgpu.store(ref, value)
        else:
            plgpu.store(ref, value, mask=mask)

    def input_chunk(i):
        """The product's input over features [i * block_k, +block_k) before the norm, rounded to the dtype."""
        ok = chunk_ok(i)
        x = load(x_ref.at[row, pl.ds(chunk_start(i), block_k)], ok)
        if has_residual:
            residual = load(residual_ref.at[row, pl.ds(chunk_start(i), block_k)], ok)
            x = (x.astype(jnp.float32) + residual.astype(jnp.float32)).astype(dtype)
        return x, ok

    def weight_chunk(i):
        """The program's weight rows (gate and up rows with SwiGLU) over features [i * block_k, +block_k), kept
        in the weight's dtype; past the last chunk everything is masked (no memory traffic)."""
        ok = chunk_ok(i)
        masks = [m for m in (None if out_ok is None else out_ok[:, None], None if ok is None else ok[None, :])
                 if m is not None]
        mask = None if not masks else jnp.broadcast_to(functools.reduce(jnp.logical_and, masks),
                                                        (block_n, block_k))
        firsts = (first, num_out + first) if swiglu else (first,)
        return tuple(load(w_ref.at[pl.ds(f, block_n), pl.ds(chunk_start(i), block_k)], mask,
                          eviction_policy=weight_eviction) for f in firsts)

    def store_total(i, x, ok):
        @pl.when(tile == 0)  # the residual sum, written once
        def _():
            store(out_refs[0].at[row, pl.ds(chunk_start(i), block_k)], x, ok)

    def squares(x):
        x32 = x.astype(jnp.float32)
        return jnp.sum(x32 * x32)

    def product_input(i, x, ok, inv_rms):
        """The normalised input chunk as float32 [1, block_k]."""
        if has_norm:
            scale = load(scale_ref.at[pl.ds(chunk_start(i), block_k)], ok).astype(jnp.float32)
            x = (scale * (x.astype(jnp.float32) * inv_rms).astype(dtype).astype(jnp.float32)).astype(dtype)
        return x.astype(jnp.float32)[None, :]

    def accumulate(accs, weights, x):
        return tuple(acc + w.astype(jnp.float32) * x for acc, w in zip(accs, weights))

    zeros = tuple(jnp.zeros((block_n, block_k), jnp.float32) for _ in range(2 if swiglu else 1))
    if unroll:
        # Every weight chunk is requested before anything else, so a program has its whole share in flight at
        # once; the input row is read once and kept.
        chunks = range(num_chunks)
        weights = [weight_chunk(i) for i in chunks]
        inputs = [input_chunk(i) for i in chunks]
        inv_rms = None
        if has_norm:
            for i, (x, ok) in enumerate(inputs):
                store_total(i, x, ok)
            inv_rms = lax.rsqrt(sum(squares(x) for x, _ in inputs) / width + eps)
        accs = zeros
        for i, (x, ok) in enumerate(inputs):
            accs = accumulate(accs, weights[i], product_input(i, x, ok, inv_rms))
    else:
        # The first weight chunk is requested before anything else: its HBM latency overlaps the norm's pass
        # over the input row (an L2 read), and each step requests the next chunk before reducing the current one.
        upcoming = weight_chunk(0)
        inv_rms = None
        if has_norm:
            def sum_of_squares(i, acc):
                x, ok = input_chunk(i)
                store_total(i, x, ok)
                return acc + squares(x)

            inv_rms = lax.rsqrt(lax.fori_loop(0, num_chunks, sum_of_squares, jnp.float32(0.0)) / width + eps)

        def step(i, carry):
            accs, current = carry
            upcoming = weight_chunk(i + 1)
            x, ok = input_chunk(i)
            return accumulate(accs, current, product_input(i, x, ok, inv_rms)), upcoming

        accs, _ = lax.fori_loop(0, num_chunks, step, (zeros, upcoming))
    y = jnp.sum(accs[0], axis=1).astype(dtype)
    if swiglu:
        y = rounded_swiglu(y.astype(jnp.float32), jnp.sum(accs[1], axis=1).astype(dtype).astype(jnp.float32), dtype)
    store(out_refs[-1].at[row, pl.ds(first, block_n)], y, out_ok)


@functools.partial(jax.jit, static_argnames=("eps", "swiglu", "interpret", "config", "pdl"))
def gpu_matvec(x, weight, *, residual=None, norm_scale=None, eps: float = 1e-6, swiglu: bool = False,
               interpret: bool = False, config: MatvecConfig = MatvecConfig(), pdl: bool = False):
    """Same contract as ``reference``; grid (output tile, row). Meant for one row (M = 1): each row re-reads
    the weight. ``pdl``: with the instructions of programmatic dependent launch (``dependent_launch``)."""
    num_rows, width = x.shape
    if weight.shape[1] != width or (swiglu and weight.shape[0] % 2):
        raise ValueError(f"weight {weight.shape} does not fit input rows of {width} features"
                         + (" with an even [gate; up] split" if swiglu else ""))
    num_out = weight.shape[0] // 2 if swiglu else weight.shape[0]
    has_norm, has_residual = norm_scale is not None, residual is not None
    cfg = plan(config, num_out=num_out, width=width, swiglu=swiglu, has_norm=has_norm)
    kernel = functools.partial(_kernel, eps=eps, width=width, num_out=num_out, block_n=cfg.block_n,
                               block_k=cfg.block_k, has_norm=has_norm, has_residual=has_residual, swiglu=swiglu,
                               unroll=cfg.unroll, weight_eviction=cfg.weight_eviction, pdl=pdl,
                               interpret=interpret)
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
    return gpu_matvec(x, weight, interpret=backend == "interpret", pdl=dependent_launch.enabled(), **kwargs)


__all__ = ["MatvecConfig", "reference", "gpu_matvec", "matvec", "plan", "rounded_swiglu", "swiglu_product"]
