"""What one decode step launches: the kernels in the compiled decode loop's body, by kind (issue 2's open goal).

    python benchmarks/decode_kernels.py [--shape qwen2.5-1.5b] [--context 1024] [--hlo-out FILE] [--profile]

The 1.5B decode is launch-bound (BENCHMARKS.md): this counts the instructions of the loop body in XLA's
optimized HLO that run as kernels (fusions, library calls, copies, scatters, ...), expanding nested loops by
their known trip counts, so each change to the decoder can be judged by how many kernels a token costs before it
is timed. Counts come from the HLO of the platform it runs on (the GPU's differs from the CPU's). Where the HLO
has XLA:GPU's ``command_buffer`` computations, it also counts the kernels launched outside them (not in a CUDA
graph).

``--profile`` also runs the loop under JAX's profiler and reads what the device really executed: kernels per
token, the time they kept the device busy, and the idle gaps between them (wall per token minus busy is the
launch and synchronisation overhead). XLA turns command buffers off while profiling
(``xla_enable_command_buffers_during_profiling``), so a profile's gaps are larger than an unprofiled run's.
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
import tempfile
import time

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


def is_command_buffer(name: str) -> bool:
    """XLA:GPU's command-buffer scheduling moves runs of kernels into computations named ``command_buffer*``,
    called from the schedule and launched as one CUDA graph."""
    return name.startswith("command_buffer")


def count_kernels(comps: dict, name: str, *, outside_graphs: bool = False) -> collections.Counter:
    """Kernels one run of computation ``name`` launches; nested while bodies count trip-count times.
    ``outside_graphs``: only those launched one by one, not inside a command buffer (CUDA graph)."""
    counts = collections.Counter()
    count = functools.partial(count_kernels, comps, outside_graphs=outside_graphs)
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
            inner = count(body)
            counts.update({k: v * (int(trips.group(1)) if trips else 1) for k, v in inner.items()})
            if not trips:
                counts["while with an unknown trip count (counted once)"] += 1
        elif opcode in ("call", "conditional"):
            for callee in re.findall(r"(?:to_apply|branch_computations=\{|true_computation|false_computation)"
                                     r"=?%?([\w.\-]+)", rest)[:1]:
                if not (outside_graphs and is_command_buffer(callee)):
                    counts.update(count(callee))
        else:
            counts[kernel_kind(opcode, rest)] += 1
    return counts


NEW_TOKENS = 128


def compiled_decode_loop(config, params, context: int):
    """``generate``'s decode loop for one row at ``context`` cached tokens, compiled, with its arguments."""
    generation = importlib.import_module("ffjax.generate")  # the module, not the function ffjax exports
    cache_len = shapes.cache_length(context, NEW_TOKENS)
    cache = decoder.new_cache(config, params, 1, cache_len).with_length(context)
    loop = jax.jit(functools.partial(generation._decode_loop, config, capacity=NEW_TOKENS, greedy=True))
    args = (params, cache, jnp.zeros((1, config.vocab_size), jnp.float32), jnp.int32(NEW_TOKENS), jnp.int32(-1),
            jnp.float32(0.0), jax.random.key(0))
    return loop.lower(*args).compile(), args


def device_events(xspace_path: str) -> list[tuple[str, int, int]]:
    """(name, start ns, duration ns) of every kernel and copy on the accelerator's streams in a profile."""
    data = jax.profiler.ProfileData.from_file(xspace_path)
    events = []
    for plane in data.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if line.name.startswith("Stream"):
                events += [(e.name, int(e.start_ns), int(e.duration_ns)) for e in line.events]
    return sorted(events, key=lambda e: e[1])


def traced_events(fn, *args) -> tuple[float, list[tuple[str, int, int]]]:
    """(wall seconds, device events) of one call of fn run under JAX's profiler."""
    trace_dir = tempfile.mkdtemp(prefix="ffjax_profile_")
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    wall_s = time.perf_counter() - start
    jax.profiler.stop_trace()
    path = next(os.path.join(d, f) for d, _, files in os.walk(trace_dir) for f in files if f.endswith(".xplane.pb"))
    return wall_s, device_events(path)


def profile_steps(compiled, args, new_tokens: int) -> dict:
    """Runs the compiled loop under the profiler; per-token kernels, busy time and gaps from the device's
    own timeline."""
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    unprofiled_s = time.perf_counter() - start
    wall_s, events = traced_events(compiled, *args)
    if not events:
        return {"error": "the profile holds no device stream events (no accelerator, or CUPTI unavailable)"}
    busy_ns = sum(d for _, _, d in events)
    span_ns = max(s + d for _, s, d in events) - events[0][1]
    by_name = collections.defaultdict(lambda: [0, 0])
    for name, _, duration in events:
        key = re.sub(r"(\.|_)\d+$", "", name)[:80]  # fusion.12 / loop_fusion_3 -> one row per kind
        by_name[key][0] += 1
        by_name[key][1] += duration
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:25]
    # One step's kernels in launch order (from the middle of the run), to tell apart same-kind kernels.
    middle, per_step = len(events) // 2, -(-len(events) // new_tokens)
    sequence = [[name, round(1e-3 * duration, 2)] for name, _, duration in events[middle:middle + per_step]]
    return {"unprofiled_wall_ms_per_token": 1e3 * unprofiled_s / new_tokens,
            "wall_ms_per_token": 1e3 * wall_s / new_tokens, "span_ms_per_token": 1e-6 * span_ns / new_tokens,
            "busy_ms_per_token": 1e-6 * busy_ns / new_tokens, "events_per_token": len(events) / new_tokens,
            "top": [{"name": k, "per_token": n / new_tokens, "us_per_token": 1e-3 * t / new_tokens}
                    for k, (n, t) in top], "one_step_sequence": sequence}


def print_profile(profile: dict, step: str) -> None:
    """``profile_steps``' result as a table; ``step`` names what one loop iteration is (a token, a pass)."""
    if "error" in profile:
        print(profile["error"])
        return
    print(f"profile: unprofiled wall {profile['unprofiled_wall_ms_per_token']:.3f} ms/{step}; profiled: wall "
          f"{profile['wall_ms_per_token']:.3f} ms/{step}, device span {profile['span_ms_per_token']:.3f}, busy "
          f"{profile['busy_ms_per_token']:.3f}, {profile['events_per_token']:.1f} device events/{step}")
    print(f"| device event | per {step} | µs per {step} |\n|---|---|---|")
    for row in profile["top"]:
        print(f"| {row['name']} | {row['per_token']:.2f} | {row['us_per_token']:.1f} |")


def decode_loop_hlo(config, params, context: int) -> str:
    """Optimized HLO of ``generate``'s decode loop for one row at ``context`` cached tokens."""
    return compiled_decode_loop(config, params, context)[0].as_text()


def step_kernels(hlo: str, *, outside_graphs: bool = False) -> collections.Counter:
    """Kernels per decode step: the body of the entry computation's outermost while loop (which may sit in a
    command buffer of its own: then every kernel of a step is inside a CUDA graph). ``outside_graphs``: see
    ``count_kernels``."""
    comps = computations(hlo)
    entry = next(m.group(1) for m in re.finditer(r"^ENTRY\s+%?([\w.\-]+)", hlo, re.M))
    graphs = [callee for line in comps[entry] for callee in re.findall(r"to_apply=%?([\w.\-]+)", line)
              if is_command_buffer(callee)]
    loops = []  # (body, inside a command buffer)
    for caller, in_graph in [(entry, False)] + [(graph, True) for graph in graphs]:
        loops += [(re.search(r"body=%?([\w.\-]+)", line).group(1), in_graph) for line in comps[caller]
                  if (m := _INSTRUCTION.match(line)) and m.group(1) == "while"]
    if len(loops) != 1:
        raise RuntimeError(f"expected one decode loop in the entry computation, found {len(loops)}")
    body, in_graph = loops[0]
    if outside_graphs and in_graph:
        return collections.Counter()
    return count_kernels(comps, body, outside_graphs=outside_graphs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--hlo-out", help="also write the optimized HLO here")
    parser.add_argument("--profile", action="store_true", help="also profile the loop on the device")
    parser.add_argument("--label", default="", help="names this run in the results (e.g. the XLA flags tried)")
    parser.add_argument("--append-splits", type=int, help="force the fused append kernel's KV split count")
    args = parser.parse_args(argv)
    if args.append_splits:
        from pallas_kernels import gpu_append_attention, gpu_triton
        gpu_append_attention.DEFAULT_CONFIG = gpu_triton.TritonConfig(num_splits=args.append_splits)
    config = common.shape_config(args.shape)
    compiled, loop_args = compiled_decode_loop(config, common.random_params(config), args.context)
    hlo = compiled.as_text()
    if args.hlo_out:
        with open(args.hlo_out, "w") as f:
            f.write(hlo)
    counts = step_kernels(hlo)
    total = sum(counts.values())
    # Newer XLA may form its graphs from the thunk sequence, after the HLO: then the HLO cannot tell.
    has_graphs = any(is_command_buffer(name) for name in computations(hlo))
    ungraphed = step_kernels(hlo, outside_graphs=True) if has_graphs else None
    device = jax.devices()[0].device_kind
    results = {"device": device, "shape": args.shape, "context": args.context, "label": args.label,
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "kernels_per_step": total, "by_kind": dict(counts),
               "outside_command_buffers": None if ungraphed is None else dict(ungraphed)}
    print(f"{device}, {args.shape}, {args.context}-token context {args.label}: {total} kernels per decode step "
          f"in the HLO ({total / config.num_layers:.1f} per layer)")
    print("| kind | per step |\n|---|---|")
    for kind, n in counts.most_common():
        print(f"| {kind} | {n} |")
    # Each kernel launched outside a CUDA graph, and each graph launch between them, costs wall time that a
    # profile (run without command buffers) does not show.
    if has_graphs:
        print(f"launched outside command buffers (CUDA graphs): {sum(ungraphed.values())} per step "
              f"{dict(ungraphed.most_common())}")
    else:
        print("the optimized HLO has no command_buffer computations: which kernels run in CUDA graphs is not "
              "known from it")
    if args.profile:
        results["profile"] = profile_steps(compiled, loop_args, NEW_TOKENS - 1)
        print_profile(results["profile"], "token")
    suffix = f"_{re.sub(r'[^A-Za-z0-9]+', '_', args.label)}" if args.label else ""
    common.write_results(f"decode_kernels{suffix}.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
