"""Fast-dLLM v2 drafter cost (issue 3's benchmark).

    python benchmarks/dllm_bench.py [--context 1024] [--new 256] [--checkpoint DIR]   # GPU, Fast_dLLM_v2_1.5B shape
    python benchmarks/dllm_bench.py --tiny                                            # CPU smoke run
    python benchmarks/dllm_bench.py --pair DIR [--tasks 0 16]       # passes/token of DIR/drafter on HumanEval
    python benchmarks/dllm_bench.py --profile-only                  # kernels of one pass, from the profiler
    python benchmarks/dllm_bench.py --latency-only                  # only the block's forward and pass latency

At the Fast_dLLM_v2_1.5B shape (Qwen2.5-1.5B, bd_size 32, bf16, random weights made by
``decoder.init_params`` under jit):
* the latency of one forward of a 32-token block over a ``context``-token cache: the bare forward (decoder +
  logits) and a full drafter pass (``drafter.advance``: forward, confidences, unmasking), against the HBM limit
  (weight bytes + KV bytes ÷ the read bandwidth measured in the same run);
* ``dllm_generate`` forward passes per generated token at thresholds 0.9 and 0.05 (random weights have flat
  softmaxes, so expect ~1 pass per token plus one commit per block; ``--checkpoint`` measures a converted model;
  ``--pair`` the demo pair's adapted drafter on HumanEval development prompts, chat-formatted, stopping at EOS).
``--profile`` (or ``--profile-only``) also runs ``dllm_generate``'s decode loop under JAX's profiler and reports
the device's kernels per pass by kind, as ``decode_kernels.py --profile`` does for the verifier's decode step.
Prints a table; writes dllm_bench.json to $OUT when it is set.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from benchmarks.decode_kernels import print_profile, profile_steps  # noqa: E402
from ffjax import decoder, drafter, shapes  # noqa: E402
from ffjax.checkpoint import Model, load  # noqa: E402
from ffjax.config import FAST_DLLM_DEFAULT_MASK_TOKEN_ID  # noqa: E402
from ffjax.dllm_generate import dllm_generate  # noqa: E402
from ffjax.kv_cache import KVCache  # noqa: E402


def dllm_shape(name: str):
    mask = FAST_DLLM_DEFAULT_MASK_TOKEN_ID if name != "tiny" else 511
    return common.shape_config(name, model_type="fast_dllm_qwen", bd_size=32, mask_token_id=mask)


def block_latencies(model: Model, context: int, small_block_size: int) -> dict:
    """Seconds for one 32-token block over a ``context``-token cache: bare forward and full drafter pass."""
    config, bd = model.config, model.config.bd_size
    cache = KVCache.create(config, 1, shapes.round_up(context + bd, 128), model.dtype).with_length(context)
    tokens = jnp.full((1, bd), config.mask_token_id, jnp.int32).at[:, 0].set(1)
    state = drafter.DraftState(cache=cache, tokens=tokens, masked=tokens == config.mask_token_id,
                               confidence=jnp.zeros((1, bd), jnp.float32), forwards=jnp.zeros((1,), jnp.int32))

    @jax.jit
    def forward(params, tokens, cache):
        hidden, cache = decoder.decode(config, params, tokens, cache)
        return jnp.argmax(decoder.logits(config, params, hidden), axis=-1), cache

    @jax.jit
    def drafter_pass(params, state, threshold):
        return drafter.advance(config, params, state, threshold, small_block_size=small_block_size)

    return {
        "forward_s": common.time_fn(lambda: forward(model.params, tokens, cache)[0], repeats=30, warmup=3),
        "drafter_pass_s": common.time_fn(lambda: drafter_pass(model.params, state, jnp.float32(0.9))[0].tokens,
                                         repeats=30, warmup=3),
    }


def profile_passes(model: Model, context: int, new_tokens: int, small_block_size: int) -> dict:
    """The device's kernels per pass of ``dllm_generate``'s decode loop (threshold 0.9) from the profiler."""
    dg = importlib.import_module("ffjax.dllm_generate")  # the module (its loop), not the function ffjax exports

    config = model.config
    prompt = np.random.RandomState(0).randint(0, config.mask_token_id, (1, context)).astype(np.int32)
    lengths = jnp.full((1,), context, jnp.int32)
    cache_len = shapes.cache_length(context, new_tokens, extra=config.bd_size)
    state = jax.jit(functools.partial(dg._prefill, config, cache_len=cache_len))(model.params, jnp.asarray(prompt),
                                                                                  lengths)
    loop = jax.jit(functools.partial(dg._decode_loop, config, small_block_size=small_block_size,
                                     capacity=shapes.new_tokens_bucket(new_tokens)))
    args = (model.params, state, lengths, jnp.int32(new_tokens), jnp.int32(-1), jnp.float32(0.9))
    compiled = loop.lower(*args).compile()
    passes = int(np.asarray(compiled(*args)[1]).max() - np.asarray(state.forwards).max())
    return {"passes": passes, **profile_steps(compiled, args, passes)}


def passes_per_token(model: Model, prompts, new_tokens: int, threshold: float, small_block_size: int,
                     eos_id: int | None = None, repeats: int = 1) -> dict:
    """``dllm_generate`` passes per generated token over a prompt set: each prompt compiled first, then the
    fastest of ``repeats`` runs of it."""
    def run(prompt):
        return dllm_generate(model, prompt, new_tokens, threshold=threshold, small_block_size=small_block_size,
                             eos_id=eos_id).stats

    for p in prompts:
        run(p)
    stats = [min((run(p) for _ in range(repeats)), key=lambda s: s.total_s) for p in prompts]
    passes, tokens = sum(s.forward_passes for s in stats), sum(s.new_tokens for s in stats)
    prefill_passes = sum(len(p) >= model.config.bd_size for p in prompts)  # one pass over each prompt's blocks
    return {"threshold": threshold, "new_tokens": tokens, "forward_passes": passes,
            "passes_per_token": passes / tokens, "tokens_per_s": tokens / sum(s.total_s for s in stats),
            "ms_per_decode_pass": 1e3 * sum(s.decode_s for s in stats) / max(passes - prefill_passes, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny shape and sizes, runs on CPU in seconds")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--small-block-size", type=int, default=8)
    parser.add_argument("--checkpoint", help="a converted Fast-dLLM v2 checkpoint for the passes-per-token runs")
    parser.add_argument("--pair", help="a demo pair directory: passes per token of its drafter on HumanEval prompts")
    parser.add_argument("--tasks", type=int, nargs=2, default=[0, 16], metavar=("FIRST", "STOP"))
    parser.add_argument("--profile", action="store_true", help="also profile the decode loop's kernels per pass")
    parser.add_argument("--profile-only", action="store_true", help="only the profile (no latency or pass counts)")
    parser.add_argument("--latency-only", action="store_true", help="only the block latencies (no pass counts)")
    args = parser.parse_args()
    if args.tiny:
        args.context, args.new = 128, 64

    shape = "tiny" if args.tiny else "qwen2.5-1.5b"
    config = dllm_shape(shape)
    params = jax.jit(functools.partial(decoder.init_params, config, dtype=jnp.bfloat16))(jax.random.key(0))
    model = Model(config, params)
    if args.profile or args.profile_only:
        profile = profile_passes(model, args.context, args.new, args.small_block_size)
        common.write_results("dllm_profile.json", profile)
        print_profile(profile, "pass")
        if args.profile_only:
            return
    bandwidth = common.measured_read_bandwidth(64 << 20 if args.tiny else 4 << 30)
    needed = common.decode_bytes_per_token(config, args.context + config.bd_size)
    limit_s = needed["total"] / bandwidth
    latency = block_latencies(model, args.context, args.small_block_size)
    print(f"block over {args.context} cached tokens: forward {1e3 * latency['forward_s']:.3f} ms, drafter pass "
          f"{1e3 * latency['drafter_pass_s']:.3f} ms (HBM limit {1e3 * limit_s:.3f} ms at "
          f"{bandwidth / 1e12:.2f} TB/s)", flush=True)
    if args.latency_only:
        return

    if args.pair:
        from benchmarks.failfast_humaneval import humaneval_prompts
        generation_model = load(f"{args.pair}/drafter", dtype=jnp.bfloat16)
        prompts = humaneval_prompts(load(f"{args.pair}/verifier").tokenizer(), *args.tasks)
        eos_id = generation_model.config.eos_token_ids[0]
        generation = []
        for t in (0.9, 0.05):
            generation.append(passes_per_token(generation_model, prompts, args.new, t, args.small_block_size, eos_id))
            print(generation[-1], flush=True)
        args.checkpoint = f"{args.pair}/drafter, HumanEval tasks {args.tasks[0]}-{args.tasks[1] - 1}, eos stop"
    else:
        generation_model = load(args.checkpoint, dtype=jnp.bfloat16) if args.checkpoint else model
        prompt = np.random.RandomState(0).randint(0, generation_model.config.mask_token_id, args.context).astype(np.int32)
        generation = [passes_per_token(generation_model, [prompt], args.new, t, args.small_block_size, repeats=3)
                      for t in (0.9, 0.05)]

    device = jax.devices()[0].device_kind
    results = {"device": device, "shape": "Fast_dLLM_v2_1.5B" if not args.tiny else "tiny", "bd_size": 32,
               "context": args.context, "read_bandwidth_Bps": bandwidth, "bytes": needed,
               "hbm_limit_ms": 1e3 * limit_s, "forward_ms": 1e3 * latency["forward_s"],
               "drafter_pass_ms": 1e3 * latency["drafter_pass_s"],
               "generation_weights": args.checkpoint or "random", "generation": generation}
    common.write_results("dllm_bench.json", results)

    print(f"device: {device}; read bandwidth {bandwidth / 1e12:.2f} TB/s; {results['shape']}, 32-token block over "
          f"a {args.context}-token cache")
    print("| measure | ms | x HBM limit |")
    print("|---|---|---|")
    print(f"| HBM limit ({needed['weights'] / 1e9:.2f} GB weights + {needed['kv'] / 1e6:.1f} MB KV) "
          f"| {results['hbm_limit_ms']:.3f} | 1.00 |")
    for key, label in (("forward_ms", "forward (decoder + logits)"), ("drafter_pass_ms", "drafter pass (advance)")):
        print(f"| {label} | {results[key]:.3f} | {results[key] / results['hbm_limit_ms']:.2f} |")
    print(f"\ndllm_generate, {'HumanEval prompts' if args.pair else f'{args.context}-token prompt'}, "
          f"{args.new} new tokens, weights: "
          f"{results['generation_weights']}")
    print("| threshold | forward passes | passes / token | ms / decode pass | tokens/s |")
    print("|---|---|---|---|---|")
    for g in generation:
        print(f"| {g['threshold']} | {g['forward_passes']} | {g['passes_per_token']:.3f} | "
              f"{g['ms_per_decode_pass']:.3f} | {g['tokens_per_s']:.1f} |")


if __name__ == "__main__":
    main()
