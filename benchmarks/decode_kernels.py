"""What one decode step launches: the kernels in the compiled decode loop's body, by kind (issue 2's open goal).

    python benchmarks/decode_kernels.py [--shape qwen2.5-1.5b] [--context 1024] [--hlo-out FILE]

The 1.5B decode is launch-bound (BENCHMARKS.md): this counts the instructions of the loop body in XLA's
optimized HLO that run as kernels (fusions, library calls, copies, scatters, ...), expanding nested loops by
their known trip counts, so each change to the decoder can be judged by how many kernels a token costs before it
is timed. Counts come from the HLO of the platform it runs on (the GPU's differs from the CPU's).
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
import re
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from ffjax import decoder, shapes  # noqa: E402

# Instructions that move no data on the device: buffer bookkeeping, never a kernel.
NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all", "partition-id",
               "replica-id", "opt-barrier", "add-dependency"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def computations(hlo: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines} of an HLO module's text."""
    result, current = {}, None
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header and not line.startswith(" "):
            current = result.setdefault(header.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None and line.strip():
            current.append(line)
    return result


def kernel_kind(opcode: str, rest: str) -> str:
    if opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        return f"custom-call {target.group(1) if target else '?'}"
    if opcode == "fusion":
        kind = re.search(r"kind=(\w+)", rest)
        return f"fusion {kind.group(1) if kind else '?'}"
    return opcode


def count_kernels(comps: dict, name: str) -> collections.Counter:
    """Kernels one run of computation ``name`` launches; nested while bodies count trip-count times."""
    counts = collections.Counter()
    for line in comps[name]:
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        opcode, rest = match.groups()
        if opcode in NOT_KERNELS:
            continue
        if opcode == "while":
            body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', rest)
            inner = count_kernels(comps, body)
            counts.update({k: v * (int(trips.group(1)) if trips else 1) for k, v in inner.items()})
            if not trips:
                counts["while with an unknown trip count (counted once)"] += 1
        elif opcode in ("call", "conditional"):
            for callee in re.findall(r"(?:to_apply|branch_computations=\{|true_computation|false_computation)"
                                     r"=?%?([\w.\-]+)", rest)[:1]:
                counts.update(count_kernels(comps, callee))
        else:
            counts[kernel_kind(opcode, rest)] += 1
    return counts


def decode_loop_hlo(config, params, context: int) -> str:
    """Optimized HLO of ``generate``'s decode loop for one row at ``context`` cached tokens."""
    generation = importlib.import_module("ffjax.generate")  # the module, not the function ffjax exports
    cache_len = shapes.cache_length(context, 128)
    cache = decoder.new_cache(config, params, 1, cache_len).with_length(context)
    loop = jax.jit(functools.partial(generation._decode_loop, config, capacity=128, greedy=True))
    return loop.lower(params, cache, jnp.zeros((1, config.vocab_size), jnp.float32), jnp.int32(128),
                      jnp.int32(-1), jnp.float32(0.0), jax.random.key(0)).compile().as_text()


def step_kernels(hlo: str) -> collections.Counter:
    """Kernels per decode step: the body of the entry computation's outermost while loop."""
    comps = computations(hlo)
    entry = next(m.group(1) for m in re.finditer(r"^ENTRY\s+%?([\w.\-]+)", hlo, re.M))
    bodies = [re.search(r"body=%?([\w.\-]+)", line).group(1) for line in comps[entry]
              if (m := _INSTRUCTION.match(line)) and m.group(1) == "while"]
    if len(bodies) != 1:
        raise RuntimeError(f"expected one decode loop in the entry computation, found {len(bodies)}")
    return count_kernels(comps, bodies[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--hlo-out", help="also write the optimized HLO here")
    args = parser.parse_args(argv)
    config = common.shape_config(args.shape)
    hlo = decode_loop_hlo(config, common.random_params(config), args.context)
    if args.hlo_out:
        with open(args.hlo_out, "w") as f:
            f.write(hlo)
    counts = step_kernels(hlo)
    total = sum(counts.values())
    device = jax.devices()[0].device_kind
    common.write_results("decode_kernels.json", {"device": device, "shape": args.shape, "context": args.context,
                                                 "kernels_per_step": total, "by_kind": dict(counts)})
    print(f"{device}, {args.shape}, {args.context}-token context: {total} kernels per decode step "
          f"({total / config.num_layers:.1f} per layer)")
    print("| kind | per step |\n|---|---|")
    for kind, n in counts.most_common():
        print(f"| {kind} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
