"""A/B of kernel switches, XLA compile options or skinny_gemm plans on batch-1 greedy decode (or the drafter's
pass), interleaved in one process (A B A B ...), tokens compared, with the HBM limit measured in the same run.

    python benchmarks/ab_decode.py --shape qwen2.5-7b --env FFJAX_SKINNY_GEMM=off,auto [--rounds 3]
    python benchmarks/ab_decode.py --env FFJAX_ATTENTION=auto,gpu_mosaic --context 32768 --new 32 --forward 1 32
    python benchmarks/ab_decode.py --xla-options default pdl:xla_gpu_enable_pdl=true,xla_gpu_enable_pdl_launch=true
    python benchmarks/ab_decode.py --skinny-plans landed "gate_up:1x37888x3584=64/256/4/2"
    python benchmarks/ab_decode.py --env FFJAX_PALLAS_PDL=off,on --xla-options default pdl:xla_gpu_enable_pdl=true
    python benchmarks/ab_decode.py --workload dllm --shape qwen2.5-1.5b --xla-options default \\
        cublaslt:xla_gpu_enable_triton_gemm=false,xla_gpu_enable_cublaslt=true

Each variant sets its environment variable (``--env``), its XLA options (``--xla-options LABEL[:NAME=VALUE,...]``,
passed to each program's compile by ``ffjax.executables.xla_options``; XLA_FLAGS, read once per process, could not
alternate) or entries of ``skinny_gemm.PLANS`` (``--skinny-plans``); given more than one of these, every combination
is a variant. It drops every compiled executable (all three
are read at trace time), runs once to compile and compare tokens with the first variant (a change or a failure
stops the run, unless ``--keep-going``), then takes the median of 5 timed runs. ``--workload generate`` times
`generate` in ms/token; ``--workload dllm`` times `dllm_generate`'s in-loop decode pass at the shape made a
Fast-dLLM v2 drafter (issue 3's measure), in ms/pass.
``--forward K ...`` also times one forward of K new tokens over a ``--context``-token cache (the verifier's cost).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import sys
from typing import Callable

import jax
import numpy as np

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from benchmarks.decode_bench import forward_latency  # noqa: E402
from benchmarks.dllm_bench import dllm_shape  # noqa: E402
from ffjax import executables  # noqa: E402
from ffjax.checkpoint import Model  # noqa: E402
from ffjax.dllm_generate import dllm_generate  # noqa: E402
from ffjax.generate import generate  # noqa: E402
from pallas_kernels import skinny_gemm  # noqa: E402


def option_value(text: str):
    """An XLA option's value from the command line: true/false as bools, integers as ints, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def parse_xla_variant(text: str) -> tuple[str, dict]:
    """'LABEL' (no options) or 'LABEL:NAME=VALUE,NAME=VALUE' -> (label, options)."""
    label, _, spec = text.partition(":")
    options = {}
    for item in filter(None, spec.split(",")):
        name, equals, value = item.partition("=")
        if not equals:
            raise SystemExit(f"--xla-options {text!r}: {item!r} is not NAME=VALUE")
        options[name] = option_value(value)
    return label, options


def parse_plan_variant(text: str) -> tuple[str, dict]:
    """'LABEL' (the landed plans) or 'LABEL:RxNxK=BN/BK/STEPS/SPLIT;...' -> (label, entries to add to
    ``skinny_gemm.PLANS``: x [R, K] times a weight [N, K] in block_n BN, block_k BK, STEPS deep, split-K SPLIT)."""
    label, _, spec = text.partition(":")
    entries = {}
    for item in filter(None, spec.split(";")):
        try:
            shape, config = item.split("=")
            rows, num_out, width = (int(v) for v in shape.split("x"))
            block_n, block_k, steps, split_k = (int(v) for v in config.split("/"))
        except ValueError:
            raise SystemExit(f"--skinny-plans {text!r}: {item!r} is not RxNxK=BN/BK/STEPS/SPLIT") from None
        entries[(skinny_gemm.padded_rows(rows), num_out, width)] = skinny_gemm.SkinnyConfig(
            block_n=block_n, block_k=block_k, max_concurrent_steps=steps, split_k=split_k)
    return label, entries


@contextlib.contextmanager
def added_plans(entries: dict):
    """``skinny_gemm.PLANS`` with these entries while the block runs (the decoder reads it while tracing)."""
    landed = dict(skinny_gemm.PLANS)
    skinny_gemm.PLANS.update(entries)
    try:
        yield
    finally:
        skinny_gemm.PLANS.clear()
        skinny_gemm.PLANS.update(landed)


def variants(args) -> tuple[str, list[tuple[str, Callable[[], contextlib.AbstractContextManager]]]]:
    """(what varies, [(label, a function making a context that applies the variant)]). Given more than one of
    --env, --xla-options and --skinny-plans, every combination is a variant, labelled "a/b"."""
    axes = []
    if args.env:
        if args.values:
            variable, values = args.env, args.values
        else:
            variable, values = args.env.split("=", 1)
            values = values.split(",")

        @contextlib.contextmanager
        def env(value):
            os.environ[variable] = value
            yield

        axes.append((variable, [(value, functools.partial(env, value)) for value in values]))
    if args.xla_options:
        parsed = [parse_xla_variant(v) for v in args.xla_options]
        axes.append(("XLA options", [(label, functools.partial(executables.xla_options, options))
                                     for label, options in parsed]))
    if args.skinny_plans:
        parsed = [parse_plan_variant(v) for v in args.skinny_plans]
        axes.append(("skinny_gemm plans", [(label, functools.partial(added_plans, entries))
                                           for label, entries in parsed]))
    if not axes:
        raise SystemExit("give --env, --xla-options or --skinny-plans")
    if len(axes) == 1:
        return axes[0]

    @contextlib.contextmanager
    def all_of(contexts):
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context())
            yield

    combinations = itertools.product(*(cases for _, cases in axes))
    return " x ".join(name for name, _ in axes), [
        ("/".join(label for label, _ in combination), functools.partial(all_of, [c for _, c in combination]))
        for combination in combinations]


def workload(args):
    """(config, model, run): ``run()`` returns (tokens, the time this workload reports in ms)."""
    if args.workload == "dllm":
        config = dllm_shape(args.shape)
        model = Model(config, common.random_params(config))
        prompt = np.random.RandomState(0).randint(0, config.mask_token_id, args.context).astype(np.int32)
        prefill_passes = int(args.context >= config.bd_size)  # one pass over the prompt's complete blocks

        def run():
            result = dllm_generate(model, prompt, args.new, threshold=args.threshold)
            return result.tokens, 1e3 * result.stats.decode_s / (result.stats.forward_passes - prefill_passes)
    else:
        config = common.shape_config(args.shape)
        model = Model(config, common.random_params(config))
        prompt = np.random.RandomState(0).randint(0, config.vocab_size, args.context).astype(np.int32)

        def run():
            result = generate(model, prompt, args.new)
            return result.tokens, result.stats.decode_ms_per_token
    return config, model, run


def main(argv=None, cases=None):
    """``cases``: (what varies, [(label, a function making a context that applies the variant)]), for a trial script
    whose variants are neither switches nor XLA options (e.g. an edited ``skinny_gemm.PLANS``); else from argv."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-7b")
    parser.add_argument("--workload", choices=["generate", "dllm"], default="generate")
    parser.add_argument("--env", help="VAR=value_a,value_b[,...], or VAR with --values")
    parser.add_argument("--values", nargs="+", help="the values of --env VAR, for values holding commas")
    parser.add_argument("--xla-options", nargs="+", metavar="LABEL[:NAME=VALUE,...]",
                        help="variants of XLA compile options instead of --env")
    parser.add_argument("--skinny-plans", nargs="+", metavar="LABEL[:RxNxK=BN/BK/STEPS/SPLIT;...]",
                        help="variants of skinny_gemm.PLANS: entries added to the landed table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.9, help="the drafter's threshold (--workload dllm)")
    parser.add_argument("--forward", type=int, nargs="*", default=[], help="also time forwards of these sizes")
    parser.add_argument("--keep-going", action="store_true",
                        help="time every variant even if one changes the greedy tokens or fails (reported, not fatal)")
    args = parser.parse_args(argv)
    varied, cases = cases or variants(args)
    labels = [label for label, _ in cases]
    unit = "ms/pass" if args.workload == "dllm" else "ms/token"
    print("jax", jax.__version__, jax.devices()[0].device_kind, flush=True)
    bandwidth = common.measured_read_bandwidth(64 << 20 if args.shape == "tiny" else 4 << 30)
    config, model, run = workload(args)
    context = args.context + (config.bd_size if args.workload == "dllm" else args.new // 2)
    limit_ms = 1e3 * common.decode_bytes_per_token(config, context)["total"] / bandwidth
    first_tokens, ms, identical, failed = None, {v: [] for v in labels}, {v: [] for v in labels}, set()
    forward_ms = {v: {k: [] for k in args.forward} for v in labels}
    for round_index in range(args.rounds):
        for label, applied in cases:
            with applied():
                executables.clear()
                jax.clear_caches()
                try:
                    tokens = np.asarray(run()[0])
                except Exception as error:  # e.g. an XLA option this jaxlib does not have
                    if not args.keep_going:
                        raise
                    print(f"round {round_index} {varied} {label}: failed, {str(error).splitlines()[-1][:200]}",
                          flush=True)
                    failed.add(label)
                    continue
                first_tokens = tokens if first_tokens is None else first_tokens
                same = tokens.shape == first_tokens.shape and bool((tokens == first_tokens).all())
                identical[label].append(same)
                ms[label].append(float(np.median([run()[1] for _ in range(5)])))
                print(f"round {round_index} {varied} {label}: {ms[label][-1]:.4f} {unit}, tokens identical to "
                      f"{labels[0]}: {same}", flush=True)
                if not same and not args.keep_going:
                    raise SystemExit(f"{varied} {label} changed the greedy tokens")
                for k in args.forward:
                    forward_ms[label][k].append(1e3 * forward_latency(config, model.params, args.context, k)[0])
                    print(f"  forward of {k} over {args.context}: {forward_ms[label][k][-1]:.4f} ms", flush=True)
    common.write_results("ab_decode.json", {"shape": args.shape, "workload": args.workload, "variable": varied,
                                            "variants": labels,
                                            "ms": ms, "unit": unit, "forward_ms": forward_ms,
                                            "tokens_identical": identical, "failed": sorted(failed),
                                            "context": args.context,
                                            "hbm_limit_ms": limit_ms, "read_bandwidth": bandwidth})
    print(f"\n{args.shape} ({args.workload}): HBM limit {limit_ms:.3f} {unit} ({bandwidth / 1e12:.2f} TB/s read)")
    print(f"| {varied} | {unit} per round | median | × limit |" + "".join(f" fwd k={k} ms |" for k in args.forward))
    for label, xs in ms.items():
        if not xs:
            print(f"| {label} | failed | | |")
            continue
        print(f"| {label} | {' / '.join(f'{x:.3f}' for x in xs)} | {np.median(xs):.3f} | "
              f"{np.median(xs) / limit_ms:.3f} |" + "".join(f" {np.median(forward_ms[label][k]):.3f} |"
                                                           for k in args.forward))


if __name__ == "__main__":
    main()
