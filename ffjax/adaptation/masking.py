"""Fast-dLLM v2 training inputs: per-block noising, the complementary pair, and the [x_t ; x_0] layout.

A clean sequence x_0 of L tokens (L a multiple of the block size bd) becomes two training rows:
* per block, a ratio t ~ U(eps, 1); each *eligible* position of the block is masked with probability t (row A);
* row B masks exactly the eligible positions row A left visible (the complementary mask), so across the pair
  every eligible token is masked, hence supervised, exactly once.
Eligible = ``loss_mask`` (e.g. the response, never the prompt) and not position 0: with the token shift the
prediction for position i is read from the output at i - 1, and position 0 has none.
Each row's model input is [x_t ; x_0] (2L tokens; both halves at RoPE positions 0..L-1) under the mask
M_BD | M_OBC | M_BC of pallas_kernels/block_diffusion_training.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pallas_kernels.block_diffusion_training import training_mask  # noqa: F401  (re-exported: one construction)


@struct.dataclass
class TrainingBatch:
    inputs: jax.Array  # [N, 2L] int32: [x_t ; x_0]
    targets: jax.Array  # [N, L] int32: x_0
    supervised: jax.Array  # [N, L] bool: masked in x_t, so the loss reads it (always eligible)

    @property
    def seq_len(self) -> int:
        return self.targets.shape[1]


def eligible_positions(loss_mask) -> jax.Array:
    """[B, L] bool: positions that may be noised and supervised (``loss_mask`` minus position 0)."""
    loss_mask = jnp.asarray(loss_mask, bool)
    return loss_mask & (jnp.arange(loss_mask.shape[1]) > 0)[None, :]


def complementary_masks(rng, loss_mask, block_size: int, eps: float = 1e-3) -> jax.Array:
    """[2B, L] bool: rows 0..B-1 mask each eligible token of a block with that block's t ~ U(eps, 1); rows
    B..2B-1 mask the complement within the eligible positions."""
    eligible = eligible_positions(loss_mask)
    batch, seq_len = eligible.shape
    if seq_len % block_size:
        raise ValueError(f"sequence length {seq_len} must be a multiple of the block size {block_size}")
    t_key, u_key = jax.random.split(rng)
    t = jax.random.uniform(t_key, (batch, seq_len // block_size), minval=eps, maxval=1.0)
    u = jax.random.uniform(u_key, (batch, seq_len))
    masked = eligible & (u < jnp.repeat(t, block_size, axis=1))
    return jnp.concatenate([masked, eligible & ~masked], axis=0)


def make_batch(x0, masked, mask_token_id: int) -> TrainingBatch:
    """The pair's model inputs from clean x_0 [B, L] and ``complementary_masks`` output [2B, L]."""
    x0 = jnp.asarray(x0, jnp.int32)
    clean = jnp.concatenate([x0, x0], axis=0)
    noisy = jnp.where(masked, jnp.int32(mask_token_id), clean)
    return TrainingBatch(inputs=jnp.concatenate([noisy, clean], axis=1), targets=clean, supervised=masked)


def noised_pair(rng, x0, loss_mask, *, block_size: int, mask_token_id: int, eps: float = 1e-3) -> TrainingBatch:
    """One complementary pair per clean row: x0 [B, L] -> a TrainingBatch of 2B rows."""
    return make_batch(x0, complementary_masks(rng, loss_mask, block_size, eps), mask_token_id)


def input_positions(seq_len: int) -> np.ndarray:
    """[2L] RoPE positions of [x_t ; x_0]: the noisy copy sits at the same positions as the clean one."""
    return np.concatenate([np.arange(seq_len), np.arange(seq_len)]).astype(np.int32)
