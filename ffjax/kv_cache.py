"""A preallocated, layer-stacked KV cache with a per-row valid length (rollback = resetting the length)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ffjax.config import ModelConfig


@struct.dataclass
class KVCache:
    k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    length: jax.Array  # [batch] int32: positions [0, length) hold valid keys

    @classmethod
    def create(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16) -> "KVCache":
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), length=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def with_length(self, length) -> "KVCache":
        """Keeps the first ``length`` positions of each row; keys past it are dead and will be overwritten."""
        return self.replace(length=jnp.broadcast_to(jnp.asarray(length, jnp.int32), self.length.shape))

    def advance(self, count) -> "KVCache":
        return self.with_length(self.length + jnp.asarray(count, jnp.int32))
