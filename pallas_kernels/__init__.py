"""Attention kernels for block-diffusion speculative decoding, each with a pure-jnp reference.

``prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False)``: a block
of queries attends over a KV cache that already holds the block's own keys, with a causal
(``block_size=None``) or block-causal mask. ``dispatch`` picks the implementation by platform: the Pallas
Triton kernel on GPUs (``gpu_triton``, once verified on the device), the Mosaic TPU kernel on TPUs
(``tpu_mosaic``, interpret-mode tested only), the jnp ``reference`` elsewhere. ``backend="gpu_mosaic"`` asks for
the Mosaic GPU (Hopper) kernel (``gpu_mosaic``).

``skinny_gemm``: a few token rows times an [out, in] weight on Hopper tensor cores, used by the decoder where its
plan has a measured config.

``append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, *, num_q_heads, ...)``: the same attention
for a new block given its raw QKV projection: RoPE, the cache append and the attention in one call, one fused
kernel on GPUs (``gpu_append_attention``). See README.md here.
"""

from pallas_kernels.dispatch import BACKENDS, append_attention, default_backend, prefix_block_attention

__all__ = ["BACKENDS", "append_attention", "default_backend", "prefix_block_attention"]
