"""The one attention entry point of the decoder; picks an implementation by platform."""

from __future__ import annotations

import os


import pallas_kernels

# "auto": the platform's Pallas kernel where one exists, else the jnp reference. "reference": always jnp.
ATTENTION_IMPL_ENV = "FFJAX_ATTENTION"
_IMPLS = ("auto", "reference")


def resolve_impl(impl: str | None = None) -> str:
    impl = impl or os.environ.get(ATTENTION_IMPL_ENV, "auto")
    if impl not in _IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {_IMPLS}")
    return impl


def attend(q, k, v, q_start, kv_len, *, block_size: int | None, impl: str = "auto"):
    """q [B, Tq, Hq, D] over the cache k, v [B, S, Hkv, D]; causal if block_size is None, else block-causal."""
    # pallas_kernels picks the platform's kernel (the reference on CPU); "reference" forces the jnp version.
    return pallas_kernels.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size,
                                                 backend="reference" if impl == "reference" else None)
