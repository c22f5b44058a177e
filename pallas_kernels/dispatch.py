"""Picks the prefix-block attention implementation for the platform a call runs on."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import dependent_launch, reference

# The GPU kernel is the default on "gpu" because benchmarks/kernels_gpu_check.py passed on an H100 (JAX 0.11.2,
# 2026-11-21) for every default launch plan (16-, 64- and 128-row tiles); see README.md. Set to False to make
# GPUs run the reference again.
GPU_KERNEL_VERIFIED = True

BACKENDS = ("reference", "gpu_triton", "gpu_mosaic", "tpu_mosaic")

# Where the default GPU path of ``append_attention`` is the Mosaic GPU kernel instead of the fused Triton one: blocks
# of MOSAIC_MIN_ROWS..MOSAIC_MAX_ROWS tokens over a cache whose keys and values, per layer and batch row, take at
# least MOSAIC_MIN_CACHE_BYTES as allocated (the static capacity, not how much of it is filled). Measured on an H200
# (BENCHMARKS.md, issue 5): one forward of k = 16/32/64 tokens was 1-8% faster with Mosaic at 16.8 MB (7B at 8k and
# 16k keys, 1.5B at 16k), 0-10% slower at 8.4 MB and below (7B at 2k/4k, 1.5B at 1k-8k). A lone decoding row stays
# faster on Triton's kernel, which fuses RoPE and the append (at 32k too); longer blocks (prefill) were not
# measured, and the Mosaic kernel bounds a block's keys by its last query, so they stay on Triton.
MOSAIC_MIN_ROWS, MOSAIC_MAX_ROWS = 16, 64
MOSAIC_MIN_CACHE_BYTES = 16 * 2**20


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


def hopper_gpu() -> bool:
    """Whether JAX's default device is a Hopper GPU (WGMMA and TMA are sm_90 instructions)."""
    device = jax.devices()[0]
    return device.platform == "gpu" and str(getattr(device, "compute_capability", "")).startswith("9.")


def gpu_append_backend(num_tokens: int, cache_shape, dtype, *, hopper: bool) -> str:
    """The GPU kernel ``append_attention`` runs by default for a block of ``num_tokens`` over a layer cache of
    ``cache_shape`` [B, S, Hkv, D] in ``dtype``: "gpu_mosaic" for verify- and drafter-sized blocks over large
    caches on Hopper, where it measured faster (``MOSAIC_MIN_ROWS`` to ``MOSAIC_MAX_ROWS`` tokens, at least
    ``MOSAIC_MIN_CACHE_BYTES``) and can take the shapes, else "gpu_triton". Static shapes only, so the choice is
    made once per compiled program. The Mosaic kernel reads the last visible key tile whole: the cache past
    ``kv_len`` must be finite (ffjax's caches are zero-initialised)."""
    from pallas_kernels import gpu_mosaic  # the module builds no kernel at import

    _, num_keys, num_kv_heads, head_dim = cache_shape
    cache_bytes = 2 * num_keys * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize  # one row's K and V
    if (hopper and MOSAIC_MIN_ROWS <= num_tokens <= MOSAIC_MAX_ROWS and cache_bytes >= MOSAIC_MIN_CACHE_BYTES
            and gpu_mosaic.supports((1, num_tokens, 1, head_dim), cache_shape, dtype)):
        return "gpu_mosaic"
    return "gpu_triton"


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
                                                     interpret=interpret, pdl=dependent_launch.enabled())
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
    fits_triton = _fits_triton(qkv.shape[-1], min_head_dim=32)
    if backend is None:
        backend = default_backend(interpret=interpret)
        if backend == "gpu_triton" and fits_triton and not interpret and qkv.dtype == k_cache.dtype == v_cache.dtype:
            backend = gpu_append_backend(cos.shape[1], k_cache.shape, k_cache.dtype, hopper=hopper_gpu())
    if backend == "gpu_triton" and not fits_triton:  # asked for or by default: Triton's kernels, never Mosaic
        backend = None  # the XLA path below, with whichever attention kernel fits
    if backend == "gpu_triton":
        from pallas_kernels import gpu_append_attention

        return gpu_append_attention.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len,
                                                     num_q_heads=num_q_heads, qkv_bias=qkv_bias,
                                                     block_size=block_size, scale=scale, interpret=interpret,
                                                     out_rows=out_rows, pdl=dependent_launch.enabled())
    q, k_cache, v_cache = reference.rotate_and_append(qkv, cos, sin, k_cache, v_cache, q_start,
                                                      num_q_heads=num_q_heads, qkv_bias=qkv_bias)
    out = prefix_block_attention(q, k_cache, v_cache, q_start, kv_len, block_size=block_size, scale=scale,
                                 interpret=interpret, backend=backend)
    return reference.pad_token_rows(out, out_rows), k_cache, v_cache
