"""The block MLP kernel (``pallas_kernels.swiglu_gemm``: RMSNorm, gate_up, SwiGLU, after an XLA residual add)
against the decoder's unfused path (the Triton residual-norm kernel, XLA's GEMM, XLA's SwiGLU), on the GPU.

    python benchmarks/swiglu_gemm_bench.py [--shape qwen2.5-1.5b] [--rows 32]

First checks each launch config against the jnp reference at the shape (bf16). Then times dependent chains with
one distinct weight per model layer (no L2 reuse): each link takes the residual stream and the previous link's
output, and its activation feeds the next link. Prints µs per layer; the drafter pass itself is measured with
``FFJAX_SWIGLU_GEMM=on|off python benchmarks/dllm_bench.py``.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from pallas_kernels import swiglu_gemm as sg  # noqa: E402
from pallas_kernels.residual_rms_norm import residual_rms_norm  # noqa: E402

CONFIGS = [sg.SwigluConfig()] + [sg.SwigluConfig(block_n=n, block_k=k, num_warps=w, num_stages=s)
                                 for n in (16, 32, 64) for k in (64, 128) for w in (4, 8) for s in (3, 4)
                                 if (n, k, w, s) != (32, 128, 4, 4)]


def unfused(x, weight, *, residual, norm_scale, eps):
    """The decoder's path without the kernel: residual + RMSNorm kernel, XLA's GEMM, XLA's SwiGLU."""
    total, normed = residual_rms_norm(x[None], residual[None], norm_scale, eps=eps)
    gate, up = jnp.split(normed[0] @ weight.T, 2, axis=-1)
    return total[0], sg.swiglu_product(gate, up)


def fused(x, weight, *, residual, norm_scale, eps, config):
    """The decoder's path with the kernel: the residual add in XLA, then the kernel."""
    total = x + residual
    return total, sg.gpu_swiglu_gemm(total, weight, norm_scale=norm_scale, eps=eps, config=config)


def chain_us(mlp, x0, scale, weights, repeats=30) -> float:
    """Wall µs per link of (x, delta) -> (x + delta, mlp activation) -> the next link's delta, in one jitted call."""
    def run(x, scale, weights):
        delta = jnp.zeros_like(x)
        for w in weights:
            x, activation = mlp(x, w, residual=delta, norm_scale=scale, eps=1e-6)
            delta = 1e-3 * jnp.tile(activation, (1, -(-x.shape[1] // activation.shape[1])))[:, :x.shape[1]]
        return x

    fn = jax.jit(run)
    return 1e6 * common.time_fn(lambda: fn(x0, scale, weights), repeats=repeats, warmup=3) / len(weights)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--rows", type=int, default=32)
    args = parser.parse_args()
    config = common.shape_config(args.shape)
    width, half = config.hidden_size, config.intermediate_size
    key = jax.random.key(0)
    weights = [jax.random.normal(jax.random.fold_in(key, i), (2 * half, width), jnp.bfloat16) * width ** -0.5
               for i in range(config.num_layers)]
    x = jax.random.normal(key, (args.rows, width), jnp.bfloat16)
    print(f"{jax.devices()[0].device_kind}, {args.shape}: x [{args.rows}, {width}] @ [gate; up] [{2 * half}, "
          f"{width}].T, SwiGLU -> [{args.rows}, {half}], {config.num_layers} weights", flush=True)

    scale = jnp.ones((width,), jnp.bfloat16)
    norm = dict(norm_scale=scale, eps=1e-6)
    want = np.asarray(sg.reference(x, weights[0], **norm), np.float32)
    results = {"shape": args.shape, "rows": args.rows, "device": jax.devices()[0].device_kind, "configs": {}}
    results["unfused_us"] = chain_us(unfused, x, scale, weights)
    print(f"| unfused: norm kernel, XLA GEMM, XLA SwiGLU | {results['unfused_us']:.2f} µs | |", flush=True)
    for cfg in CONFIGS:
        label = f"block_n={cfg.block_n} block_k={cfg.block_k} warps={cfg.num_warps} stages={cfg.num_stages}"
        try:
            got = np.asarray(sg.gpu_swiglu_gemm(x, weights[0], config=cfg, **norm), np.float32)
            error = float(np.max(np.abs(got - want)) / max(1e-6, float(np.max(np.abs(want)))))
            us = chain_us(lambda *a, cfg=cfg, **kw: fused(*a, config=cfg, **kw), x, scale, weights)
        except Exception as failure:  # a config the GPU refuses (shared memory, registers): report, go on
            print(f"| {label} | refused: {str(failure)[:100]} | |", flush=True)
            continue
        results["configs"][label] = {"us": us, "max_rel_error": error}
        print(f"| {label} | {us:.2f} µs | rel. error {error:.1e} |", flush=True)
    best = min(results["configs"].items(), key=lambda kv: kv[1]["us"], default=None)
    if best:
        print(f"best: {best[0]} {best[1]['us']:.2f} µs against the unfused path's {results['unfused_us']:.2f} µs")
    common.write_results(f"swiglu_gemm_{args.shape}_rows{args.rows}.json", results)


if __name__ == "__main__":
    main()
