"""Attention kernels for block-diffusion speculative decoding, each with a pure-jnp reference.

``prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False)``: a block
of queries attends over a KV cache that already holds the block's own keys, with a causal
(``block_size=None``) or block-causal mask. Until the platform kernels land, every platform runs the
reference.
"""

from pallas_kernels.reference import prefix_block_attention

__all__ = ["prefix_block_attention"]
