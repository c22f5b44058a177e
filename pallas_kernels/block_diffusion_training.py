"""Attention for drafter training: the block-diffusion mask over the concatenation [x_t ; x_0].

A training sequence of L tokens is fed twice, noised (x_t, first L positions) and clean (x_0, last L), and one
mask says who sees whom, block by block (block index = token position // block_size):
- M_BD  (x_t -> x_t): a noised block sees its own block, bidirectionally;
- M_OBC (x_t -> x_0): a noised block sees the clean blocks strictly before it;
- M_BC  (x_0 -> x_0): a clean block sees clean blocks up to and including its own (block-causal);
- x_0 -> x_t: nothing.
Every query sees at least its own block, so no row is empty.

No custom kernel here (see README.md): the mask is static, so library kernels take it as data and give the
backward pass for free. ``dense_attention`` runs it through ``jax.nn.dot_product_attention`` (XLA, or cuDNN
on NVIDIA GPUs with a dense mask); ``splash_attention`` hands it to the TPU splash-attention kernel, whose
block-sparse mask info skips the empty blocks (about half of the 2L x 2L tiles) in both passes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def training_mask(seq_len: int, block_size: int) -> np.ndarray:
    """[2L, 2L] bool: may position i of [x_t ; x_0] attend to position j?"""
    if seq_len % block_size:
        raise ValueError(f"seq_len {seq_len} must be a multiple of block_size {block_size}")
    index = np.arange(2 * seq_len)
    clean = index >= seq_len
    block = (index % seq_len) // block_size
    q_clean, k_clean = clean[:, None], clean[None, :]
    q_block, k_block = block[:, None], block[None, :]
    noisy_to_noisy = ~q_clean & ~k_clean & (q_block == k_block)  # M_BD
    noisy_to_clean = ~q_clean & k_clean & (k_block < q_block)  # M_OBC
    clean_to_clean = q_clean & k_clean & (k_block <= q_block)  # M_BC
    return noisy_to_noisy | noisy_to_clean | clean_to_clean


def dense_attention(q, k, v, block_size: int, *, implementation: str | None = None):
    """q [B, 2L, Hq, D], k, v [B, 2L, Hkv, D] -> [B, 2L, Hq, D]; differentiable.

    ``implementation``: None or "xla" (any platform), "cudnn" (NVIDIA GPUs), as in
    ``jax.nn.dot_product_attention``, which shares each K/V head among its query heads.
    """
    mask = jnp.asarray(training_mask(q.shape[1] // 2, block_size))[None, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


@functools.lru_cache(maxsize=16)
def _splash_kernel(seq_len, block_size, num_heads, block, interpret):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    head_mask = masks.NumpyMask(training_mask(seq_len, block_size))
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mha_single_device(masks.MultiHeadMask([head_mask] * num_heads),
                                                block_sizes=sizes, interpret=interpret)


def splash_attention(q, k, v, block_size: int, *, block: int = 128, interpret: bool = False):
    """Same contract as ``dense_attention``, through TPU splash attention (forward and backward).

    Splash takes as many K/V heads as query heads, so grouped K/V heads are repeated: acceptable in training,
    where the step is bound by arithmetic, not by reading a cache. ``2L`` must be a multiple of ``block``.
    Not run on TPU hardware here; tested in interpret mode.
    """
    batch, total, num_q_heads, head_dim = q.shape
    group = num_q_heads // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    kernel = _splash_kernel(total // 2, block_size, num_q_heads, block, interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, H, 2L, D], as splash wants
    # Splash does not scale the logits itself.
    out = jax.vmap(kernel)(heads_first(q * head_dim ** -0.5).astype(q.dtype), heads_first(k), heads_first(v))
    return heads_first(out).astype(q.dtype)
