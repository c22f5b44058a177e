"""The one attention entry point of the decoder; picks an implementation by platform."""

from __future__ import annotations

import os

import jax

import pallas_kernels

# "auto": the platform's Pallas kernel where one exists, else the jnp reference; on Hopper GPUs, in the per-layer
# layout's fused path, the Mosaic GPU kernel for verify- and drafter-sized blocks over large caches and Triton's
# fused kernel otherwise (``pallas_kernels.dispatch.gpu_append_backend``). "reference": always jnp. "gpu_triton":
# auto without the Mosaic choice. "gpu_mosaic": the Mosaic GPU (Hopper) kernel for every block, with RoPE and the
# cache append in XLA (the fused Triton kernel does those in the same kernel); Triton's where it cannot take the
# shapes.
ATTENTION_IMPL_ENV = "FFJAX_ATTENTION"
_BACKENDS = {"auto": None, "reference": "reference", "gpu_triton": "gpu_triton",
             "gpu_mosaic": "gpu_mosaic"}  # impl -> pallas_kernels backend (attend: "gpu_triton" is auto's)
_IMPLS = tuple(_BACKENDS)


def resolve_impl(impl: str | None = None) -> str:
    impl = impl or os.environ.get(ATTENTION_IMPL_ENV, "auto")
    if impl not in _IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {_IMPLS}")
    if impl.startswith("gpu_") and jax.default_backend() != "gpu":
        raise ValueError(f"attention implementation {impl!r} runs GPU kernels, but JAX's platform is "
                         f"{jax.default_backend()!r}; use 'auto' or 'reference'")
    return impl


def attend(q, k, v, q_start, kv_len, *, block_size: int | None, impl: str = "auto"):
    """q [B, Tq, Hq, D] over the cache k, v [B, S, Hkv, D]; causal if block_size is None, else block-causal."""
    # pallas_kernels picks the platform's kernel (the reference on CPU); "reference" forces the jnp version. Here
    # the default is already Triton's kernel, with its head-dim fallback, so "gpu_triton" asks for nothing more.
    backend = None if impl == "gpu_triton" else _BACKENDS[impl]
    return pallas_kernels.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, backend=backend)


def append_and_attend(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, *, num_q_heads: int, qkv_bias=None,
                      block_size: int | None, impl: str = "auto", out_rows: int | None = None):
    """A new block's attention from its raw projections qkv [B, T, Hq + 2 Hkv, D] (bias not yet added): bias,
    RoPE, the block's K/V written into this layer's cache, attention. Returns (out [B, out_rows or T, Hq, D],
    k_cache, v_cache): rows past T are zeros (the padding rows of the output projection's GEMM)."""
    return pallas_kernels.append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, num_q_heads=num_q_heads,
                                           qkv_bias=qkv_bias, block_size=block_size,
                                           backend=_BACKENDS[impl], out_rows=out_rows)
