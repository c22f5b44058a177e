"""A new block's attention on NVIDIA GPUs, fused with RoPE and the KV-cache append (Pallas, Triton lowering).

``prefix_block_attention`` wants the block's keys already rotated and written into the cache. Done by XLA,
that is a rotation of the queries, one of the keys, a bounds guard and two cache writes per layer: five small
kernels, each a few microseconds, which made a 1.5B model's decode step launch-bound (benchmarks/decode_kernels.py
--profile, H100). Here one kernel takes the raw QKV projection and does all of it:

* keys below ``q_start`` (the prefix) come from the cache and are visible to every query of the block;
* the block's own keys come straight from the projection, rotated on the fly, under the causal or block-causal
  mask;
* the programs of the first KV split write the block's rotated keys and values into the cache in place
  (aliased), where no other program reads them: prefix tiles stop at ``q_start``.

The work decomposition is ``gpu_triton``'s: rows are (query position, grouped head) pairs of one KV head, the
prefix and the block's key tiles form one sequence that is split across programs, and ``merge_splits_to_heads``
merges the splits. The group is padded to a power of two (rows of padding heads are computed and dropped).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import dependent_launch
from pallas_kernels.gpu_triton import (_H100_SM_COUNT, TritonConfig, _next_power_of_two, _sm_count,
                                       merge_splits_to_heads, online_softmax_update, plan)
from pallas_kernels.query_rows import visible_key_end
from pallas_kernels.reference import pad_token_rows


def _rotate(x1, x2, cos, sin, dtype):
    """RoPE's half-split rotation in float32, rounded to ``dtype`` as the reference does."""
    x1, x2 = x1.astype(jnp.float32), x2.astype(jnp.float32)
    return (x1 * cos - x2 * sin).astype(dtype), (x2 * cos + x1 * sin).astype(dtype)


def _kernel(q_start_ref, kv_len_ref, qkv_ref, bias_ref, cos_ref, sin_ref, k_in_ref, v_in_ref,
            o_ref, lse_ref, k_out_ref, v_out_ref, *, scale, block_size, num_tokens, num_q_heads, num_kv_heads,
            group, group_pad, block_t, block_k, num_splits, precision, pdl, interpret):
    tile, split, kv_head = pl.program_id(0), pl.program_id(1), pl.program_id(2) % num_kv_heads
    if pdl:  # the block's rows (projections, RoPE tables) come from the tile, and q_start/kv_len (then whole
        # [B] arrays) from the batch row: those loads wait for the predecessor kernel. The cache below q_start
        # was written by earlier steps, so its loads need not.
        tile, batch_row = dependent_launch.triton_after_predecessor(tile, pl.program_id(2) // num_kv_heads,
                                                                    interpret=interpret)
        q_start, kv_len = q_start_ref[batch_row], kv_len_ref[batch_row]
    else:
        q_start, kv_len = q_start_ref[()], kv_len_ref[()]
    num_keys = k_in_ref.shape[0]
    kv_len = jnp.minimum(kv_len, num_keys)  # keys past the cache: dropped
    half = qkv_ref.shape[-1] // 2
    dtype = k_in_ref.dtype
    block_m = block_t * group_pad
    key_head, value_head = num_q_heads + kv_head, num_q_heads + num_kv_heads + kv_head

    def with_bias(x, bias):
        """The projection's bias, added as XLA adds it to the GEMM's output: in float32, rounded to x's dtype."""
        return (x.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)

    first_token = tile * block_t
    tokens = first_token + jnp.arange(block_t, dtype=jnp.int32)
    token_ok = tokens < num_tokens
    cos = plgpu.load(cos_ref.at[pl.ds(first_token, block_t), :], mask=token_ok[:, None], other=0.0)
    sin = plgpu.load(sin_ref.at[pl.ds(first_token, block_t), :], mask=token_ok[:, None], other=0.0)

    # Queries: [block_t, group_pad] heads of this KV head's group, rotated, as block_m rows.
    q_mask = token_ok[:, None, None] & (jnp.arange(group_pad) < group)[None, :, None]
    heads_ok = (jnp.arange(group_pad) < group)[:, None]
    q_half = lambda lo: with_bias(plgpu.load(  # noqa: E731
        qkv_ref.at[pl.ds(first_token, block_t), pl.ds(kv_head * group, group_pad), pl.ds(lo, half)],
        mask=q_mask, other=0), plgpu.load(bias_ref.at[pl.ds(kv_head * group, group_pad), pl.ds(lo, half)],
                                          mask=heads_ok, other=0)[None])
    q1, q2 = _rotate(q_half(0), q_half(half), cos[:, None, :], sin[:, None, :], dtype)
    q1, q2 = q1.reshape(block_m, half), q2.reshape(block_m, half)
    row_position = q_start + first_token + jnp.arange(block_m, dtype=jnp.int32) // group_pad

    def scores_of(k1, k2):
        dot = lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,  # noqa: E731
                                           preferred_element_type=jnp.float32)
        return (dot(q1, k1) + dot(q2, k2)) * scale

    accumulate = functools.partial(online_softmax_update, precision=precision)

    # Prefix keys [0, prefix_end): in the cache, visible to every row (they precede the block).
    prefix_end = jnp.clip(jnp.minimum(q_start, kv_len), 0, num_keys)

    def prefix_step(tile_index, carry, *, masked):
        start = tile_index * block_k
        if masked:  # the last, partial tile: past prefix_end lie stale entries, or this block's being written
            keys = start + jnp.arange(block_k, dtype=jnp.int32)
            loadable = (keys < prefix_end)[:, None]
            load = lambda lo, width: plgpu.load(  # noqa: E731
                k_in_ref.at[pl.ds(start, block_k), pl.ds(lo, width)], mask=loadable, other=0)
            k1, k2 = load(0, half), load(half, half)
            v = plgpu.load(v_in_ref.at[pl.ds(start, block_k), :], mask=loadable, other=0)
            scores = jnp.where((keys < prefix_end)[None, :], scores_of(k1, k2), -jnp.inf)
        else:
            k1, k2 = k_in_ref[pl.ds(start, block_k), pl.ds(0, half)], k_in_ref[pl.ds(start, block_k), pl.ds(half, half)]
            v = v_in_ref[pl.ds(start, block_k), :]
            scores = scores_of(k1, k2)
        return accumulate(carry, scores, v, masked=masked)

    def new_keys(first, count, token_mask):
        """Rotated keys and the values of block tokens [first, first + count)."""
        ck = plgpu.load(cos_ref.at[pl.ds(first, count), :], mask=token_mask[:, None], other=0.0)
        sk = plgpu.load(sin_ref.at[pl.ds(first, count), :], mask=token_mask[:, None], other=0.0)
        load = lambda head, lo, width: with_bias(plgpu.load(  # noqa: E731
            qkv_ref.at[pl.ds(first, count), head, pl.ds(lo, width)], mask=token_mask[:, None], other=0),
            bias_ref[head, pl.ds(lo, width)][None, :])
        k1, k2 = _rotate(load(key_head, 0, half), load(key_head, half, half), ck, sk, dtype)
        return k1, k2, load(value_head, 0, 2 * half)

    def block_step(tile_index, carry):
        key_tokens = tile_index * block_k + jnp.arange(block_k, dtype=jnp.int32)
        key_ok = key_tokens < num_tokens
        k1, k2, v = new_keys(tile_index * block_k, block_k, key_ok)
        key_position = q_start + key_tokens
        if block_size is None:
            visible = key_position[None, :] <= row_position[:, None]
        else:
            visible = (key_position // block_size)[None, :] <= (row_position // block_size)[:, None]
        visible &= (key_ok & (key_position < kv_len))[None, :]
        return accumulate(carry, jnp.where(visible, scores_of(k1, k2), -jnp.inf), v, masked=True)

    # The block's keys this tile may see end where its last real query's visibility ends.
    last_token = jnp.minimum(first_token + block_t, num_tokens) - 1
    block_end = jnp.clip(jnp.minimum(visible_key_end(q_start + last_token, block_size), kv_len) - q_start,
                         0, num_tokens)
    prefix_tiles, full_prefix_tiles = pl.cdiv(prefix_end, block_k), prefix_end // block_k
    total_tiles = prefix_tiles + pl.cdiv(block_end, block_k)
    tiles_per_split = pl.cdiv(total_tiles, num_splits)
    lo = jnp.minimum(split * tiles_per_split, total_tiles)
    hi = jnp.minimum(lo + tiles_per_split, total_tiles)

    carry = (jnp.zeros((block_m, 2 * half), jnp.float32), jnp.full((block_m,), -jnp.inf, jnp.float32),
             jnp.zeros((block_m,), jnp.float32))
    carry = lax.fori_loop(lo, jnp.minimum(hi, full_prefix_tiles), functools.partial(prefix_step, masked=False),
                          carry)
    carry = lax.fori_loop(jnp.maximum(lo, full_prefix_tiles), jnp.minimum(hi, prefix_tiles),
                          functools.partial(prefix_step, masked=True), carry)
    acc, row_max, row_sum = lax.fori_loop(jnp.maximum(lo, prefix_tiles) - prefix_tiles,
                                          jnp.maximum(hi, prefix_tiles) - prefix_tiles, block_step, carry)

    seen_any = row_sum > 0.0
    out = acc / jnp.where(seen_any, row_sum, 1.0)[:, None]
    lse = jnp.where(seen_any, row_max + jnp.log(jnp.where(seen_any, row_sum, 1.0)), -jnp.inf)
    o_ref[pl.ds(tile * block_m, block_m), :] = out.astype(o_ref.dtype)
    lse_ref[pl.ds(tile * block_m, block_m)] = lse

    @pl.when(split == 0)
    def _append():  # this tile's tokens, once per KV head
        writable = token_ok & (q_start + tokens < num_keys)
        k1, k2, v = new_keys(first_token, block_t, writable)
        rows = pl.ds(q_start + first_token, block_t)
        plgpu.store(k_out_ref.at[rows, pl.ds(0, half)], k1, mask=writable[:, None])
        plgpu.store(k_out_ref.at[rows, pl.ds(half, half)], k2, mask=writable[:, None])
        plgpu.store(v_out_ref.at[rows, :], v, mask=writable[:, None])


# Launch parameters left open are planned per shape (``plan_fused``); benchmarks may override this default.
DEFAULT_CONFIG = TritonConfig()


def plan_fused(config: TritonConfig, *, batch, num_kv_heads, num_rows, num_keys, head_dim, itemsize,
               sm_count=_H100_SM_COUNT) -> TritonConfig:
    """``gpu_triton.plan``, except where the cache is short enough that each program takes at most two key tiles
    (decode steps, drafter blocks and verify blocks over a few thousand keys).

    There a software pipeline has little to overlap, and its buffers cost shared memory and a prologue, so: 4
    warps, tiles of at most 64 rows, one stage, and for a lone decoding row 32-key tiles (twice the splits, to
    use more SMs) with two stages. H200, Qwen2.5-1.5B heads, 1024-token cache, µs per layer with the split merge
    (``benchmarks/append_splits_bench.py --sweep``): decode 7.93 -> 5.68 (one stage) -> 5.54 (two), a 32-token
    drafter block 12.44 -> 9.15. End to end, the decoding row's second stage took 1.5B decode from 1.297 to
    1.270 ms/token (two rounds each, one device call). Fields the config sets are kept."""
    shape = dict(batch=batch, num_kv_heads=num_kv_heads, num_rows=num_rows, num_keys=num_keys, head_dim=head_dim,
                 itemsize=itemsize, sm_count=sm_count)
    planned = plan(config, **shape)
    tiles_per_program = pl.cdiv(pl.cdiv(num_keys, planned.block_k), planned.num_splits)
    if tiles_per_program > 2:  # long walks: the 32k-tuned pipeline
        return planned
    block_m = config.block_m or min(planned.block_m, 64)
    lone_row = block_m <= 16  # one decoding token's grouped heads
    short = TritonConfig(block_m=block_m, block_k=config.block_k or (32 if lone_row else planned.block_k),
                         num_splits=config.num_splits, num_warps=config.num_warps or 4,
                         num_stages=config.num_stages or (2 if lone_row else 1))
    return plan(short, **shape)


@functools.partial(jax.jit, static_argnames=("num_q_heads", "block_size", "scale", "interpret", "config", "out_rows",
                                             "pdl"))
def append_attention(qkv, cos, sin, k_cache, v_cache, q_start, kv_len, *, num_q_heads, qkv_bias=None,
                     block_size=None, scale=None, interpret=False, config: TritonConfig | None = None,
                     out_rows=None, pdl: bool = False):
    """Same contract as ``pallas_kernels.reference.append_attention``; runs the fused Triton kernel.

    ``out_rows``: the output has that many token rows, zeros past the block (the padding rows of the GEMM that
    reads it, written by the split merge rather than by a pad kernel). ``pdl``: the kernels carry the
    instructions of programmatic dependent launch (``dependent_launch``)."""
    batch, qkv_rows, num_heads, head_dim = qkv.shape
    num_tokens = cos.shape[1]  # qkv may carry padding rows past the block (a lone row's two-row GEMM)
    num_keys, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if num_heads != num_q_heads + 2 * num_kv_heads or num_q_heads % num_kv_heads:
        raise ValueError(f"qkv has {num_heads} heads; expected {num_q_heads} query heads + 2 x {num_kv_heads}")
    if head_dim & (head_dim - 1) or head_dim < 32:
        raise ValueError(f"the Triton kernel needs a power-of-two head_dim >= 32, got {head_dim}")
    if cos.shape != (batch, num_tokens, head_dim // 2) or sin.shape != cos.shape or qkv_rows < num_tokens:
        raise ValueError(f"cos, sin must be [B, T, D/2] with T <= qkv's {qkv_rows} rows and D = {head_dim}; got "
                         f"{cos.shape}, {sin.shape}")
    if out_rows is not None and out_rows < num_tokens:
        raise ValueError(f"out_rows ({out_rows}) must be at least the block's {num_tokens} tokens")
    group = num_q_heads // num_kv_heads
    group_pad = _next_power_of_two(group)
    scale = head_dim ** -0.5 if scale is None else scale
    # Zeros when the model has no bias: an extra 2 KB read, not a second kernel variant.
    qkv_bias = (jnp.zeros((num_heads, head_dim), qkv.dtype) if qkv_bias is None
                else qkv_bias.reshape(num_heads, head_dim))
    config = DEFAULT_CONFIG if config is None else config
    cfg = plan_fused(config, batch=batch, num_kv_heads=num_kv_heads, num_rows=num_tokens * group_pad,
               num_keys=num_keys, head_dim=head_dim, itemsize=k_cache.dtype.itemsize,
               sm_count=_H100_SM_COUNT if interpret else _sm_count())
    block_t = max(cfg.block_m, group_pad) // group_pad
    num_tiles = pl.cdiv(num_tokens, block_t)
    num_rows = num_tiles * block_t * group_pad
    block_k = min(cfg.block_k, max(16, _next_power_of_two(num_keys)))
    precision = lax.Precision.HIGHEST if k_cache.dtype == jnp.float32 else None
    partial_dtype = qkv.dtype if cfg.num_splits == 1 else jnp.float32

    cache_length = num_keys
    if num_keys < block_k:  # a cache shorter than one key tile (tests): pad it rather than special-case
        padding = ((0, 0), (0, block_k - num_keys), (0, 0), (0, 0))
        k_cache, v_cache, num_keys = jnp.pad(k_cache, padding), jnp.pad(v_cache, padding), block_k
        kv_len = jnp.minimum(jnp.asarray(kv_len, jnp.int32), cache_length)

    kernel = functools.partial(
        _kernel, scale=scale, block_size=block_size, num_tokens=num_tokens, num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads, group=group, group_pad=group_pad, block_t=block_t, block_k=block_k,
        num_splits=cfg.num_splits, precision=precision, pdl=pdl, interpret=bool(interpret))
    batch_of = lambda bh: bh // num_kv_heads  # noqa: E731
    head_of = lambda bh: bh % num_kv_heads  # noqa: E731
    per_row = lambda *shape: pl.BlockSpec(  # noqa: E731
        (None, *shape), lambda t, s, bh: (batch_of(bh),) + (0,) * len(shape))
    cache_spec = pl.BlockSpec((None, num_keys, None, head_dim), lambda t, s, bh: (batch_of(bh), 0, head_of(bh), 0))
    # With PDL the kernel indexes q_start and kv_len itself, after the wait (a block's index is computed before).
    lengths_spec = pl.BlockSpec((batch,), lambda t, s, bh: (0,)) if pdl else per_row()
    partial_out, partial_lse, k_cache, v_cache = pl.pallas_call(
        kernel,
        grid=(num_tiles, cfg.num_splits, batch * num_kv_heads),
        in_specs=[lengths_spec, lengths_spec, per_row(qkv_rows, num_heads, head_dim),
                  pl.BlockSpec((num_heads, head_dim), lambda t, s, bh: (0, 0)), per_row(num_tokens, head_dim // 2),
                  per_row(num_tokens, head_dim // 2), cache_spec, cache_spec],
        out_specs=[
            pl.BlockSpec((None, None, None, num_rows, head_dim), lambda t, s, bh: (batch_of(bh), head_of(bh), s, 0, 0)),
            pl.BlockSpec((None, None, None, num_rows), lambda t, s, bh: (batch_of(bh), head_of(bh), s, 0)),
            cache_spec, cache_spec,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_kv_heads, cfg.num_splits, num_rows, head_dim), partial_dtype),
            jax.ShapeDtypeStruct((batch, num_kv_heads, cfg.num_splits, num_rows), jnp.float32),
            jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
            jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype),
        ],
        input_output_aliases={6: 2, 7: 3},
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name="append_attention",
    )(jnp.asarray(q_start, jnp.int32), jnp.asarray(kv_len, jnp.int32), qkv, qkv_bias, cos.astype(jnp.float32),
      sin.astype(jnp.float32), k_cache, v_cache)

    if num_keys != cache_length:  # positions past the real cache are dropped, as in the reference
        k_cache, v_cache = k_cache[:, :cache_length], v_cache[:, :cache_length]
    if cfg.num_splits > 1:
        out = merge_splits_to_heads(partial_out, partial_lse, num_tokens=num_tokens, group=group,
                                    rows_per_token=group_pad, out_dtype=qkv.dtype, interpret=interpret,
                                    out_rows=out_rows, pdl=pdl)
        return out, k_cache, v_cache
    rows = partial_out[:, :, 0].reshape(batch, num_kv_heads, num_tiles * block_t, group_pad, head_dim)
    out = rows[:, :, :num_tokens, :group].transpose(0, 2, 1, 3, 4).reshape(batch, num_tokens, num_q_heads, head_dim)
    return pad_token_rows(out.astype(qkv.dtype), out_rows), k_cache, v_cache


__all__ = ["append_attention", "plan_fused"]
