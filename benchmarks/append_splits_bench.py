"""Launch plans of the fused append-attention kernel for short caches (issues 2, 3 and 5).

    python benchmarks/append_splits_bench.py [--shape qwen2.5-1.5b] [--context 1024] [--sweep]

A decode step (1 token) and a drafter pass (a 32-token block, block-causal) each attend over a ~1k-token cache
per layer. The kernel splits the keys across programs (flash decoding) and a second kernel
(``gpu_triton.merge_splits_to_heads``) merges the splits. More splits fill more SMs but cost a larger merge. For each launch configuration, one jitted
call runs ``pallas_kernels.append_attention`` on ``num_layers`` distinct caches, as a forward pass does, and the
device's busy time (JAX's profiler) is split into the attention kernel, the split merge, and everything else the
call ran, in µs per layer: two cache copies per layer (the caches are not donated, so XLA copies each before the
kernel writes it in place; about 4.6 µs per layer on an H200). ``--sweep`` adds tile shapes, warps and pipeline
depths to the split counts.
"""

from __future__ import annotations

import argparse
import collections
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from benchmarks.decode_kernels import traced_events  # noqa: E402
from pallas_kernels import gpu_append_attention  # noqa: E402
from pallas_kernels.gpu_triton import TritonConfig  # noqa: E402

CONFIGS = [TritonConfig()] + [TritonConfig(num_splits=s) for s in (1, 2, 4, 8)] + [
    TritonConfig(num_splits=s, block_k=128) for s in (2, 4, 8)]
# --sweep: per token count, tile rows x warps x stages (splits planned, or a few fixed counts).
SWEEP = {
    1: [TritonConfig(num_warps=w, num_stages=st, block_k=bk) for w in (1, 2, 4) for st in (1, 2)
        for bk in (32, 64)] + [TritonConfig(num_warps=w, num_splits=n) for w in (2, 4) for n in (6, 9, 12)],
    32: [TritonConfig(block_m=m, num_warps=w, num_stages=st) for m in (32, 64, 128, 256) for w in (4, 8)
         for st in (1, 2, 3) if not (m == 256 and st == 3)]
        + [TritonConfig(block_m=m, num_warps=4, num_splits=n) for m in (32, 64) for n in (2, 4, 8)],
}


def label_of(cfg: TritonConfig) -> str:
    if cfg == TritonConfig():
        return "auto"
    return " ".join(f"{f}={getattr(cfg, f)}" for f in ("block_m", "block_k", "num_splits", "num_warps", "num_stages")
                    if getattr(cfg, f) is not None)


def busy_us_per_layer(fn, args, layers) -> dict:
    """Device µs per layer of one call (after a warm-up call): the attention kernel, and the rest."""
    jax.block_until_ready(fn(*args))
    best = None
    for _ in range(3):
        by_kind = collections.Counter()
        for name, _, duration in traced_events(fn, *args)[1]:
            kind = ("kernel" if name.startswith("append_attention") else
                    "merge" if name.startswith("merge_attention_splits") else "around")
            by_kind[kind] += duration
        if best is None or sum(by_kind.values()) < sum(best.values()):
            best = by_kind
    return {k: 1e-3 * v / layers for k, v in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--layers", type=int, help="fewer distinct caches than the model's layers")
    parser.add_argument("--sweep", action="store_true", help="also tile shapes, warps and pipeline depths")
    parser.add_argument("--tokens", type=int, nargs="*", default=[1, 32], help="block lengths (1: decode)")
    parser.add_argument("--interpret", action="store_true", help="CPU smoke run (Pallas interpreter, no timings)")
    args = parser.parse_args()
    c = common.shape_config(args.shape)
    layers, heads = args.layers or c.num_layers, c.num_heads + 2 * c.num_kv_heads
    cache_len = args.context + 128
    results = {"device": jax.devices()[0].device_kind, "shape": args.shape, "context": args.context, "rows": []}
    print(f"{results['device']}, {args.shape} heads {c.num_heads}/{c.num_kv_heads}, {args.context}-token cache; "
          "µs per layer (device busy)")
    print("| tokens | config | attention kernel | merge | kernel + merge | cache copies |\n|---|---|---|---|---|---|")
    for num_tokens in args.tokens:
        block_size = None if num_tokens == 1 else 32
        keys = jax.random.split(jax.random.key(0, impl="rbg"), 2 * layers + 1)
        caches = [(jax.random.normal(keys[2 * i], (1, cache_len, c.num_kv_heads, c.head_dim), jnp.bfloat16),
                   jax.random.normal(keys[2 * i + 1], (1, cache_len, c.num_kv_heads, c.head_dim), jnp.bfloat16))
                  for i in range(layers)]
        qkv = jax.random.normal(keys[-1], (1, num_tokens, heads, c.head_dim), jnp.bfloat16)
        angles = jnp.arange(num_tokens, dtype=jnp.float32)[None, :, None] * jnp.ones((1, 1, c.head_dim // 2))
        cos, sin = jnp.cos(angles), jnp.sin(angles)
        q_start = jnp.full((1,), args.context, jnp.int32)
        kv_len = q_start + num_tokens
        reference = None
        configs = CONFIGS + (SWEEP.get(num_tokens, []) if args.sweep else [])
        for cfg in configs:
            def layer_stack(caches, qkv, cfg=cfg):
                return [gpu_append_attention.append_attention(
                    qkv, cos, sin, k, v, q_start, kv_len, num_q_heads=c.num_heads, block_size=block_size,
                    config=cfg, interpret=args.interpret)[0] for k, v in caches]
            fn = jax.jit(layer_stack)
            label = label_of(cfg)
            try:
                out = fn(caches, qkv)[0].astype(jnp.float32)
            except Exception as e:  # a launch configuration Triton refuses (shared memory, registers)
                print(f"| {num_tokens} | {label} | refused: {str(e)[:80]} | | | |", flush=True)
                continue
            reference = out if reference is None else reference
            error = float(jnp.max(jnp.abs(out - reference)))
            us = busy_us_per_layer(fn, (caches, qkv), layers)
            attention = us.get("kernel", 0) + us.get("merge", 0)
            results["rows"].append({"tokens": num_tokens, "config": label, **us, "kernel_and_merge": attention,
                                    "max_abs_diff_vs_auto": error})
            print(f"| {num_tokens} | {label} | {us.get('kernel', 0):.2f} | {us.get('merge', 0):.2f} | "
                  f"{attention:.2f} | {us.get('around', 0):.2f} |  (max |Δ| vs auto {error:.1e})", flush=True)
    common.write_results(f"append_splits_{args.shape}.json", results)
    for num_tokens in args.tokens:  # the fastest last, for the run's short summary
        rows = sorted((r for r in results["rows"] if r["tokens"] == num_tokens), key=lambda r: r["kernel_and_merge"])
        auto_us = next((r["kernel_and_merge"] for r in rows if r["config"] == "auto"), float("nan"))
        for r in rows[:5]:
            print(f"best T={num_tokens}: {r['config']}: {r['kernel_and_merge']:.2f} µs (auto {auto_us:.2f})")


if __name__ == "__main__":
    main()
