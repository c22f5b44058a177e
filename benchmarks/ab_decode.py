"""A/B of one environment switch on batch-1 greedy decode, interleaved in one process (A B A B ...), tokens
compared, with the HBM limit measured in the same run.

    python benchmarks/ab_decode.py --shape qwen2.5-7b --env FFJAX_SKINNY_GEMM=off,auto [--rounds 3]
    python benchmarks/ab_decode.py --env FFJAX_ATTENTION=auto,gpu_mosaic --context 32768 --new 32 --forward 1 32

Each variant sets the variable, drops every compiled executable (the switches are read at trace time), decodes
once to compile and compare tokens with the first variant (a change stops the run, unless ``--keep-going``),
then takes the median of 5 timed `generate` runs;
``--forward K ...`` also times one forward of K new tokens over a ``--context``-token cache (the verifier's cost).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from benchmarks.decode_bench import forward_latency  # noqa: E402
from ffjax import executables  # noqa: E402
from ffjax.checkpoint import Model  # noqa: E402
from ffjax.generate import generate  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-7b")
    parser.add_argument("--env", required=True, help="VAR=value_a,value_b[,...], or VAR with --values")
    parser.add_argument("--values", nargs="+", help="the values of --env VAR, for values holding commas")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--forward", type=int, nargs="*", default=[], help="also time forwards of these sizes")
    parser.add_argument("--keep-going", action="store_true",
                        help="time every variant even if one changes the greedy tokens (reported, not fatal)")
    args = parser.parse_args()
    if args.values:
        variable, values = args.env, args.values
    else:
        variable, values = args.env.split("=", 1)
        values = values.split(",")
    print("jax", jax.__version__, jax.devices()[0].device_kind, flush=True)
    bandwidth = common.measured_read_bandwidth()
    config = common.shape_config(args.shape)
    model = Model(config, common.random_params(config))
    prompt = np.random.RandomState(0).randint(0, config.vocab_size, args.context).astype(np.int32)
    limit_ms = 1e3 * common.decode_bytes_per_token(config, args.context + args.new // 2)["total"] / bandwidth
    first_tokens, ms, identical = None, {v: [] for v in values}, {v: [] for v in values}
    forward_ms = {v: {k: [] for k in args.forward} for v in values}
    for round_index in range(args.rounds):
        for value in values:
            os.environ[variable] = value
            executables.clear()
            jax.clear_caches()
            tokens = np.asarray(generate(model, prompt, args.new).tokens)
            first_tokens = tokens if first_tokens is None else first_tokens
            same = tokens.shape == first_tokens.shape and bool((tokens == first_tokens).all())
            identical[value].append(same)
            ms[value].append(float(np.median([generate(model, prompt, args.new).stats.decode_ms_per_token
                                              for _ in range(5)])))
            print(f"round {round_index} {variable}={value}: {ms[value][-1]:.4f} ms/token, tokens identical to "
                  f"{variable}={values[0]}: {same}", flush=True)
            if not same and not args.keep_going:
                raise SystemExit(f"{variable}={value} changed the greedy tokens")
            for k in args.forward:
                forward_ms[value][k].append(1e3 * forward_latency(config, model.params, args.context, k)[0])
                print(f"  forward of {k} over {args.context}: {forward_ms[value][k][-1]:.4f} ms", flush=True)
    common.write_results("ab_decode.json", {"shape": args.shape, "variable": variable, "ms_per_token": ms,
                                            "forward_ms": forward_ms, "tokens_identical": identical,
                                            "context": args.context,
                                            "hbm_limit_ms": limit_ms, "read_bandwidth": bandwidth})
    print(f"\n{args.shape}: HBM limit {limit_ms:.3f} ms/token ({bandwidth / 1e12:.2f} TB/s read)")
    print(f"| {variable} | ms/token per round | median | × limit |"
          + "".join(f" fwd k={k} ms |" for k in args.forward))
    for value, xs in ms.items():
        print(f"| {value} | {' / '.join(f'{x:.3f}' for x in xs)} | {np.median(xs):.3f} | "
              f"{np.median(xs) / limit_ms:.3f} |" + "".join(f" {np.median(forward_ms[value][k]):.3f} |"
                                                           for k in args.forward))


if __name__ == "__main__":
    main()
