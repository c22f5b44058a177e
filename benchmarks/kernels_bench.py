"""GPU benchmark of prefix-block attention: ffjax's Pallas kernels (Triton and Mosaic GPU) vs the jnp reference
under XLA vs cuDNN vs tokamax's kernels (where tokamax is installed).

Run on the GPU machine: ``PYTHONPATH=. python3 benchmarks/kernels_bench.py [--quick] [--contexts N ...]
[--sweep] [--mosaic-sweep] [--out DIR]``.

What is measured, per shape (batch 1, bf16, head_dim 128, the block of Tq queries at the end of a context of
``ctx`` keys: q_start = ctx - Tq, kv_len = ctx = cache length):
- time per attention call. Each timed dispatch runs the op on several independent input sets in a row (one
  jit), so launch overhead is amortised and, from 4k keys on, the sets together overflow the 50 MB L2: the K/V
  come from HBM as they would inside a model. Median over repeats.
- achieved bytes/s = (visible K+V bytes + Q + O bytes) / time, against the read bandwidth measured in the same
  run (the fastest of several large reads, ``common.measured_read_bandwidth``); and the floor
  max(bytes / bandwidth, flops / measured bf16 matmul rate), because with 6-7 query heads per KV head and
  Tq >= 32 the tile is as much arithmetic as it is reading.
- cuDNN (``jax.nn.dot_product_attention(implementation="cudnn")``) cannot express a causal or block-causal mask
  whose diagonal is offset by q_start; it runs with only the kv_len padding mask, i.e. the whole prefix visible
  to every query. At Tq << ctx that is the same work to within Tq / ctx.
Prints a compact table last; writes every number to $OUT/kernels_bench.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from pallas_kernels import gpu_mosaic, gpu_triton, reference
from pallas_kernels.query_rows import visible_key_end

LAYOUTS = {"7b": (28, 4), "1.5b": (12, 2)}  # (query heads, KV heads) of Qwen2.5-7B and -1.5B
HEAD_DIM = 128
L2_BYTES = 50 << 20


def measure_matmul_rate(n=8192):
    """bf16 FLOP/s of an n^3 product on random operands."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.bfloat16)
    product = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.bfloat16))
    return 2 * n ** 3 / common.time_back_to_back(lambda: product(a, b), repeats=10)


def visible_pairs(num_queries, q_start, kv_len, block_size):
    """Number of (query, key) pairs the mask lets through, for one row and one head."""
    positions = q_start + np.arange(num_queries)
    if block_size is None:
        ends = positions + 1
    else:
        ends = (positions // block_size + 1) * block_size
    return int(np.minimum(ends, kv_len).sum())


def make_sets(ctx, num_queries, num_q_heads, num_kv_heads, num_sets, seed):
    sets = []
    for i in range(num_sets):
        kq, kk, kv = jax.random.split(jax.random.key(seed + i), 3)
        q = jax.random.normal(kq, (1, num_queries, num_q_heads, HEAD_DIM), jnp.bfloat16)
        k = jax.random.normal(kk, (1, ctx, num_kv_heads, HEAD_DIM), jnp.bfloat16)
        v = jax.random.normal(kv, (1, ctx, num_kv_heads, HEAD_DIM), jnp.bfloat16)
        sets.append((q, k, v))
    return sets


def stand_in_for_xprof():
    """tokamax's package imports xprof's CLI tools for its own profiler, which this bench never calls; xprof
    pulls in a cloud-storage client and a database, so where it is absent an empty module stands in for it."""
    import importlib.machinery
    import importlib.util
    import types
    # Checked through sys.modules first: find_spec raises for a module there whose __spec__ is None, which is
    # how the second call found the first call's stand-ins (H200, 2026-12-05: "xprof.__spec__ is None").
    if "xprof" in sys.modules or importlib.util.find_spec("xprof") is not None:
        return
    for name in ("xprof", "xprof.cli", "xprof.cli.tools", "xprof.cli.tools.get_kernel_stats_tool"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        module.__path__ = []  # a package, so the submodules below it import
        sys.modules[name] = module
    for parent, child in (("xprof", "cli"), ("xprof.cli", "tools"), ("xprof.cli.tools", "get_kernel_stats_tool")):
        setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])


def implementations(block_size, config, mosaic_config=gpu_mosaic.MosaicConfig()):
    def pallas(q, k, v, q_start, kv_len):
        return gpu_triton.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, config=config)

    def xla(q, k, v, q_start, kv_len):
        return reference.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size)

    def cudnn(q, k, v, q_start, kv_len):
        del q_start  # see the module docstring: cuDNN gets the padding mask only
        return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_len, implementation="cudnn")

    def mosaic(q, k, v, q_start, kv_len, pdl=False):
        return gpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size,
                                                 config=mosaic_config, pdl=pdl)

    impls = {"pallas_triton": pallas, "pallas_mosaic": mosaic, "xla_reference": xla, "cudnn_prefix_only": cudnn,
             # the same kernel and merge with the PDL instructions (pallas_kernels.dependent_launch)
             "pallas_mosaic_pdl": functools.partial(mosaic, pdl=True)}
    try:  # optional: tokamax's kernels take the exact mask as a per-query key range (k_end)
        stand_in_for_xprof()
        from tokamax._src.ops.attention import api as tokamax_api
        from tokamax._src.ops.attention import base as tokamax_base
    except Exception as error:  # noqa: BLE001 - absent or incompatible: skip, say why once
        implementations.tokamax_error = f"{type(error).__name__}: {error}"[:300]
        return impls

    def tokamax(name):
        def run(q, k, v, q_start, kv_len):
            positions = q_start[:, None] + jnp.arange(q.shape[1], dtype=jnp.int32)
            k_end = jnp.minimum(visible_key_end(positions, block_size), kv_len[:, None])
            return tokamax_api.IMPLEMENTATIONS[name](q, k, v, mask=tokamax_base.Mask(k_end=k_end[:, None, :]))
        return run

    for name in ("mosaic_gpu", "triton"):
        if name in tokamax_api.IMPLEMENTATIONS:
            impls[f"tokamax_{name}"] = tokamax(name)
    return impls


def shape_inputs(layout, ctx, num_queries, seed=0):
    """Input sets for one shape (enough that together they overflow L2), the block's q_start and kv_len."""
    num_q_heads, num_kv_heads = LAYOUTS[layout]
    kv_bytes = 2 * ctx * num_kv_heads * HEAD_DIM * 2
    num_sets = int(min(16, max(2, math.ceil(2 * L2_BYTES / kv_bytes))))
    sets = make_sets(ctx, num_queries, num_q_heads, num_kv_heads, num_sets, seed)
    return sets, jnp.asarray([ctx - num_queries], jnp.int32), jnp.asarray([ctx], jnp.int32)


def bench_shape(layout, ctx, num_queries, block_size, bandwidth, matmul_rate, impl_names, config, seed=0,
                mosaic_config=gpu_mosaic.MosaicConfig(), check=False):
    """One row per implementation. ``check``: also the max |difference| from the reference on the first set."""
    num_q_heads, num_kv_heads = LAYOUTS[layout]
    kv_bytes = 2 * ctx * num_kv_heads * HEAD_DIM * 2
    sets, q_start, kv_len = shape_inputs(layout, ctx, num_queries, seed)
    num_sets = len(sets)
    pairs = visible_pairs(num_queries, ctx - num_queries, ctx, block_size)
    flops = 4 * pairs * num_q_heads * HEAD_DIM
    needed_bytes = kv_bytes + 2 * num_queries * num_q_heads * HEAD_DIM * 2
    floor = max(needed_bytes / bandwidth, flops / matmul_rate)
    rows = []
    impls = implementations(block_size, config, mosaic_config)
    expected = (reference.prefix_block_attention(*sets[0], q_start, kv_len, block_size=block_size)
                .astype(jnp.float32) if check else None)
    for name in impl_names:
        op = impls[name]
        row = dict(impl=name, layout=layout, ctx=ctx, tq=num_queries,
                   mask="causal" if block_size is None else f"block{block_size}", sets=num_sets,
                   needed_bytes=needed_bytes, flops=flops, floor_us=floor * 1e6)
        if name == "pallas_triton":
            row["config"] = repr(gpu_triton.describe(sets[0][0].shape, sets[0][1].shape, jnp.bfloat16, config))
        if name == "pallas_mosaic":
            row["config"] = repr(mosaic_config)
        try:
            if check:
                row["max_abs_error"] = float(jnp.max(jnp.abs(op(*sets[0], q_start, kv_len).astype(jnp.float32)
                                                             - expected)))
            many = jax.jit(lambda all_sets, op=op: tuple(op(q, k, v, q_start, kv_len) for q, k, v in all_sets))
            seconds = common.time_back_to_back(lambda: many(sets)) / num_sets
            row.update(us=seconds * 1e6, bytes_per_s=needed_bytes / seconds,
                       pct_read_bw=100 * needed_bytes / seconds / bandwidth,
                       tflops=flops / seconds / 1e12, pct_of_floor=100 * floor / seconds)
        except Exception as error:  # an unsupported variant is a result, not a crash
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        checked = f", max |error| {row['max_abs_error']:.2e}, {row.get('config', '')}" if "max_abs_error" in row else ""
        print(f"  {name} {layout} ctx={ctx} Tq={num_queries} {row['mask']}: "
              f"{row['us']:.1f} us{checked}" if "us" in row else f"  {name}: {row['error'][:200]}", flush=True)
    del sets
    return rows


def bench_training(bandwidth, seq_len=2048, block_size=32, batch=1):
    """Forward + backward of the [x_t ; x_0] block-diffusion mask (1.5B head layout), dense XLA vs cuDNN."""
    del bandwidth
    from pallas_kernels import block_diffusion_training as bdt

    num_q_heads, num_kv_heads = LAYOUTS["1.5b"]
    kq, kk, kv = jax.random.split(jax.random.key(7), 3)
    q = jax.random.normal(kq, (batch, 2 * seq_len, num_q_heads, HEAD_DIM), jnp.bfloat16)
    k = jax.random.normal(kk, (batch, 2 * seq_len, num_kv_heads, HEAD_DIM), jnp.bfloat16)
    v = jax.random.normal(kv, (batch, 2 * seq_len, num_kv_heads, HEAD_DIM), jnp.bfloat16)
    rows = []
    for impl in ("xla", "cudnn"):
        def loss(q, k, v, impl=impl):
            return jnp.sum(bdt.dense_attention(q, k, v, block_size, implementation=impl).astype(jnp.float32))
        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        row = dict(impl=impl, length=2 * seq_len, block_size=block_size, batch=batch)
        try:
            row["ms"] = common.time_back_to_back(lambda: step(q, k, v)) * 1e3
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        print(row, flush=True)
    return rows


SWEEP_CONFIGS = [  # fields left None are planned per shape (gpu_triton.plan)
    gpu_triton.TritonConfig(),
    gpu_triton.TritonConfig(block_m=64, block_k=64, num_warps=4, num_stages=3),
    gpu_triton.TritonConfig(block_m=64, block_k=128, num_warps=4, num_stages=2),
    gpu_triton.TritonConfig(block_m=64, block_k=32, num_warps=4, num_stages=3),
    gpu_triton.TritonConfig(block_m=128, block_k=64, num_warps=8, num_stages=3),
]


MOSAIC_SWEEP_CONFIGS = [  # (compute warpgroups, keys per step, ring slots, splits: None = planned)
    gpu_mosaic.MosaicConfig(compute_warpgroups=w, block_kv=b, max_concurrent_steps=r, num_splits=s)
    for w, b, r, s in [(2, 128, 2, None), (2, 128, 3, None), (2, 64, 2, None), (2, 64, 4, None),
                       (2, 128, 2, 8), (2, 128, 2, 30), (1, 128, 2, None), (1, 128, 3, None), (1, 64, 4, None),
                       (3, 128, 2, None), (3, 64, 3, None), (3, 64, 4, None), (3, 128, 2, 16), (3, 128, 2, 33)]]


def profile_call(layout, ctx, num_queries, block_size):
    """The device's kernels of one traced call of the default Mosaic path, µs per input set by kernel name."""
    from benchmarks.decode_kernels import traced_events
    sets, q_start, kv_len = shape_inputs(layout, ctx, num_queries)
    op = implementations(block_size, None)["pallas_mosaic"]
    many = jax.jit(lambda all_sets: tuple(op(q, k, v, q_start, kv_len) for q, k, v in all_sets))
    jax.block_until_ready(many(sets))
    _, events = traced_events(many, sets)
    kernels = {}
    for name, _, duration_ns in events:
        kernels[name] = kernels.get(name, 0.0) + duration_ns / 1e3 / len(sets)
    span_us = (events[-1][1] + events[-1][2] - events[0][1]) / 1e3 / len(sets) if events else 0.0
    return dict(layout=layout, ctx=ctx, tq=num_queries, profile_us_per_set=kernels, span_us_per_set=span_us)


def bench_mosaic_configs(bandwidth, matmul_rate, ctx=32768):
    """The Mosaic GPU kernel's launch parameters at the 32k goal shapes (Tq 32), each checked against the
    reference; then where the default's time goes. Returns (rows, profiles)."""
    rows, profiles = [], []
    for layout, block_size in (("7b", None), ("1.5b", None), ("1.5b", 32)):
        for config in MOSAIC_SWEEP_CONFIGS:
            (row,) = bench_shape(layout, ctx, 32, block_size, bandwidth, matmul_rate, ["pallas_mosaic"], None,
                                 seed=3, mosaic_config=config, check=True)
            rows.append(row)
        try:
            profile = profile_call(layout, ctx, 32, block_size)
            profiles.append(profile)
            print(f"profile {layout} {block_size}: span {profile['span_us_per_set']:.1f} us/set; " + "; ".join(
                f"{name[:60]} {us:.1f}" for name, us in sorted(profile["profile_us_per_set"].items(),
                                                               key=lambda item: -item[1])), flush=True)
        except Exception as error:  # noqa: BLE001 - the sweep's rows stand without it
            print("profile failed:", type(error).__name__, str(error)[:200], flush=True)
    return rows, profiles


def table(rows):
    lines = [f"{'impl':18} {'layout':6} {'ctx':>6} {'Tq':>4} {'mask':8} {'us':>9} {'GB/s':>7} {'%bw':>5} "
             f"{'TF/s':>6} {'%floor':>6} {'x XLA':>6}"]
    xla = {(r["layout"], r["ctx"], r["tq"], r["mask"]): r.get("us") for r in rows if r["impl"] == "xla_reference"}
    for r in rows:
        if "us" not in r:
            lines.append(f"{r['impl']:18} {r['layout']:6} {r['ctx']:>6} {r['tq']:>4} {r['mask']:8} "
                         f"{'error: ' + r['error'][:60]}")
            continue
        base = xla.get((r["layout"], r["ctx"], r["tq"], r["mask"]))
        speedup = f"{base / r['us']:6.2f}" if base else "     -"
        lines.append(f"{r['impl']:18} {r['layout']:6} {r['ctx']:>6} {r['tq']:>4} {r['mask']:8} {r['us']:9.1f} "
                     f"{r['bytes_per_s'] / 1e9:7.0f} {r['pct_read_bw']:5.1f} {r['tflops']:6.1f} "
                     f"{r['pct_of_floor']:6.1f} {speedup}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true", help="32k context only, no Tq 64")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--sweep", action="store_true", help="also time launch configurations at 32k")
    parser.add_argument("--mosaic-sweep", action="store_true",
                        help="only time the Mosaic GPU kernel's launch configurations at 32k, Tq 32")
    parser.add_argument("--training", action="store_true", help="also time the block-diffusion training mask")
    parser.add_argument("--pdl", action="store_true",
                        help="also time the Mosaic kernel with the PDL instructions (run under XLA_FLAGS with "
                             "--xla_gpu_enable_pdl=true to let XLA's kernels around it launch early)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # tokamax parses absl flags from argv, and ours are not its
    print("jax", jax.__version__, jax.devices()[0].device_kind, flush=True)
    bandwidth = common.measured_read_bandwidth()
    matmul_rate = measure_matmul_rate()
    print(f"read bandwidth {bandwidth / 1e12:.3f} TB/s, bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s", flush=True)

    results = dict(jax=jax.__version__, device=jax.devices()[0].device_kind, read_bytes_per_s=bandwidth,
                   matmul_flops_per_s=matmul_rate, rows=[], sweep=[])
    sweep_lines = []

    def save():  # after every shape, so a run cut short still leaves its numbers
        with open(os.path.join(args.out, "kernels_bench.json"), "w") as f:
            json.dump(results, f, indent=1)

    if args.mosaic_sweep:
        results["mosaic_sweep"], results["mosaic_profile"] = bench_mosaic_configs(bandwidth, matmul_rate)
        save()
        return

    chosen = gpu_triton.TritonConfig()  # the table runs the defaults; the sweep is for choosing them
    if args.sweep:
        for layout, num_queries in (("7b", 128), ("7b", 32), ("1.5b", 32)):
            for config in SWEEP_CONFIGS:
                rows = bench_shape(layout, 32768, num_queries, None, bandwidth, matmul_rate, ["pallas_triton"],
                                   config)
                results["sweep"] += rows
                save()
                sweep_lines.append(f"sweep {layout} Tq={num_queries} {rows[0].get('config', config)}: "
                                   f"{rows[0].get('us', float('nan')):.1f} us {rows[0].get('error', '')[:80]}")

    contexts = [32768] if args.quick else args.contexts
    shapes = [(tq, None) for tq in (32, 64, 128)] + [(32, 32)]  # verify blocks (causal), a drafter block
    for ctx in contexts:
        for layout in LAYOUTS:
            for num_queries, block_size in shapes:
                if args.quick and num_queries == 64:
                    continue
                names = ["pallas_triton", "pallas_mosaic", "xla_reference", "cudnn_prefix_only"]
                names += ["pallas_mosaic_pdl"] if args.pdl else []
                if ctx >= 16384:  # tokamax where installed; long contexts only, to bound the run
                    names += [n for n in implementations(None, None) if n.startswith("tokamax_")]
                try:
                    results["rows"] += bench_shape(layout, ctx, num_queries, block_size, bandwidth, matmul_rate,
                                                   names, chosen)
                    save()
                except Exception:
                    traceback.print_exc(limit=3)
    if args.training:
        results["training"] = bench_training(bandwidth)
        save()
    results["tokamax"] = getattr(implementations, "tokamax_error", "imported")
    print("tokamax:", results["tokamax"], flush=True)
    save()
    print("\n".join(sweep_lines))
    print(f"read bandwidth {bandwidth / 1e12:.3f} TB/s, bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s")
    for row in results.get("training", []):
        print(f"training mask {row['impl']} 2L={row['length']} fwd+bwd: " +
              (f"{row['ms']:.2f} ms" if "ms" in row else row["error"][:120]))
    print(table(results["rows"]))


if __name__ == "__main__":
    main()
