"""Prefix-block attention on Hopper GPUs: a Pallas kernel lowered through Mosaic GPU (WGMMA tensor cores, TMA
copies, warp specialisation), split over the KV length like ``gpu_triton``.

Work decomposition. The grouped query rows of one KV head (``query_rows``, position-major) are padded to a
multiple of ``64 * compute_warpgroups``; the grid is (row tile x KV split, KV head, batch). A program has
``compute_warpgroups`` warpgroups of 64 rows each (WGMMA's M) plus one memory warpgroup that streams
[block_kv, D] K and V tiles by TMA into a ring of ``max_concurrent_steps`` shared-memory slots, released by the
compute warpgroups through barriers (the FlashAttention-3 structure of JAX's ``attention_mgpu`` example, with its
ping-pong schedule barrier for two compute warpgroups). Per key tile a compute warpgroup does S = Q K^T on tensor
cores into a float32 accumulator, the online softmax in registers (base 2, the scale folded into the exponent)
and O += P V with P from registers. Key tiles past the block's last visible key are never loaded; only tiles past
the first query's limit compute a per-element mask.

Unlike the Triton kernel, it loads whole key tiles: the part of the last visible tile past ``kv_len`` (or past the
causal limit) is read and given probability zero, so it must be finite (zero times NaN is NaN in the P V
product). ffjax's caches are zero-initialised and written only with finite keys and values, so this holds there.
Moving that tile back to end at the visible keys needs a TMA offset that Mosaic GPU's layout inference cannot
prove divisible (JAX 0.11.2 asserted), so it is not done. Each program writes its normalised partial output and its
log-sum-exp; ``gpu_triton.merge_splits_to_heads`` merges the splits into [B, Tq, Hq, D].

Measured on an H200 at 32k keys (BENCHMARKS.md, issue 5): 1.28x the Triton kernel at Tq 32 and 1.52x at Tq 128
with Qwen2.5-7B's 28/4 heads, 1.03-1.18x with the 1.5B's 12/2. It runs bf16/f16 only, head_dim a multiple of 64
and a cache length a multiple of ``block_kv``; ``supports`` says whether a call fits, and the dispatch uses the
Triton kernel where it does not.

Its CPU tests run it in Mosaic GPU's interpreter, which has no WGMMA on a transposed shared-memory operand nor on
a register operand: there the two products are ``dot_general`` on the same tiles (everything else, the
pipeline, barriers, masks, splits and merge, is the kernel's own code).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import dependent_launch
from pallas_kernels.gpu_triton import _choose_num_splits, _sm_count, merge_splits_to_heads
from pallas_kernels.query_rows import check_shapes, from_rows, to_rows, visible_key_end

_LOG2E = math.log2(math.e)
_WGMMA_ROWS = 64


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    """Launch parameters; ``num_splits=None`` is chosen from the shapes (``gpu_triton._choose_num_splits``)."""

    block_kv: int = 128  # keys per pipeline step
    max_concurrent_steps: int = 2  # K/V slots in the shared-memory ring
    compute_warpgroups: int = 2  # 64 query rows each
    num_splits: int | None = None
    schedule_barrier: bool = True  # ping-pong the two compute warpgroups' softmax and products


def supports(q_shape, k_shape, dtype, config: MosaicConfig = MosaicConfig()) -> bool:
    """Whether the kernel takes these shapes: bf16/f16, head_dim a multiple of 64, whole key tiles."""
    return (jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and q_shape[-1] % 64 == 0
            and k_shape[1] % config.block_kv == 0)


def _interpret_params(interpret):
    if interpret is True:
        try:  # not exported by jax.experimental.pallas.mosaic_gpu (JAX 0.10-0.11)
            from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        except ImportError as error:
            raise NotImplementedError("this JAX has no Mosaic GPU interpreter") from error
        return InterpretGPUParams()
    return interpret or None


@functools.partial(jax.jit, static_argnames=("block_size", "scale", "interpret", "config", "pdl"))
def prefix_block_attention(q, k, v, q_start, kv_len, *, block_size=None, scale=None, interpret=False,
                           config: MosaicConfig = MosaicConfig(), pdl: bool = False):
    """Same contract as ``pallas_kernels.reference.prefix_block_attention``; runs the Mosaic GPU kernel.
    ``pdl``: it and the split merge carry the instructions of programmatic dependent launch
    (``dependent_launch``)."""
    check_shapes(q, k, v, q_start, kv_len)
    if not supports(q.shape, k.shape, q.dtype, config) or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"the Mosaic GPU kernel takes bf16/f16 q, k, v of one dtype, head_dim a multiple of 64 "
                         f"and a cache length a multiple of {config.block_kv}; got {q.dtype} {q.shape}, "
                         f"{k.dtype} {k.shape}")
    if config.compute_warpgroups not in (1, 2, 3) or config.block_kv % 64:
        raise ValueError(f"compute_warpgroups must be 1-3 and block_kv a multiple of 64: {config}")
    interpret = _interpret_params(interpret)
    batch, num_queries, num_q_heads, head_dim = q.shape
    num_keys, num_kv_heads = k.shape[1], k.shape[2]
    dtype = q.dtype
    group = num_q_heads // num_kv_heads
    num_rows = num_queries * group
    block_kv, warpgroups = config.block_kv, config.compute_warpgroups
    rows_per_program = _WGMMA_ROWS * warpgroups
    row_tiles = pl.cdiv(num_rows, rows_per_program)
    padded_rows = row_tiles * rows_per_program
    key_tiles = num_keys // block_kv
    # One program per SM (the K/V ring takes most of the shared memory): the SMs are the slots.
    num_splits = config.num_splits or _choose_num_splits(batch * num_kv_heads * row_tiles,
                                                          132 if interpret else _sm_count(), max(1, key_tiles // 2))
    num_splits = max(1, min(num_splits, key_tiles))
    ring = max(1, min(config.max_concurrent_steps, key_tiles))
    schedule = config.schedule_barrier and warpgroups == 2
    memory_registers = 40 if warpgroups < 3 else 24
    compute_registers = min(240, ((65536 - 128 * memory_registers) // (128 * warpgroups)) // 8 * 8)
    exponent_scale = (head_dim ** -0.5 if scale is None else scale) * _LOG2E

    q_rows = jnp.pad(to_rows(q, num_kv_heads), ((0, 0), (0, 0), (0, padded_rows - num_rows), (0, 0)))
    # Layouts are hints for the hardware lowering; the interpreter has no layout_cast.
    layout_cast = (lambda x, layout: x) if interpret else plgpu.layout_cast
    wgmma_layout = None if interpret else plgpu.Layout.WGMMA

    def visible_end(position, length):
        return jnp.minimum(visible_key_end(position, block_size), length)

    def kernel(q_start_ref, kv_len_ref, q_hbm, k_hbm, v_hbm, out_hbm, lse_hbm, scoped):
        smem, (k_ready, v_ready, q_ready), (k_free, v_free), schedule_bar = scoped
        q_smem_all, k_smem, v_smem, lse_smem_all = smem
        if pdl and not interpret:  # every warpgroup, before the first copy of q or of the cache (both may be new)
            dependent_launch.mosaic_wait_and_release()
        warpgroup = lax.axis_index("wg")
        tile_and_split = lax.axis_index("rs")
        row_tile = lax.rem(tile_and_split, jnp.int32(row_tiles))
        split = lax.div(tile_and_split, jnp.int32(row_tiles))
        head = lax.axis_index("h")
        row = lax.axis_index("b")
        first_position = q_start_ref[row]
        length = jnp.minimum(kv_len_ref[row], num_keys)
        # This split's key tiles: a share of those the block's last query can see.
        visible_tiles = lax.div(jnp.maximum(visible_end(first_position + num_queries - 1, length), 0)
                                + (block_kv - 1), jnp.int32(block_kv))
        per_split = lax.div(visible_tiles + (num_splits - 1), jnp.int32(num_splits))
        first_tile = split * per_split
        num_tiles = jnp.clip(visible_tiles - first_tile, 0, per_split)
        # Tiles every row sees whole (below the first query's limit) need no mask.
        unmasked_tiles = jnp.clip(lax.div(jnp.maximum(visible_end(first_position, length), 0), jnp.int32(block_kv))
                                  - first_tile, 0, num_tiles)

        def schedule_turn():
            if schedule:
                plgpu.barrier_arrive(schedule_bar)
                plgpu.barrier_wait(schedule_bar)

        @pl.when(warpgroup < warpgroups)
        def _compute():
            plgpu.set_max_registers(compute_registers, action="increase")
            q_smem = q_smem_all.at[warpgroup]
            lse_smem = lse_smem_all.at[warpgroup]
            first_row = row_tile * rows_per_program + warpgroup * _WGMMA_ROWS
            plgpu.copy_gmem_to_smem(q_hbm.at[row, head, pl.ds(first_row, _WGMMA_ROWS)], q_smem,
                                    q_ready.at[warpgroup])
            plgpu.barrier_wait(q_ready.at[warpgroup])
            row_max = layout_cast(jnp.full((_WGMMA_ROWS,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
            row_sum = layout_cast(jnp.full((_WGMMA_ROWS,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
            acc = layout_cast(jnp.full((_WGMMA_ROWS, head_dim), 0, jnp.float32), plgpu.Layout.WGMMA)

            @pl.when(num_tiles > 0)
            def _():
                plgpu.barrier_wait(k_ready.at[0])

            if schedule:
                pl.when(warpgroup == 1)(schedule_turn)

            def wait_for_next_keys(step):
                @pl.when(step + 1 < num_tiles)
                def _():
                    plgpu.barrier_wait(k_ready.at[lax.rem(step + 1, jnp.int32(ring))])

            def key_step(step, carry, masked: bool):
                acc, row_max, row_sum = carry
                slot = lax.rem(step, jnp.int32(ring))

                def scores_on_tensor_cores(acc_ref):
                    plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                    schedule_turn()
                    return acc_ref[...]

                if interpret:
                    scores = lax.dot_general(q_smem[...], k_smem.at[slot][...], (((1,), (1,)), ((), ())),
                                             preferred_element_type=jnp.float32)
                    schedule_turn()
                else:
                    scores = pl.run_scoped(scores_on_tensor_cores, plgpu.ACC((_WGMMA_ROWS, block_kv), jnp.float32))
                plgpu.barrier_arrive(k_free.at[slot])

                if masked:
                    row_ids = plgpu.broadcasted_iota(jnp.int32, scores.shape, 0, layout=wgmma_layout)
                    key_ids = plgpu.broadcasted_iota(jnp.int32, scores.shape, 1, layout=wgmma_layout)
                    position = lax.div(row_ids + first_row, jnp.int32(group)) + first_position
                    key = key_ids + (first_tile + step) * block_kv
                    scores = jnp.where(key < visible_end(position, length), scores, -jnp.inf)

                new_max = jnp.maximum(row_max, scores.max(axis=1) * exponent_scale)
                usable_max = jnp.where(new_max == -jnp.inf, 0.0, new_max) if masked else new_max
                correction = jnp.exp2(row_max - usable_max)
                row_max = new_max
                p = jnp.exp2(scores * exponent_scale - lax.broadcast_in_dim(usable_max, scores.shape, [0]))
                acc = acc * lax.broadcast_in_dim(correction, acc.shape, [0])
                row_sum = row_sum * correction
                p_low = p.astype(dtype)

                def end_softmax():
                    if schedule:
                        plgpu.barrier_arrive(schedule_bar)
                    plgpu.barrier_wait(v_ready.at[slot])
                    if schedule:
                        plgpu.barrier_wait(schedule_bar)

                if head_dim <= 128:  # keep the row sum's reduction ahead of the barrier (register pressure)
                    row_sum = row_sum + p.sum(axis=1)
                    acc, row_sum, row_max, p_low = lax.optimization_barrier((acc, row_sum, row_max, p_low))
                    end_softmax()
                else:
                    end_softmax()
                    row_sum = row_sum + p.sum(axis=1)

                def values_on_tensor_cores(acc_ref):
                    plgpu.wgmma(acc_ref, p_low, v_smem.at[slot])
                    wait_for_next_keys(step)

                if interpret:
                    acc = acc + lax.dot_general(p_low, v_smem.at[slot][...], (((1,), (0,)), ((), ())),
                                                preferred_element_type=jnp.float32)
                    wait_for_next_keys(step)
                else:
                    acc = pl.run_state(values_on_tensor_cores)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, row_max, row_sum

            carry = (acc, row_max, row_sum)
            carry = lax.fori_loop(0, unmasked_tiles, lambda i, c: key_step(i, c, False), carry)
            acc, row_max, row_sum = lax.fori_loop(unmasked_tiles, num_tiles, lambda i, c: key_step(i, c, True),
                                                  carry)
            if schedule:
                pl.when(warpgroup == 0)(schedule_turn)

            saw_none = row_sum == 0.0
            safe_sum = jnp.where(saw_none, 1.0, row_sum)
            q_smem[...] = (acc / lax.broadcast_in_dim(safe_sum, acc.shape, [0])).astype(dtype)
            # Natural-log log-sum-exp, as merge_splits_to_heads expects; -inf where this split saw no key.
            lse_smem[...] = jnp.where(saw_none, -jnp.inf, row_max / _LOG2E + jnp.log(safe_sum))
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_smem, out_hbm.at[row, head, split, pl.ds(first_row, _WGMMA_ROWS)])
            plgpu.copy_smem_to_gmem(lse_smem, lse_hbm.at[row, head, split, pl.ds(first_row, _WGMMA_ROWS)])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(warpgroup == warpgroups)
        def _memory():
            plgpu.set_max_registers(memory_registers, action="decrease")

            def fetch(step, slot):
                keys = (row, pl.ds((first_tile + step) * block_kv, block_kv), head)
                plgpu.copy_gmem_to_smem(k_hbm.at[keys], k_smem.at[slot], k_ready.at[slot])
                plgpu.copy_gmem_to_smem(v_hbm.at[keys], v_smem.at[slot], v_ready.at[slot])

            for i in range(ring):
                pl.when(i < num_tiles)(lambda i=i: fetch(jnp.int32(i), i))

            @pl.loop(0, jnp.maximum(num_tiles - ring, 0))
            def _refill(step):
                slot = lax.rem(step, jnp.int32(ring))
                keys = (row, pl.ds((first_tile + step + ring) * block_kv, block_kv), head)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.copy_gmem_to_smem(k_hbm.at[keys], k_smem.at[slot], k_ready.at[slot])
                plgpu.barrier_wait(v_free.at[slot])
                plgpu.copy_gmem_to_smem(v_hbm.at[keys], v_smem.at[slot], v_ready.at[slot])

    def entry(q_start_ref, kv_len_ref, q_hbm, k_hbm, v_hbm, out_hbm, lse_hbm):
        swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
        scratch = [
            plgpu.SMEM((warpgroups, _WGMMA_ROWS, head_dim), dtype, transforms=swizzled),
            plgpu.SMEM((ring, block_kv, head_dim), dtype, transforms=swizzled),
            plgpu.SMEM((ring, block_kv, head_dim), dtype, transforms=swizzled),
            plgpu.SMEM((warpgroups, _WGMMA_ROWS), jnp.float32),
        ]
        pl.run_scoped(
            lambda *scoped: kernel(q_start_ref, kv_len_ref, q_hbm, k_hbm, v_hbm, out_hbm, lse_hbm, scoped),
            scratch,
            (plgpu.Barrier(num_barriers=ring), plgpu.Barrier(num_barriers=ring),
             plgpu.Barrier(num_barriers=warpgroups)),
            (plgpu.Barrier(num_arrivals=warpgroups, num_barriers=ring),) * 2,
            plgpu.Barrier(num_arrivals=warpgroups),
            collective_axes="wg",
        )

    out_type = (jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, padded_rows, head_dim), dtype),
                jax.ShapeDtypeStruct((batch, num_kv_heads, num_splits, padded_rows), jnp.float32))
    call = plgpu.kernel(entry, out_type=out_type, grid=(row_tiles * num_splits, num_kv_heads, batch),
                        grid_names=("rs", "h", "b"), num_threads=warpgroups + 1, thread_name="wg",
                        compiler_params=plgpu.CompilerParams(approx_math=True),
                        **({"interpret": interpret} if interpret else {}))
    partial_out, partial_lse = call(jnp.asarray(q_start, jnp.int32), jnp.asarray(kv_len, jnp.int32), q_rows, k, v)
    if num_splits == 1:
        return from_rows(partial_out[:, :, 0, :num_rows], num_queries)
    return merge_splits_to_heads(partial_out, partial_lse, num_tokens=num_queries, group=group, rows_per_token=group,
                                 out_dtype=dtype, interpret=bool(interpret), pdl=pdl)


__all__ = ["MosaicConfig", "prefix_block_attention", "supports"]
