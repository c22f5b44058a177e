"""Batch-1 greedy decode and verifier forward cost against the HBM limit (issue 2's benchmark).

    python benchmarks/decode_bench.py --shapes qwen2.5-7b qwen2.5-1.5b [--context 1024] [--new 128]

For each shape (random bf16 weights): measured read bandwidth, ffjax `generate` ms/token after a
`context`-token prompt, the HBM limit (weights + KV per token ÷ bandwidth), and the latency of one forward of
k = 1..128 new tokens over a `context`-token cache. transformers' generate is measured by
benchmarks/hf_generate_bench.py in the same device call.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from ffjax import decoder, executables, shapes  # noqa: E402
from ffjax.generate import generate  # noqa: E402
from ffjax.checkpoint import Model  # noqa: E402


def forward_latency(config, params, context: int, k: int) -> tuple[float, float]:
    """(seconds for one forward of k new tokens over a cache holding `context` tokens, argmax of all k logits;
    seconds to compile it). The params' layout (stacked or per-layer) picks the decoder's layer loop."""
    cache = decoder.new_cache(config, params, 1, shapes.round_up(context + 128, 128)).with_length(context)

    @jax.jit
    def step(params, tokens, cache):
        hidden, cache = decoder.decode(config, params, tokens, cache)
        return jnp.argmax(decoder.logits(config, params, hidden), -1), cache

    tokens = jnp.ones((1, k), jnp.int32)
    # through executables, so the forward gets the XLA options of an ab_decode.py variant like every other program
    compiled, compile_s = executables.get(("decode_bench.forward", config, k), step, params, tokens, cache)
    return common.time_fn(lambda: compiled(params, tokens, cache)[0], repeats=20, warmup=3), compile_s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-7b", "qwen2.5-1.5b"])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 16, 32, 64, 128])
    args = parser.parse_args()

    bandwidth = common.measured_read_bandwidth()
    print(f"device: {jax.devices()[0].device_kind}; measured read bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    results = {"device": jax.devices()[0].device_kind, "read_bandwidth_Bps": bandwidth, "shapes": {}}
    for name in args.shapes:
        config = common.shape_config(name)
        params = jax.jit(functools.partial(decoder.init_params, config, dtype=jnp.bfloat16))(jax.random.key(0))
        model = Model(config, params)
        prompt = np.random.RandomState(0).randint(0, config.vocab_size, args.context).astype(np.int32)
        compile_s = generate(model, prompt, args.new).stats.compile_s
        runs = [generate(model, prompt, args.new).stats for _ in range(3)]
        ms_per_token = float(np.median([s.decode_ms_per_token for s in runs]))
        needed = common.decode_bytes_per_token(config, args.context + args.new // 2)
        limit_ms = 1e3 * needed["total"] / bandwidth
        # each k timed and compiled once (executables caches the program, so a second k = 1 call would report 0 s)
        timed = {k: forward_latency(config, params, args.context, k) for k in dict.fromkeys([1, *args.ks])}
        fwd = {k: 1e3 * timed[k][0] for k in args.ks}
        per_layer_ms, per_layer_compile_s = timed[1]
        stacked = decoder.stack_layers(params)
        scanned_ms, scanned_compile_s = forward_latency(config, stacked, args.context, 1)
        jax.tree.map(lambda x: x.delete(), stacked)
        layer_loop = {"layout": decoder.layout_of(params), "stacked_scan_k1_ms": 1e3 * scanned_ms,
                      "stacked_scan_compile_s": scanned_compile_s, "per_layer_k1_ms": 1e3 * per_layer_ms,
                      "per_layer_compile_s": per_layer_compile_s}
        results["shapes"][name] = {"decode_ms_per_token": ms_per_token, "hbm_limit_ms": limit_ms,
                                   "generate_compile_s": compile_s, "layer_loop": layer_loop,
                                   "bytes_per_token": needed, "prefill_s": float(np.median([s.prefill_s for s in runs])),
                                   "forward_ms": fwd}
        print(f"{name}: decode {ms_per_token:.3f} ms/token, HBM limit {limit_ms:.3f} ms "
              f"({ms_per_token / limit_ms:.3f}x); forward ms " +
              ", ".join(f"k={k}: {v:.3f}" for k, v in fwd.items()) + f"; layer loop {layer_loop}", flush=True)
        del params, model
    common.write_results("decode_bench.json", results)
    print("\n| shape | ffjax ms/token | HBM limit ms | ratio | " + " | ".join(f"fwd k={k}" for k in args.ks) + " |")
    for name, r in results["shapes"].items():
        print(f"| {name} | {r['decode_ms_per_token']:.3f} | {r['hbm_limit_ms']:.3f} | "
              f"{r['decode_ms_per_token'] / r['hbm_limit_ms']:.3f} | " +
              " | ".join(f"{v:.3f}" for v in r["forward_ms"].values()) + " |")


if __name__ == "__main__":
    main()
