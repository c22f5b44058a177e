"""Picks the prefix-block attention implementation for the platform a call runs on."""

from __future__ import annotations

import jax

from pallas_kernels import reference

# The GPU kernel is the default on "gpu" because benchmarks/kernels_gpu_check.py passed on an H100 (JAX 0.11.2,
# 2026-11-21) for every default launch plan (16-, 64- and 128-row tiles); see README.md. Set to False to make
# GPUs run the reference again.
GPU_KERNEL_VERIFIED = True

BACKENDS = ("reference", "gpu_triton", "gpu_mosaic", "tpu_mosaic")


def default_backend(platform: str | None = None, *, interpret: bool = False) -> str:
    """The implementation ``prefix_block_attention`` uses on ``platform`` (default: JAX's default backend).

    ``interpret=True`` asks for a kernel run by the Pallas interpreter: the TPU kernel on "tpu", otherwise
    the GPU kernel (the one that can be checked against hardware), whatever the platform.
    """
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "tpu_mosaic"
    if interpret:
        return "gpu_triton"
    if platform == "gpu" and GPU_KERNEL_VERIFIED:
        return "gpu_triton"
    return "reference"


def _fits_triton(head_dim: int, *, min_head_dim: int) -> bool:
    """The Triton kernels tile the head dimension whole (the fused one in halves): a power of two, not tiny."""
    return head_dim >= min_head_dim and not head_dim & (head_dim - 1)


def _fitting(backend: str, head_dim: int, *, min_head_dim: int) -> str:
    """The default backend, or the reference where the GPU kernel cannot take this head_dim (tiny test models,
    head dims such as 80 or 96): a default must never fail where the reference works."""
    if backend == "gpu_triton" and not _fits_triton(head_dim, min_head_dim=min_head_dim):
        return "reference"
    return backend


def prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False,
                           backend: str | None = None):
    """Attention of a block of queries over a KV cache that already holds the block's own keys.

    q [B, Tq, Hq, D]; k, v [B, S, Hkv, D]; q_start, kv_len [B] int32. Key j is visible to query i of row b
    iff j < kv_len[b] and j <= q_start[b] + i (``block_size=None``, causal) or
    j // block_size <= (q_start[b] + i) // block_size (block-causal). Softmax in float32, output in q's
    dtype, zeros for a query that sees no key. ``backend`` forces one of ``BACKENDS``.
    """
    backend = backend or _fitting(default_backend(interpret=interpret), q.shape[-1], min_head_dim=16)
    if backend == "reference":
        return reference.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, scale=scale)
    if backend == "gpu_triton":
        from pallas_kernels import gpu_triton  # imported on use: Triton lowering is irrelevant elsewhere

        return gpu_triton.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, scale=scale,
                                                 interpret=interpret)
    if backend == "gpu_mosaic":  # Hopper only; bf16/f16, head_dim % 64, whole key tiles (else Triton's kernel)
        from pallas_kernels import gpu_mosaic

        if gpu_mosaic.supports(q.shape, k.shape, q.dtype) and q.dtype == k.dtype == v.dtype:
            return gpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, scale=scale,
                                                     interpret=interpret)
        return prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, scale=scale,
                                      interpret=interpret, backend=_fitting("gpu_triton", q.shape[-1], min_head_dim=16))
    if backend == "tpu_mosaic":
        from pallas_kernels import tpu_mosaic

        return tpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, scale=scale,
                                                 interpret=interpret)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, *, num_q_heads, qkv_bias=None, block_size=None,
                     scale=None, interpret=False, backend: str | None = None, out_rows: int | None = None):
    """A new block's attention from its raw projections, appending its keys and values to the cache.

    qkv [B, T, Hq + 2 Hkv, D] before the bias (qkv_bias [(Hq + 2 Hkv) * D] or None) and RoPE; cos, sin
    [B, T, D // 2] float32 at positions ``q_start + [0, T)``; k_cache, v_cache [B, S, Hkv, D]. Returns (out
    [B, T, Hq, D], k_cache, v_cache with the block written, positions past S dropped). The same as
    ``reference.append_attention``; on GPUs one fused kernel (``gpu_append_attention``), elsewhere the rotation
    and cache writes in XLA and the platform's ``prefix_block_attention``.

    ``out_rows``: the output has that many token rows, zeros past T (the padding rows of the GEMM that reads it).
    """
    if out_rows is not None and out_rows < cos.shape[1]:
        raise ValueError(f"out_rows ({out_rows}) must be at least the block's {cos.shape[1]} tokens")
    if backend is None:
        backend = default_backend(interpret=interpret)
        if backend == "gpu_triton" and not _fits_triton(qkv.shape[-1], min_head_dim=32):
            backend = None  # the XLA path below, with whichever attention kernel fits
    if backend == "gpu_triton":
        from pallas_kernels import gpu_append_attention

        return gpu_append_attention.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len,
                                                     num_q_heads=num_q_heads, qkv_bias=qkv_bias,
                                                     block_size=block_size, scale=scale, interpret=interpret,
                                                     out_rows=out_rows)
    q, k_cache, v_cache = reference.rotate_and_append(qkv, cos, sin, k_cache, v_cache, q_start,
                                                      num_q_heads=num_q_heads, qkv_bias=qkv_bias)
    out = prefix_block_attention(q, k_cache, v_cache, q_start, kv_len, block_size=block_size, scale=scale,
                                 interpret=interpret, backend=backend)
    return reference.pad_token_rows(out, out_rows), k_cache, v_cache
