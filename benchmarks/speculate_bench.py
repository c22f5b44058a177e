"""Where a FailFast round's time goes (issue 4's benchmark): drafting, verification, and the loop's own
bookkeeping, at the Qwen2.5-1.5B verifier shape with a Fast_dLLM_v2_1.5B-shaped drafter (bf16, random weights).

    python benchmarks/speculate_bench.py [--context 1024] [--new 256] [--shape qwen2.5-1.5b]

The round's own overhead (bookkeeping) is what is left of the loop's wall time once its drafter and verifier
forwards are subtracted, each costed inside a jitted loop of its own in the same run (a lone jitted call would
add per-call dispatch the speculative loop does not pay). Verification is costed at the 16-token bucket; longer
drafts verify in larger buckets, which makes the verify share a lower bound and bookkeeping an upper bound.
Random weights: what the drafts look like depends on them (random Qwen-shaped models tend to repeat their
input token, so drafts are often accepted), which does not change what a forward or the bookkeeping costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from ffjax import decoder, drafter, shapes  # noqa: E402
from ffjax.checkpoint import Model  # noqa: E402
from ffjax.failfast_config import FailFastConfig  # noqa: E402
from ffjax.generate import generate  # noqa: E402
from ffjax.kv_cache import KVCache  # noqa: E402
from ffjax.speculate import speculate  # noqa: E402


def in_loop_seconds(step, carry, iterations: int = 64) -> float:
    """Seconds per call of ``step(carry) -> carry`` run back to back inside one jitted loop: the cost a forward
    has inside the speculative loop, without the per-call dispatch a lone jitted call pays."""
    # A traced trip count: XLA must not unroll 64 copies of a whole model forward.
    loop = jax.jit(lambda c, n: jax.lax.fori_loop(0, n, lambda _, c: step(c), c))
    count = jnp.int32(iterations)
    compiled = loop.lower(carry, count).compile()
    return common.time_fn(lambda: compiled(carry, count), repeats=5, warmup=1) / iterations


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    vcfg = common.shape_config(args.shape)
    dcfg = dataclasses.replace(vcfg, model_type="fast_dllm_qwen", bd_size=32,
                               mask_token_id=vcfg.vocab_size - 1 if args.shape == "tiny" else 151665)
    vparams = jax.jit(lambda k: decoder.init_params(vcfg, k, jnp.bfloat16))(jax.random.key(0))
    dparams = jax.jit(lambda k: decoder.init_params(dcfg, k, jnp.bfloat16))(jax.random.key(1))
    verifier, draft_model = Model(vcfg, vparams), Model(dcfg, dparams)
    prompt = np.random.RandomState(0).randint(0, 100_000 % vcfg.vocab_size, args.context).astype(np.int32)
    ff = FailFastConfig()

    speculate(verifier, draft_model, prompt, args.new, config=ff)  # compile
    runs = [speculate(verifier, draft_model, prompt, args.new, config=ff).stats for _ in range(args.repeats)]
    stats = min(runs, key=lambda s: s.wall_time_s)
    vanilla = min((generate(verifier, prompt, args.new).stats for _ in range(args.repeats)), key=lambda s: s.total_s)

    # The same forwards, alone: a drafter pass over one 32-token block, a verification of an 11-token draft
    # (bucket 16), each over a cache of `context` tokens.
    cache_len = shapes.cache_length(shapes.prompt_bucket(args.context), args.new, 96 + 64)
    dcache = KVCache.create(dcfg, 1, cache_len, jnp.bfloat16).with_length((args.context // 32) * 32)
    state = drafter.DraftState(cache=dcache, tokens=jnp.full((1, 32), dcfg.mask_token_id, jnp.int32).at[:, 0].set(1),
                               masked=jnp.ones((1, 32), bool).at[:, 0].set(False),
                               confidence=jnp.zeros((1, 32), jnp.float32), forwards=jnp.zeros((1,), jnp.int32))
    # A drafter step that keeps its block masked (so every iteration is a step, never a commit).
    t_draft = in_loop_seconds(
        lambda s: drafter.advance(dcfg, dparams, s, 0.05, small_block_size=8)[0].replace(masked=s.masked), state)
    vcache = KVCache.create(vcfg, 1, cache_len, jnp.bfloat16).with_length(args.context)

    def verify_step(carry):
        tokens, cache = carry
        hidden, cache = decoder.decode(vcfg, vparams, tokens, cache)
        return jnp.argmax(decoder.logits(vcfg, vparams, hidden), -1).astype(jnp.int32), cache

    t_verify = in_loop_seconds(verify_step, (jnp.ones((1, 16), jnp.int32), vcache))

    per_round = stats.wall_time_s / stats.rounds
    draft_share = (stats.drafter_forwards * t_draft) / stats.wall_time_s
    verify_share = (stats.verifier_forwards * t_verify) / stats.wall_time_s
    bookkeeping = 1.0 - draft_share - verify_share
    result = {
        "device": jax.devices()[0].device_kind, "shape": args.shape, "context": args.context, "new": args.new,
        "rounds": stats.rounds, "drafter_forwards": stats.drafter_forwards,
        "verifier_forwards": stats.verifier_forwards, "wall_s": stats.wall_time_s, "round_ms": 1e3 * per_round,
        "drafter_forward_ms": 1e3 * t_draft, "verify16_forward_ms": 1e3 * t_verify,
        "draft_share": draft_share, "verify_share": verify_share, "bookkeeping_share": bookkeeping,
        "speculate_tokens_per_s": stats.tokens_per_s, "vanilla_tokens_per_s": vanilla.tokens_per_s,
        "mean_drafted": float(stats.drafted.mean()), "acceptance": stats.acceptance_rate,
    }
    common.write_results("speculate_bench.json", result)
    print(f"| device | shape | rounds | round ms | drafter fwd ms | verify fwd ms | draft % | verify % | "
          f"bookkeeping % | spec tok/s (random weights) | vanilla tok/s |")
    print(f"| {result['device']} | {args.shape} | {stats.rounds} | {result['round_ms']:.3f} | "
          f"{result['drafter_forward_ms']:.3f} | {result['verify16_forward_ms']:.3f} | {100 * draft_share:.1f} | "
          f"{100 * verify_share:.1f} | {100 * bookkeeping:.1f} | {stats.tokens_per_s:.1f} | "
          f"{vanilla.tokens_per_s:.1f} |")


if __name__ == "__main__":
    main()
