"""Where a FailFast round's time goes (issue 4's benchmark): drafting, verification, and the loop's own
bookkeeping.

    python benchmarks/speculate_bench.py --pair DIR [--tasks 0 16] [--new 256]   # the real demo pair, HumanEval
    python benchmarks/speculate_bench.py [--shape qwen2.5-1.5b] [--context 1024]  # random weights at a shape

Each prompt is decoded by ``speculate`` (compiled first, never timed) and by vanilla ``generate``. The forwards
the loop runs are then costed one by one, each inside a jitted loop of its own so no per-call dispatch is
counted that the speculative loop does not pay, over a cache as long as the loop's:
* prefill: the verifier's prompt pass and the drafter's prompt blocks (a lone call, as ``speculate`` makes one);
* a drafter pass: one 32-token block (``drafter.advance``), times the drafter forwards after prefill;
* a verification in each bucket (16/32/64/96 by default), times the rounds whose draft used that bucket.
Bookkeeping is what is left of the wall time: drafting-window decisions, acceptance, cache rollback, the
while-loops' per-iteration predicate reads. It is an upper bound on the loop's own overhead (any forward
running slower inside the loop than alone lands in it too). Meant for accelerators: on a CPU, a tiny model's
forward costs about as much as the loop around it and the subtraction is noise (it can even go negative).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ffjax  # noqa: E402
from benchmarks import common  # noqa: E402
from ffjax import decoder, drafter, shapes  # noqa: E402
from ffjax.checkpoint import Model  # noqa: E402
from ffjax.failfast_config import FailFastConfig  # noqa: E402
from ffjax.generate import generate  # noqa: E402
from ffjax.speculate import prefill_pair, speculate  # noqa: E402


def in_loop_seconds(step, params, carry, iterations: int = 64) -> float:
    """Seconds per call of ``step(params, carry) -> carry`` run back to back inside one jitted loop: the cost a
    forward has inside the speculative loop, without the per-call dispatch a lone jitted call pays. The params
    are an argument, as in the loop: closed over, they would be baked into the program as gigabytes of constants."""
    # A traced trip count: XLA must not unroll 64 copies of a whole model forward.
    loop = jax.jit(lambda p, c, n: jax.lax.fori_loop(0, n, lambda _, c: step(p, c), c))
    count = jnp.int32(iterations)
    compiled = loop.lower(params, carry, count).compile()
    return common.time_fn(lambda: compiled(params, carry, count), repeats=5, warmup=1) / iterations


def forward_costs(verifier: Model, draft_model: Model, ff: FailFastConfig, padded_prompt, prompt_len: int,
                  cache_len: int, context: int) -> dict:
    """Seconds of each kind of forward the loop runs, at ``cache_len`` slots holding ``context`` tokens."""
    vcfg, dcfg = verifier.config, draft_model.config
    bd = dcfg.bd_size

    @jax.jit
    def prefill(vparams, dparams, padded):
        _, first, vcache, dcache, passes = prefill_pair(vcfg, dcfg, vparams, dparams, padded, prompt_len, cache_len)
        return first, vcache.k, dcache.k, passes

    prefill_args = (verifier.params, draft_model.params, jnp.asarray(padded_prompt))
    prefill_passes = int(prefill(*prefill_args)[-1])
    prefill_s = common.time_fn(lambda: prefill(*prefill_args), repeats=10, warmup=2)

    dcache = decoder.new_cache(dcfg, draft_model.params, 1, cache_len).with_length((context // bd) * bd)
    block = jnp.full((1, bd), dcfg.mask_token_id, jnp.int32).at[:, 0].set(1)
    state = drafter.DraftState(cache=dcache, tokens=block, masked=block == dcfg.mask_token_id,
                               confidence=jnp.zeros((1, bd), jnp.float32), forwards=jnp.zeros((1,), jnp.int32))
    # A drafter step that keeps its block masked, so every iteration is a step (a commit costs the same pass).
    draft_s = in_loop_seconds(lambda params, s: drafter.advance(dcfg, params, s, ff.drafter_threshold,
                                                                small_block_size=ff.small_block_size)[0]
                              .replace(masked=s.masked), draft_model.params, state)

    vcache = decoder.new_cache(vcfg, verifier.params, 1, cache_len).with_length(context)

    def verify_step(params, carry):
        tokens, cache = carry
        hidden, cache = decoder.decode(vcfg, params, tokens, cache)
        return jnp.argmax(decoder.logits(vcfg, params, hidden), -1).astype(jnp.int32), cache

    verify_s = {b: in_loop_seconds(verify_step, verifier.params, (jnp.ones((1, b), jnp.int32), vcache))
                for b in ff.buckets}
    return {"prefill_s": prefill_s, "prefill_drafter_passes": prefill_passes, "drafter_pass_s": draft_s,
            "verify_s": verify_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", help="a demo pair directory (verifier/, drafter/): HumanEval prompts")
    parser.add_argument("--tasks", type=int, nargs=2, default=[0, 16], metavar=("FIRST", "STOP"))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--shape", default="qwen2.5-1.5b", help="without --pair: random weights at this shape")
    parser.add_argument("--context", type=int, default=1024, help="without --pair: random prompt length")
    parser.add_argument("--new", type=int, default=256)
    args = parser.parse_args(argv)
    ff = FailFastConfig()

    if args.pair:
        from benchmarks.failfast_humaneval import HELD_OUT_FROM, humaneval_prompts
        if args.tasks[1] > HELD_OUT_FROM:
            parser.error(f"tasks from {HELD_OUT_FROM} on are held out")
        verifier = ffjax.load(os.path.join(args.pair, "verifier"), dtype=args.dtype)
        draft_model = ffjax.load(os.path.join(args.pair, "drafter"), dtype=args.dtype)
        prompts = [np.asarray(p, np.int32) for p in humaneval_prompts(verifier.tokenizer(), *args.tasks)]
        eos_id = verifier.config.eos_token_ids[0]
        source = f"demo pair, HumanEval tasks {args.tasks[0]}-{args.tasks[1] - 1}"
    else:
        vcfg = common.shape_config(args.shape)
        dcfg = dataclasses.replace(vcfg, model_type="fast_dllm_qwen", bd_size=32,
                                   mask_token_id=vcfg.vocab_size - 1 if args.shape == "tiny" else 151665)
        verifier, draft_model = (Model(cfg, jax.jit(lambda k, c=cfg: decoder.init_params(c, k, args.dtype))(
            jax.random.key(seed))) for seed, cfg in enumerate((vcfg, dcfg)))
        prompts = [np.random.RandomState(0).randint(0, min(100_000, vcfg.vocab_size - 1), args.context)
                   .astype(np.int32)]
        eos_id = None
        source = f"random weights at the {args.shape} shape, a {args.context}-token prompt"

    bucket = shapes.round_up(max(len(p) for p in prompts), 64)
    def run(prompt):
        return speculate(verifier, draft_model, prompt, args.new, config=ff, eos_id=eos_id, prompt_bucket=bucket)

    run(prompts[0])  # compile
    generate(verifier, prompts[0], args.new, eos_id=eos_id, prompt_bucket=bucket)
    spec = [run(p).stats for p in prompts]
    vanilla = [generate(verifier, p, args.new, eos_id=eos_id, prompt_bucket=bucket).stats for p in prompts]

    middle = sorted(prompts, key=len)[len(prompts) // 2]  # forwards are costed at the median prompt's length
    cache_len = shapes.cache_length(bucket, args.new, extra=ff.buckets[-1] + 2 * draft_model.config.bd_size)
    padded = np.zeros((1, bucket), np.int32)
    padded[0, :len(middle)] = middle
    costs = forward_costs(verifier, draft_model, ff, padded, len(middle), cache_len,
                          context=len(middle) + args.new // 2)

    wall = sum(s.wall_time_s for s in spec)
    prefill = len(spec) * costs["prefill_s"]
    loop_draft_passes = sum(s.drafter_forwards for s in spec) - len(spec) * costs["prefill_drafter_passes"]
    draft = loop_draft_passes * costs["drafter_pass_s"]
    round_buckets = [ff.buckets[int(np.searchsorted(ff.buckets, k + 1))] for s in spec for k in s.drafted]
    verify = sum(costs["verify_s"][b] for b in round_buckets)
    loop = wall - prefill
    bookkeeping = loop - draft - verify
    rounds = sum(s.rounds for s in spec)
    tokens = sum(s.new_tokens for s in spec)
    result = {
        "device": jax.devices()[0].device_kind, "jax": jax.__version__, "source": source, "dtype": args.dtype,
        "prompts": len(prompts), "new": args.new, "prompt_bucket": bucket, "cache_len": cache_len,
        "costs": {**costs, "verify_s": {str(b): s for b, s in costs["verify_s"].items()}},
        "rounds": rounds, "tokens": tokens, "loop_drafter_passes": loop_draft_passes,
        "bucket_rounds": {str(b): round_buckets.count(b) for b in ff.buckets},
        "wall_s": wall, "prefill_s": prefill, "draft_s": draft, "verify_s": verify, "bookkeeping_s": bookkeeping,
        "bookkeeping_share_of_round": bookkeeping / loop,
        "speculate_tokens_per_s": tokens / wall,
        "vanilla_tokens_per_s": sum(s.new_tokens for s in vanilla) / sum(s.total_s for s in vanilla),
        "mean_accepted": float(np.mean(np.concatenate([s.accepted for s in spec]))),
    }
    common.write_results("speculate_bench.json", result)
    ms = lambda seconds: 1e3 * seconds / rounds  # noqa: E731
    print(f"{result['device']}, {args.dtype}, {source}, {args.new} new tokens: {rounds} rounds, {tokens} tokens, "
          f"{loop_draft_passes} drafter passes in rounds ({costs['drafter_pass_s'] * 1e3:.3f} ms each), "
          f"verify ms per bucket {({b: round(s * 1e3, 3) for b, s in costs['verify_s'].items()})}, "
          f"rounds per bucket {result['bucket_rounds']}, prefill {costs['prefill_s'] * 1e3:.3f} ms per prompt")
    print(f"speculate {result['speculate_tokens_per_s']:.1f} tok/s, vanilla {result['vanilla_tokens_per_s']:.1f} "
          f"tok/s (same run), mean accepted {result['mean_accepted']:.2f}")
    print("| per round | draft | verify | bookkeeping | round |\n|---|---|---|---|---|")
    print(f"| ms | {ms(draft):.3f} | {ms(verify):.3f} | {ms(bookkeeping):.3f} | {ms(loop):.3f} |")
    print(f"| share | {100 * draft / loop:.1f}% | {100 * verify / loop:.1f}% | {100 * bookkeeping / loop:.1f}% | "
          f"100% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
