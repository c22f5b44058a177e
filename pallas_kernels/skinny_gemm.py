"""A few token rows times a large weight stored [out, in], on Hopper tensor cores (Pallas, Mosaic GPU lowering),
with the jnp reference.

At batch-1 decoding a projection is y [M, N] = x [M, K] @ weight [N, K].T with M of 1 or 2 (``gemm_rows``): it
reads the whole weight to make a row, so it is bound by HBM bandwidth. So is a drafter's 32-token block. WGMMA
needs 64 rows on its A side but only 8 columns on its B side, so the kernel swaps the operands ("swap-AB"): the
weight tile is A, the token rows, padded to a multiple of 8 (at most ``MAX_ROWS``), are B, and each program (one
warpgroup) computes acc [block_n, rows] = weight_tile @ x_tile.T. Its [block_n, K / split_k] slab of the weight
streams through shared memory by TMA under ``plgpu.emit_pipeline`` (``max_concurrent_steps`` tiles in flight, one
WGMMA per step with the previous one still running). The result goes to HBM as y.T, which XLA transposes back;
``split_k > 1`` writes float32 partials [split_k, N, rows] that XLA sums, where N alone gives too few programs to
fill the GPU.

Measured (BENCHMARKS.md, issues 2 and 3): Qwen2.5-7B's down projection (K = 18944) at 1 row, 36.3 µs against
XLA's 39.2 µs back to back over 28 weights on an H200, and the 7B decode step 4.020 -> 3.968 ms/token with it
(an interleaved A/B, ``benchmarks/ab_decode.py``), tokens identical; Fast_dLLM_v2_1.5B's down projection at the
32-row block, 13.98 against 15.30 µs on an H100, and the drafter pass 1.972-1.990 -> 1.912 ms with it. No config
swept beat XLA elsewhere at M <= 8 (gate_up 69 vs 67 µs, qkv 14 vs 10, o 10 vs 9), nor for the 32-row gate_up
(28.3 vs 23.5 µs); the 32-row qkv and o ran faster alone but not in the pass (H200 and H100). So ``plan`` only
returns configs for the shapes where one was measured faster in use; the decoder asks it per projection.
Summing the split-K partials inside a thread-block cluster (through distributed shared memory) instead of in XLA
was slower at both the 7B and the drafter down shapes (H100; BENCHMARKS.md, issue 2).
The Triton-lowered ``decode_matvec`` stays the 1.5B choice (no tensor cores, but a fused norm and SwiGLU).

Mosaic GPU's interpreter cannot run WGMMA on a transposed shared-memory operand, so the CPU tests check the
kernel's lowering and its plan; its numbers are checked on the GPU (``benchmarks/kernels_gpu_check.py``).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import dependent_launch
from pallas_kernels.dispatch import hopper_gpu

# WGMMA's shapes: the A (weight) tile is a multiple of 64 rows; B (token rows) a multiple of 8 columns.
_WGMMA_ROWS = 64
_ROW_PAD = 8
MAX_ROWS = 32  # the drafter's block; WGMMA's B side takes up to 256 columns, but no more was measured

# Whether the decoder may use the kernel: "auto" (where ``plan`` has a measured config) or "off".
SKINNY_ENV = "FFJAX_SKINNY_GEMM"


@dataclasses.dataclass(frozen=True)
class SkinnyConfig:
    """Launch parameters: output features per program, the K chunk per pipeline step, steps in flight, and how
    many programs share one output tile's K (float32 partials summed by XLA)."""

    block_n: int = 64
    block_k: int = 128
    max_concurrent_steps: int = 4
    split_k: int = 1


# Measured winners, keyed by (rows padded to 8, N, K): only where the kernel beat XLA's GEMM in use (7B down on
# an H200, benchmarks/results/mgpu_skinny_sweep_h200.json; 1.5B drafter-block down on an H100,
# benchmarks/results/rows32_sweep_h100/ and down32_h100/).
PLANS = {
    (8, 3584, 18944): SkinnyConfig(block_n=64, block_k=256, max_concurrent_steps=4, split_k=2),
    (32, 1536, 8960): SkinnyConfig(block_n=64, block_k=256, max_concurrent_steps=4, split_k=5),
}


def padded_rows(rows: int) -> int:
    return max(_ROW_PAD, -(-rows // _ROW_PAD) * _ROW_PAD)


def plan(rows: int, num_out: int, width: int) -> SkinnyConfig | None:
    """The measured config for x [rows, width] @ weight [num_out, width].T, or None where XLA's GEMM is faster
    (or nothing was measured)."""
    if rows > MAX_ROWS:
        return None
    return PLANS.get((padded_rows(rows), num_out, width))


def enabled() -> bool:
    """Whether $FFJAX_SKINNY_GEMM lets the decoder use the kernel (auto, the default, or off)."""
    mode = os.environ.get(SKINNY_ENV, "auto")
    if mode not in ("auto", "off"):
        raise ValueError(f"{SKINNY_ENV} must be auto or off, not {mode!r}")
    return mode == "auto"


def reference(x, weight):
    """x [M, K] @ weight [N, K].T accumulated in float32, rounded to x's dtype: [M, N]."""
    return jnp.matmul(x, weight.T, preferred_element_type=jnp.float32).astype(x.dtype)


def _check(x, weight, config: SkinnyConfig):
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"skinny_gemm takes x [M, K] and weight [N, K]; got {x.shape} and {weight.shape}")
    rows, width = x.shape
    num_out = weight.shape[0]
    if rows > MAX_ROWS:
        raise ValueError(f"skinny_gemm is for at most {MAX_ROWS} rows, got {rows}")
    if x.dtype != weight.dtype or x.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"skinny_gemm runs bf16 or f16 tensor-core products; got x {x.dtype}, weight {weight.dtype}")
    c = config
    if c.block_n % _WGMMA_ROWS or num_out % c.block_n:
        raise ValueError(f"block_n {c.block_n} must be a multiple of {_WGMMA_ROWS} dividing N = {num_out}")
    if c.block_k % 64 or width % (c.block_k * c.split_k):
        raise ValueError(f"block_k {c.block_k} (a multiple of 64) times split_k {c.split_k} must divide K = {width}")


def gpu_skinny_gemm(x, weight, config: SkinnyConfig = SkinnyConfig(), *, pdl: bool | None = None):
    """x [M <= MAX_ROWS, K] @ weight [N, K].T -> [M, N] in x's dtype (float32 accumulation), the Mosaic GPU kernel.
    ``pdl``: with the instructions of programmatic dependent launch (default: ``dependent_launch.enabled()``)."""
    _check(x, weight, config)
    pdl = dependent_launch.enabled() if pdl is None else pdl
    rows, width = x.shape
    num_out = weight.shape[0]
    block_n, block_k, split_k = config.block_n, config.block_k, config.split_k
    row_pad = padded_rows(rows)
    x_padded = jnp.pad(x, ((0, row_pad - rows), (0, 0)))
    k_steps = width // (block_k * split_k)
    partial_dtype = x.dtype if split_k == 1 else jnp.float32

    def body(w_hbm, x_hbm, out_hbm):
        n_tile = lax.axis_index("n")
        k_part = lax.axis_index("k")
        if pdl:  # before the pipeline's first copy of x, which the predecessor kernel wrote
            dependent_launch.mosaic_wait_and_release()

        def accumulate(acc_ref):
            def step(_, w_smem, x_smem):
                plgpu.wgmma(acc_ref, w_smem, plgpu.transpose_ref(x_smem, (1, 0)))

            plgpu.emit_pipeline(
                step,
                grid=(k_steps,),
                in_specs=[
                    # delay_release=1: a step's tiles stay put while its WGMMA runs on into the next step.
                    plgpu.BlockSpec((block_n, block_k), lambda kk: (n_tile, k_part * k_steps + kk),
                                    delay_release=1),
                    plgpu.BlockSpec((row_pad, block_k), lambda kk: (0, k_part * k_steps + kk), delay_release=1),
                ],
                max_concurrent_steps=config.max_concurrent_steps,
            )(w_hbm, x_hbm)
            return acc_ref[...]

        acc = pl.run_scoped(accumulate, plgpu.ACC((block_n, row_pad), jnp.float32))

        def store(out_smem):
            out_smem[...] = acc.astype(out_smem.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(out_smem, out_hbm.at[k_part, pl.ds(n_tile * block_n, block_n)])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

        pl.run_scoped(store, plgpu.SMEM((block_n, row_pad), partial_dtype))

    out_type = jax.ShapeDtypeStruct((split_k, num_out, row_pad), partial_dtype)
    kernel = plgpu.kernel(
        body, out_type=out_type, grid=(num_out // block_n, split_k), grid_names=("n", "k"),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup))
    partials = kernel(weight, x_padded)
    y_t = partials[0] if split_k == 1 else partials.sum(axis=0)
    return y_t[:, :rows].T.astype(x.dtype)


__all__ = ["MAX_ROWS", "PLANS", "SKINNY_ENV", "SkinnyConfig", "enabled", "gpu_skinny_gemm", "hopper_gpu", "plan",
           "reference"]
