"""Prefix-block attention on NVIDIA GPUs: a Pallas kernel lowered through Triton, split over the KV length.

Work decomposition (flash decoding): the grid is (query-row tile, KV split, batch x KV head). Each program
takes ``block_m`` rows of the grouped queries of one KV head (see ``query_rows``), walks its share of the
visible keys in ``block_k`` tiles with an online softmax, and writes a normalised partial output plus its
log-sum-exp. A second, small kernel (``merge_splits_to_heads``) merges the splits and writes the heads in the
caller's layout. Splitting the keys is what fills 132 SMs when a
32-row block meets a long cache: without it a 7B layer has only ``Hkv x tiles`` programs.

Masking costs nothing on most tiles: keys below the tile's first query position (and below ``kv_len``) are
visible to every row, so those tiles run without a mask; keys past the tile's last visible key are never
loaded. Only the few tiles on the causal / block frontier compute a per-element mask.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import dependent_launch
from pallas_kernels.query_rows import check_shapes, from_rows, to_rows, visible_key_end

_H100_SM_COUNT = 132


@dataclasses.dataclass(frozen=True)
class TritonConfig:
    """Launch parameters; ``None`` fields are chosen by ``plan`` from the shapes."""

    block_m: int | None = None  # grouped query rows per program
    block_k: int | None = None  # keys per inner-loop step
    num_splits: int | None = None  # programs sharing one (row tile, KV head) along the keys
    num_warps: int | None = None
    num_stages: int | None = None  # software-pipelining depth of the key loop


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _sm_count() -> int:
    device = jax.devices()[0]
    return getattr(device, "core_count", None) or _H100_SM_COUNT


def _resident_programs_per_sm(block_m: int) -> int:
    """How many programs of this tile shape one SM holds at once (an estimate from shared memory, bf16,
    head_dim 128): a 128-row tile with 3 stages of 64-key K/V tiles needs ~128 KB of the 228 KB, a 64-row one
    with 2 stages ~80 KB."""
    return 1 if block_m >= 128 else 2


def _choose_num_splits(programs_per_split: int, slots: int, max_splits: int) -> int:
    """Fewest splits whose programs keep >= 90% of ``slots`` busy until the last wave ends.

    140 programs on 132 slots take two waves for 6% more work than one (53% busy); 256 on 264 take one (97%).
    Without such a count (short caches), the one that keeps the most slots busy.
    """
    def efficiency(splits):
        total = programs_per_split * splits
        return total / (pl.cdiv(total, slots) * slots)

    candidates = range(1, max(1, max_splits) + 1)
    for splits in candidates:
        if efficiency(splits) >= 0.9:
            return splits
    return max(candidates, key=lambda splits: (min(programs_per_split * splits, slots), efficiency(splits)))


def plan(config: TritonConfig, *, batch, num_kv_heads, num_rows, num_keys, head_dim, itemsize,
         sm_count=_H100_SM_COUNT) -> TritonConfig:
    """Fills in the launch parameters a config leaves open.

    Defaults from the H100 sweep (benchmarks/kernels_bench.py --sweep, README.md): at 32k keys, 128-row
    tiles on 8 warps with a 3-deep pipeline beat 64-row tiles for 192, 224 and 896 grouped rows (1.5B / 7B
    at Tq=32, 7B at Tq=128). Fewer rows than 128 take the smallest tile that holds them.
    """
    del itemsize
    block_m = config.block_m or (128 if num_rows >= 128 else max(16, _next_power_of_two(num_rows)))
    block_k = config.block_k or 64
    num_warps = config.num_warps or (8 if block_m >= 128 else 4)
    num_stages = config.num_stages or (3 if block_m >= 128 else 2)
    num_splits = config.num_splits
    if num_splits is None:
        programs_per_split = pl.cdiv(num_rows, block_m) * batch * num_kv_heads
        slots = sm_count * _resident_programs_per_sm(block_m)
        # Long caches reach full occupancy with a few splits of many tiles each; short ones (a decode step over
        # 1k keys: 2 KV heads x 1 row tile) need a split per key tile to occupy more than a handful of SMs.
        by_length = max(1, num_keys // block_k)
        num_splits = _choose_num_splits(programs_per_split, slots, by_length)
    del head_dim
    return TritonConfig(block_m=block_m, block_k=block_k, num_splits=num_splits, num_warps=num_warps,
                        num_stages=num_stages)


def online_softmax_update(carry, scores, v, *, masked: bool, precision):
    """One key tile of flash attention: (acc [M, D], row max [M], row sum [M]) updated with scores [M, K]
    (float32, -inf where masked) and the tile's values v [K, D]. ``masked``: a row may have seen no key yet,
    so exp() is kept away from (-inf) - (-inf)."""
    acc, row_max, row_sum = carry
    new_max = jnp.maximum(row_max, jnp.max(scores, axis=1))
    safe_max = jnp.where(new_max == -jnp.inf, 0.0, new_max) if masked else new_max
    correction = jnp.exp(row_max - safe_max)
    probs = jnp.exp(scores - safe_max[:, None])
    row_sum = row_sum * correction + jnp.sum(probs, axis=1)
    acc = acc * correction[:, None] + lax.dot_general(
        probs.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)
    return acc, new_max, row_sum


def _kernel(q_start_ref, kv_len_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, block_size, group,
            num_rows, block_m, block_k, num_splits, precision):
    tile, split = pl.program_id(0), pl.program_id(1)
    q_start = q_start_ref[()]
    kv_len = kv_len_ref[()]

    first_row = tile * block_m
    rows = first_row + jnp.arange(block_m, dtype=jnp.int32)
    row_is_real = rows < num_rows
    row_key_end = jnp.minimum(visible_key_end(q_start + rows // group, block_size), kv_len)
    last_row = jnp.minimum(first_row + block_m, num_rows) - 1
    # Keys below all_end are visible to every row of the tile; keys from any_end on, to none.
    all_end = jnp.maximum(jnp.minimum(visible_key_end(q_start + first_row // group, block_size), kv_len), 0)
    any_end = jnp.maximum(jnp.minimum(visible_key_end(q_start + last_row // group, block_size), kv_len), 0)

    num_key_tiles = pl.cdiv(any_end, block_k)
    tiles_per_split = pl.cdiv(num_key_tiles, num_splits)
    lo = jnp.minimum(split * tiles_per_split, num_key_tiles)
    hi = jnp.minimum(lo + tiles_per_split, num_key_tiles)
    mid = jnp.clip(all_end // block_k, lo, hi)  # [lo, mid) unmasked, [mid, hi) on the frontier

    q = plgpu.load(q_ref.at[pl.ds(first_row, block_m), :], mask=row_is_real[:, None], other=0)

    def step(key_tile, carry, *, on_frontier):
        start = key_tile * block_k
        keys = start + jnp.arange(block_k, dtype=jnp.int32)
        if on_frontier:
            # Rows past any_end may hold stale or uninitialised cache entries: never load them.
            loadable = (keys < any_end)[:, None]
            k = plgpu.load(k_ref.at[pl.ds(start, block_k), :], mask=loadable, other=0)
            v = plgpu.load(v_ref.at[pl.ds(start, block_k), :], mask=loadable, other=0)
        else:
            k = k_ref[pl.ds(start, block_k), :]
            v = v_ref[pl.ds(start, block_k), :]
        scores = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32) * scale
        if on_frontier:
            scores = jnp.where(keys[None, :] < row_key_end[:, None], scores, -jnp.inf)
        return online_softmax_update(carry, scores, v, masked=on_frontier, precision=precision)

    head_dim = q_ref.shape[-1]
    carry = (jnp.zeros((block_m, head_dim), jnp.float32),
             jnp.full((block_m,), -jnp.inf, jnp.float32),
             jnp.zeros((block_m,), jnp.float32))
    carry = lax.fori_loop(lo, mid, functools.partial(step, on_frontier=False), carry)
    acc, row_max, row_sum = lax.fori_loop(mid, hi, functools.partial(step, on_frontier=True), carry)

    seen_any = row_sum > 0.0
    out = acc / jnp.where(seen_any, row_sum, 1.0)[:, None]
    lse = jnp.where(seen_any, row_max + jnp.log(jnp.where(seen_any, row_sum, 1.0)), -jnp.inf)
    plgpu.store(o_ref.at[pl.ds(first_row, block_m), :], out.astype(o_ref.dtype), mask=row_is_real[:, None])
    plgpu.store(lse_ref.at[pl.ds(first_row, block_m)], lse, mask=row_is_real)


def merge_splits(partial_out, partial_lse):
    """Softmax-weighted merge of per-split results: [B, Hkv, splits, R, D], [B, Hkv, splits, R] -> [B, Hkv, R, D].

    Splits that saw no key carry lse = -inf and weigh nothing; a row no split saw comes out as zeros.
    """
    top = jnp.max(partial_lse, axis=2, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.exp(partial_lse - top)
    total = jnp.sum(weights, axis=2)
    merged = jnp.sum(weights[..., None] * partial_out, axis=2)
    return merged / jnp.where(total > 0.0, total, 1.0)[..., None]


def _merge_kernel(lse_ref, partial_ref, o_ref, *, num_splits, num_kv_heads, group, rows_per_token, num_tokens, pdl,
                  interpret):
    kv_head, token, head = pl.program_id(0) % num_kv_heads, pl.program_id(1), pl.program_id(2)
    if pdl:  # every load's row comes from the token, so all of them wait for the predecessor kernel
        token = dependent_launch.triton_after_predecessor(token, interpret=interpret)
    merge = functools.partial(_merge_row, lse_ref, partial_ref, o_ref, kv_head, token, head, num_splits=num_splits,
                              group=group, rows_per_token=rows_per_token)
    if o_ref.shape[0] == num_tokens:  # no padding rows
        return merge()

    @pl.when(token >= num_tokens)
    def _padding_row():
        o_ref[token, kv_head * group + head, :] = jnp.zeros(o_ref.shape[-1:], o_ref.dtype)

    pl.when(token < num_tokens)(merge)


def _merge_row(lse_ref, partial_ref, o_ref, kv_head, token, head, *, num_splits, group, rows_per_token):
    row = token * rows_per_token + head
    # One output row per program: its splits' [splits, D] partials come in one load, so a program is a single
    # round trip to memory however many splits there are.
    splits_pad = _next_power_of_two(num_splits)
    splits = pl.ds(0, splits_pad)
    real = jnp.arange(splits_pad) < num_splits
    lse = plgpu.load(lse_ref.at[splits, row], mask=real, other=-jnp.inf)
    partial = plgpu.load(partial_ref.at[splits, row, :], mask=real[:, None], other=0.0)
    top = jnp.max(lse)
    weights = jnp.exp(lse - jnp.where(top == -jnp.inf, 0.0, top))
    total = jnp.sum(weights)
    out = jnp.sum(weights[:, None] * partial, axis=0) / jnp.where(total > 0.0, total, 1.0)
    o_ref[token, kv_head * group + head, :] = out.astype(o_ref.dtype)


def merge_splits_to_heads(partial_out, partial_lse, *, num_tokens: int, group: int, rows_per_token: int,
                          out_dtype, interpret: bool = False, out_rows: int | None = None, pdl: bool = False):
    """``merge_splits`` and the inverse of ``query_rows.to_rows`` in one Triton kernel, where XLA ran three
    (a max, the exponentials, the weighted sum) plus a transpose for every attention call. One program per
    output row (H200, 1.5B decode: 70 µs per token for 28 layers, against 110 for XLA's kernels and 104 for a
    first version with one program per (token, KV head) that walked the splits).

    partial_out [B, Hkv, splits, R, D], partial_lse [B, Hkv, splits, R]: row ``t * rows_per_token + g`` is query
    position t, head g of the KV head's group (rows with g >= ``group`` are padding). Returns [B, T, Hq, D]
    in ``out_dtype``; a row no split saw comes out as zeros. ``out_rows``: T rows of output, zeros past
    ``num_tokens`` (the padding rows of the GEMM that reads it). ``pdl``: with the instructions of programmatic
    dependent launch (``dependent_launch``)."""
    batch, num_kv_heads, num_splits, _, head_dim = partial_out.shape
    out_rows = num_tokens if out_rows is None else out_rows
    if out_rows < num_tokens:
        raise ValueError(f"out_rows ({out_rows}) must be at least num_tokens ({num_tokens})")
    num_q_heads = num_kv_heads * group
    kernel = functools.partial(_merge_kernel, num_splits=num_splits, num_kv_heads=num_kv_heads, group=group,
                               rows_per_token=rows_per_token, num_tokens=num_tokens, pdl=pdl,
                               interpret=interpret)
    per_head = lambda *shape: pl.BlockSpec(  # noqa: E731
        (None, None, *shape), lambda bh, t, g: (bh // num_kv_heads, bh % num_kv_heads) + (0,) * len(shape))
    return pl.pallas_call(
        kernel,
        # Batch rows outermost: a row's output block is revisited only by consecutive programs.
        grid=(batch * num_kv_heads, out_rows, group),
        in_specs=[per_head(*partial_lse.shape[2:]), per_head(*partial_out.shape[2:])],
        out_specs=pl.BlockSpec((None, out_rows, num_q_heads, head_dim),
                               lambda bh, t, g: (bh // num_kv_heads, 0, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, out_rows, num_q_heads, head_dim), out_dtype),
        compiler_params=plgpu.CompilerParams(num_warps=2, num_stages=1),
        interpret=interpret,
        name="merge_attention_splits",
    )(partial_lse, partial_out)


@functools.partial(jax.jit, static_argnames=("block_size", "scale", "interpret", "config"))
def prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False,
                           config: TritonConfig = TritonConfig()):
    """Same contract as ``pallas_kernels.reference.prefix_block_attention``; runs the Triton kernel."""
    check_shapes(q, k, v, q_start, kv_len)
    batch, num_queries, num_q_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"the Triton kernel needs a power-of-two head_dim >= 16, got {head_dim}")
    group = num_q_heads // num_kv_heads
    num_rows = num_queries * group
    scale = head_dim ** -0.5 if scale is None else scale
    cfg = plan(config, batch=batch, num_kv_heads=num_kv_heads, num_rows=num_rows, num_keys=num_keys,
               head_dim=head_dim, itemsize=k.dtype.itemsize,
               sm_count=_H100_SM_COUNT if interpret else _sm_count())
    num_tiles = pl.cdiv(num_rows, cfg.block_m)
    out_dtype = q.dtype
    q = q.astype(k.dtype)  # the products run in the cache's dtype; a no-op when they agree
    # Only float32 inputs ask for exact float32 products; Triton would use tf32 by default.
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    partial_dtype = out_dtype if cfg.num_splits == 1 else jnp.float32

    q_rows = to_rows(q, num_kv_heads)
    if num_keys < cfg.block_k:  # a cache shorter than one key tile (tests): pad it rather than special-case
        padding = ((0, 0), (0, cfg.block_k - num_keys), (0, 0), (0, 0))
        k, v = jnp.pad(k, padding), jnp.pad(v, padding)
    batch_of = lambda bh: bh // num_kv_heads  # noqa: E731
    head_of = lambda bh: bh % num_kv_heads  # noqa: E731
    kernel = functools.partial(_kernel, scale=scale, block_size=block_size, group=group, num_rows=num_rows,
                               block_m=cfg.block_m, block_k=cfg.block_k, num_splits=cfg.num_splits,
                               precision=precision)
    partial_out, partial_lse = pl.pallas_call(
        kernel,
        grid=(num_tiles, cfg.num_splits, batch * num_kv_heads),  # row tiles vary fastest: they share K/V in L2
        in_specs=[
            pl.BlockSpec((None,), lambda t, s, bh: (batch_of(bh),)),
            pl.BlockSpec((None,), lambda t, s, bh: (batch_of(bh),)),
            pl.BlockSpec((None, None, num_rows, head_dim), lambda t, s, bh: (batch_of(bh), head_of(bh), 0, 0)),
            pl.BlockSpec((None, k.shape[1], None, head_dim), lambda t, s, bh: (batch_of(bh), 0, head_of(bh), 0)),
            pl.BlockSpec((None, k.shape[1], None, head_dim), lambda t, s, bh: (batch_of(bh), 0, head_of(bh), 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, num_rows, head_dim),
                         lambda t, s, bh: (batch_of(bh), head_of(bh), s, 0, 0)),
            pl.BlockSpec((None, None, None, num_rows), lambda t, s, bh: (batch_of(bh), head_of(bh), s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, num_kv_heads, cfg.num_splits, num_rows, head_dim), partial_dtype),
            jax.ShapeDtypeStruct((batch, num_kv_heads, cfg.num_splits, num_rows), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name="prefix_block_attention",
    )(jnp.asarray(q_start, jnp.int32), jnp.minimum(jnp.asarray(kv_len, jnp.int32), num_keys), q_rows, k, v)

    if cfg.num_splits == 1:
        return from_rows(partial_out[:, :, 0], num_queries).astype(out_dtype)
    return merge_splits_to_heads(partial_out, partial_lse, num_tokens=num_queries, group=group,
                                 rows_per_token=group, out_dtype=out_dtype, interpret=interpret)


def describe(q_shape, k_shape, dtype, config: TritonConfig = TritonConfig()) -> TritonConfig:
    """The launch parameters ``prefix_block_attention`` would use for these shapes (for benchmarks)."""
    batch, num_queries, num_q_heads, head_dim = q_shape
    num_keys, num_kv_heads = k_shape[1], k_shape[2]
    return plan(config, batch=batch, num_kv_heads=num_kv_heads,
                num_rows=num_queries * (num_q_heads // num_kv_heads), num_keys=num_keys, head_dim=head_dim,
                itemsize=jnp.dtype(dtype).itemsize, sm_count=_sm_count())


__all__ = ["TritonConfig", "prefix_block_attention", "merge_splits", "merge_splits_to_heads", "online_softmax_update",
           "plan", "describe"]
