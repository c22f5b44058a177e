"""Correctness of the GPU kernels on the device (prefix-block attention, the fused RoPE + cache append +
attention of ``gpu_append_attention``, the residual norm, and on Hopper the skinny tensor-core GEMM), against the
jnp references.

Run on the GPU machine: ``PYTHONPATH=. python3 benchmarks/kernels_gpu_check.py [--out DIR]``. Every case draws
fresh random inputs, fills the cache past ``kv_len`` with NaN (the kernel must never read it), and compares
with the reference evaluated in float32 at full matmul precision on the clean cache:
relative Frobenius error ‖out − ref‖ / ‖ref‖ under 1e-5 for float32 inputs (exact float32 products), under
1e-2 for bfloat16 (8-bit mantissa: probabilities and outputs are rounded to bf16). Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import reference
from pallas_kernels.gpu_append_attention import append_attention
from pallas_kernels.gpu_triton import TritonConfig, describe, prefix_block_attention

TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}

# (batch, Tq, Hq, Hkv, head_dim, cache length, block_size, dtype, q_start per row, kv_len per row)
CASES = [
    (1, 32, 28, 4, 128, 4096, None, "bfloat16", [4064], [4096]),
    (1, 128, 28, 4, 128, 8192, None, "bfloat16", [8000], [8128]),
    (1, 64, 12, 2, 128, 16384, 32, "bfloat16", [16000], [16064]),
    (3, 37, 12, 2, 128, 1000, 32, "bfloat16", [0, 512, 960], [37, 549, 997]),
    (2, 9, 7, 1, 64, 777, 8, "bfloat16", [300, 0], [309, 0]),  # second row sees nothing: zeros
    (2, 48, 12, 2, 128, 4096, 32, "float32", [1000, 3000], [1040, 3048]),  # kv_len inside the last block
    (1, 128, 12, 2, 128, 8192, None, "float32", [8064], [8192]),
    (2, 1, 28, 4, 128, 2048, None, "bfloat16", [100, 2047], [101, 2048]),
    (2, 100, 6, 1, 64, 3000, 8, "float32", [17, 2800], [117, 2900]),
]

# More for the Mosaic GPU kernel, which needs whole 128-key tiles: ragged rows, block-causal, 3 warpgroups' rows.
MOSAIC_CASES = [
    (2, 32, 28, 4, 128, 32768, None, "bfloat16", [32736, 1000], [32768, 1032]),
    (3, 37, 12, 2, 128, 1024, 32, "bfloat16", [0, 512, 960], [37, 549, 997]),
    (2, 9, 7, 1, 64, 768, 8, "bfloat16", [300, 0], [309, 0]),
    (1, 128, 12, 2, 64, 4096, 32, "float16", [3968], [4096]),
]

# Launch parameters that must all compute the same function (checked on one mid-size case).
CONFIGS = [
    TritonConfig(),
    TritonConfig(block_m=128, block_k=64, num_warps=8, num_stages=3),
    TritonConfig(block_m=64, block_k=128, num_stages=3),
    TritonConfig(block_m=64, block_k=32, num_splits=1),
    TritonConfig(block_m=16, block_k=64, num_splits=7),
]


def caches(rng, batch, num_keys, num_kv_heads, head_dim, nan_from):
    """Random float32 K and V caches, as (k, v, clean_k, clean_v): from position nan_from[row] on, NaN in k and v
    (what a kernel must never read) and zeros in the clean pair (what the reference sees)."""
    k, v = (rng.standard_normal((batch, num_keys, num_kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    clean_k, clean_v = k.copy(), v.copy()
    for row, start in enumerate(nan_from):
        k[row, start:] = v[row, start:] = np.nan
        clean_k[row, start:] = clean_v[row, start:] = 0.0
    return k, v, clean_k, clean_v


def make_inputs(rng, batch, num_queries, num_q_heads, num_kv_heads, head_dim, num_keys, dtype, kv_len):
    q = rng.standard_normal((batch, num_queries, num_q_heads, head_dim)).astype(np.float32)
    k, v, clean_k, clean_v = caches(rng, batch, num_keys, num_kv_heads, head_dim, kv_len)
    as_dtype = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return as_dtype(q), as_dtype(k), as_dtype(v), as_dtype(clean_k), as_dtype(clean_v)


def check(case, config, rng, interpret=False):
    batch, num_queries, num_q_heads, num_kv_heads, head_dim, num_keys, block_size, dtype, q_start, kv_len = case
    q, k, v, clean_k, clean_v = make_inputs(rng, batch, num_queries, num_q_heads, num_kv_heads, head_dim,
                                            num_keys, dtype, kv_len)
    if config == "gpu_mosaic":  # it reads whole key tiles (weight zero past kv_len): large finite values, not NaN
        past = jnp.isnan(k)
        k, v = jnp.where(past, 3e4, k).astype(k.dtype), jnp.where(past, -3e4, v).astype(v.dtype)
    q_start, kv_len = jnp.asarray(q_start, jnp.int32), jnp.asarray(kv_len, jnp.int32)
    if config == "gpu_mosaic":
        from pallas_kernels import gpu_mosaic
        out = gpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size,
                                                interpret=interpret)
    else:
        out = prefix_block_attention(q, k, v, q_start, kv_len, block_size=block_size, config=config,
                                     interpret=interpret)
    with jax.default_matmul_precision("highest"):
        up = lambda x: x.astype(jnp.float32)  # noqa: E731
        ref = reference.prefix_block_attention(up(q), up(clean_k), up(clean_v), q_start, kv_len,
                                               block_size=block_size)
    out32 = np.asarray(out.astype(jnp.float32))
    ref32 = np.asarray(ref)
    has_nan = bool(np.isnan(out32).any())
    rel = float(np.linalg.norm(out32 - ref32) / max(np.linalg.norm(ref32), 1e-30))
    ok = (not has_nan) and rel < TOLERANCE[dtype] and out.dtype == q.dtype and out.shape == q.shape
    plan = config if config == "gpu_mosaic" else describe(q.shape, k.shape, q.dtype, config)
    return dict(case=repr(case[:8]), config=repr(plan), rel_error=rel, nan=has_nan, ok=ok)


# Fused append: (batch, T, Hq, Hkv, head_dim, cache length, block_size, dtype, q_start per row, kv_len per row);
# the cache holds NaN from q_start on (the kernel may read only what precedes the block, and what it writes).
APPEND_CASES = [
    (1, 1, 12, 2, 128, 1152, None, "bfloat16", [1024], [1025]),  # a 1.5B decode step
    (1, 1, 28, 4, 128, 1152, None, "float32", [700], [701]),  # a 7B decode step
    (1, 32, 12, 2, 128, 1152, 32, "bfloat16", [1024], [1056]),  # a Fast-dLLM v2 1.5B block
    (2, 17, 14, 2, 64, 600, None, "float32", [0, 590], [17, 600]),  # prefill from 0; a block past the cache end
    (1, 300, 12, 2, 128, 512, None, "bfloat16", [0], [300]),  # a prompt prefill
    (2, 40, 7, 1, 64, 400, 8, "float32", [64, 13], [104, 40]),  # kv_len inside the block
]


def check_append(case, rng):
    batch, num_tokens, num_q_heads, num_kv_heads, head_dim, num_keys, block_size, dtype, q_start, kv_len = case
    qkv = jnp.asarray(rng.standard_normal((batch, num_tokens, num_q_heads + 2 * num_kv_heads, head_dim)), dtype)
    bias = jnp.asarray(rng.standard_normal((num_q_heads + 2 * num_kv_heads) * head_dim), dtype)
    positions = np.asarray(q_start)[:, None] + np.arange(num_tokens)[None, :]
    angles = positions[..., None] * (1e6 ** -(np.arange(0, head_dim, 2) / head_dim))
    cos, sin = jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32)
    stale_k, stale_v, k, v = caches(rng, batch, num_keys, num_kv_heads, head_dim, q_start)
    q_start, kv_len = jnp.asarray(q_start, jnp.int32), jnp.asarray(kv_len, jnp.int32)
    out, out_k, out_v = append_attention(qkv, cos, sin, jnp.asarray(stale_k, dtype), jnp.asarray(stale_v, dtype),
                                         q_start, kv_len, num_q_heads=num_q_heads, qkv_bias=bias,
                                         block_size=block_size)
    with jax.default_matmul_precision("highest"):
        up = lambda x: jnp.asarray(x, dtype).astype(jnp.float32)  # noqa: E731
        ref, ref_k, ref_v = reference.append_attention(up(qkv), cos, sin, up(k), up(v), q_start, kv_len,
                                                       num_q_heads=num_q_heads, qkv_bias=up(bias),
                                                       block_size=block_size)
    errors = {}
    for name, got, want in (("out", out, ref), ("k_cache", out_k, ref_k), ("v_cache", out_v, ref_v)):
        got, want = np.asarray(got.astype(jnp.float32)), np.asarray(want)
        if name != "out":  # compare what precedes each row's block end; past it the cache stays stale
            keep = np.arange(num_keys)[None, :] < np.minimum(np.asarray(q_start) + num_tokens, num_keys)[:, None]
            got, want = got[keep], want[keep]
        errors[name] = float(np.linalg.norm(np.nan_to_num(got - want, nan=1e30)) / max(np.linalg.norm(want), 1e-30))
    ok = all(e < TOLERANCE[dtype] for e in errors.values()) and out.dtype == qkv.dtype
    return dict(case="append " + repr(case[:8]), rel_error=errors, ok=ok)


NORM_CASES = [(1, 1, 1536, "bfloat16", 2), (1, 32, 1536, "bfloat16", None), (2, 3, 3584, "float32", None)]


def check_norm(case, rng):
    """The fused residual add + RMSNorm kernel against its reference (same float32 arithmetic per element)."""
    from pallas_kernels import residual_rms_norm as norm
    batch, tokens, width, dtype, rows = case
    x, delta = (jnp.asarray(rng.standard_normal((batch, tokens, width)), dtype) for _ in range(2))
    scale = jnp.asarray(rng.standard_normal(width), dtype)
    got = norm.residual_rms_norm(x, delta, scale, eps=1e-6, rows=rows, backend="gpu_triton")
    want = norm.reference(x, delta, scale, eps=1e-6, rows=rows)
    # Relative to the largest output: a bf16 ulp where the sums' order flips a rounding, float32 rounding else.
    errors = [float(np.max(np.abs(np.asarray(g, np.float32) - np.asarray(w, np.float32)))
                    / max(float(np.max(np.abs(np.asarray(w, np.float32)))), 1e-30)) for g, w in zip(got, want)]
    return dict(case="norm " + repr(case), rel_max_error=errors, ok=max(errors) <= TOLERANCE[dtype])


# Skinny tensor-core GEMM (Mosaic GPU, Hopper only): (rows, N, K, config); every planned shape with its plan, plus
# rows that need padding, split-K, deeper pipelines and wider tiles.
def skinny_cases():
    from pallas_kernels import skinny_gemm as sg
    # Each planned shape at the row counts the decoder gives it: 1-2 decoding rows, or a drafter's full block.
    cases = [(rows, n, k, config) for (padded, n, k), config in sg.PLANS.items()
             for rows in ((1, 2) if padded == 8 else (padded, padded - 3))]
    cases += [(5, 1024, 2048, sg.SkinnyConfig()), (8, 512, 4096, sg.SkinnyConfig(128, 64, 6, 4)),
              (3, 4608, 3584, sg.SkinnyConfig(64, 256, 3, 2))]
    return cases


def check_skinny(case, rng):
    """The swap-AB skinny GEMM against its reference: float32 accumulation of bf16 products both ways, so the
    sums differ only in order (and split-K partials stay float32)."""
    from pallas_kernels import skinny_gemm as sg
    rows, num_out, width, config = case
    x = jnp.asarray(rng.standard_normal((rows, width)), jnp.bfloat16)
    weight = jnp.asarray(0.02 * rng.standard_normal((num_out, width)), jnp.bfloat16)
    got = np.asarray(jax.jit(sg.gpu_skinny_gemm, static_argnums=2)(x, weight, config), np.float32)
    want = np.asarray(sg.reference(x, weight), np.float32)
    rel = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
    return dict(case=f"skinny {(rows, num_out, width)}", config=repr(config), rel_error=rel,
                ok=rel < TOLERANCE["bfloat16"] and got.shape == (rows, num_out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--interpret", action="store_true", help="dry run of the small cases on CPU")
    parser.add_argument("--append-only", action="store_true", help="check only the fused append kernel")
    parser.add_argument("--skinny-only", action="store_true", help="check only the skinny tensor-core GEMM")
    parser.add_argument("--mosaic-only", action="store_true",
                        help="check only the Mosaic GPU attention kernel (on the cases it supports)")
    args = parser.parse_args()
    print("jax", jax.__version__, jax.devices(), flush=True)
    rng = np.random.default_rng(2024)
    results = []
    jobs = [(case, TritonConfig()) for case in CASES]
    jobs += [(CASES[3], config) for config in CONFIGS[1:]]
    if args.interpret:
        jobs = [(case, config) for case, config in jobs if case[0] * case[1] * case[5] <= 400_000]
    if args.append_only or args.skinny_only or args.mosaic_only:
        jobs = []
    if args.mosaic_only:
        from pallas_kernels.gpu_mosaic import supports
        jobs = [(case, "gpu_mosaic") for case in CASES + MOSAIC_CASES
                if supports((case[0], case[1], case[2], case[4]), (case[0], case[5], case[3], case[4]), case[7])]
    if not (args.skinny_only or args.mosaic_only):
        jobs += [(case, "append") for case in APPEND_CASES if not args.interpret]
        jobs += [(case, "norm") for case in NORM_CASES if not args.interpret]
    from pallas_kernels.dispatch import hopper_gpu
    if hopper_gpu() and not (args.append_only or args.mosaic_only):
        jobs += [(case, "skinny") for case in skinny_cases()]
    for case, config in jobs:
        try:
            checks = {"append": check_append, "norm": check_norm, "skinny": check_skinny}
            result = (checks[config](case, rng) if config in checks
                      else check(case, config, rng, args.interpret))
        except Exception as error:  # report and keep checking the rest
            traceback.print_exc(limit=3)
            result = dict(case=repr(case[:8]), config=repr(config), error=f"{type(error).__name__}: {error}"[:2000],
                          ok=False)
        results.append(result)
        print(("PASS " if result["ok"] else "FAIL ") + json.dumps(result), flush=True)
    with open(os.path.join(args.out, "kernels_gpu_check.json"), "w") as f:
        json.dump(dict(jax=jax.__version__, device=str(jax.devices()[0]), results=results), f, indent=1)
    failed = sum(not r["ok"] for r in results)
    print(f"gpu check: {len(results) - failed}/{len(results)} passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
