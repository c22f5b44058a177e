"""A preallocated KV cache with a per-row valid length (rollback = resetting the length).

Its layout matches the params' (see ffjax/decoder.py): ``stacked`` holds one [L, B, S, Hkv, D] array per K and V;
``per_layer`` a tuple of L arrays [B, S, Hkv, D], so GPU kernels read a layer's keys without a copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ffjax.config import ModelConfig


STACKED, PER_LAYER = "stacked", "per_layer"


def default_layout() -> str:
    """Per-layer buffers on GPU (XLA:GPU copies slices of stacked weights before GEMMs), stacked elsewhere."""
    return PER_LAYER if jax.default_backend() == "gpu" else STACKED


@struct.dataclass
class KVCache:
    k: jax.Array | tuple  # stacked: [layers, batch, max_len, kv_heads, head_dim]; per-layer: tuple of [B, S, H, D]
    v: jax.Array | tuple
    length: jax.Array  # [batch] int32: positions [0, length) hold valid keys

    @classmethod
    def create(cls, config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16,
               layout: str | None = None) -> "KVCache":
        layout = layout or default_layout()
        shape = (batch, max_len, config.num_kv_heads, config.head_dim)
        if layout == STACKED:
            k = jnp.zeros((config.num_layers, *shape), dtype)
            v = jnp.zeros((config.num_layers, *shape), dtype)
        else:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(k=k, v=v, length=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1] if isinstance(self.k, tuple) else self.k.shape[2]

    def with_length(self, length) -> "KVCache":
        """Keeps the first ``length`` positions of each row; keys past it are dead and will be overwritten."""
        return self.replace(length=jnp.broadcast_to(jnp.asarray(length, jnp.int32), self.length.shape))

    def advance(self, count) -> "KVCache":
        return self.with_length(self.length + jnp.asarray(count, jnp.int32))
