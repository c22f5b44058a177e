"""The decoding row's projections (``pallas_kernels.decode_matvec``) against what XLA runs for them (issue 2).

    python benchmarks/matvec_bench.py [--shapes qwen2.5-1.5b qwen2.5-7b] [--sweep]

For each projection of one decoder layer at the shape (norm + qkv, o, norm + gate_up + SwiGLU, down), one jitted
call runs it on ``num_layers`` distinct weights (more bytes than the L2 holds), as the decode step does:
* ``kernel``: the Pallas matvec on [out, in] weights (norm and SwiGLU inside);
* ``xla``: the previous path on [in, out] weights: the residual-norm kernel, the two-row GEMM XLA picks, and
  the SwiGLU in XLA.
µs per projection = the device's busy time during the call (JAX's profiler: every kernel it ran) ÷ layers;
GB/s counts weight bytes. (Wall-clock time of such a call is dominated by host dispatch.)
Each kernel output is also checked against the jnp reference. ``--sweep`` times launch configurations (the defaults of
``decode_matvec.plan`` are its winners); ``--unrolled`` times
the variant that requests all of a program's weights at once; ``--only`` limits the run to some projections.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402
from benchmarks.decode_kernels import traced_events  # noqa: E402
from pallas_kernels import decode_matvec as dm  # noqa: E402
from pallas_kernels.residual_rms_norm import residual_rms_norm  # noqa: E402


def projections(config):
    """(name, input width, weight rows [out], norm?, swiglu?) of one layer."""
    c = config
    return [("qkv", c.hidden_size, c.q_size + 2 * c.kv_size, True, False),
            ("o", c.q_size, c.hidden_size, False, False),
            ("gate_up", c.hidden_size, 2 * c.intermediate_size, True, True),
            ("down", c.intermediate_size, c.hidden_size, False, False)]


def xla_path(x, residual, scale, weight_in_out, *, norm, swiglu, rows_trick=True):
    """The decoder's code before the matvec kernel, for one row."""
    if norm:
        _, x = residual_rms_norm(x[None], residual[None], scale, eps=1e-6, rows=2 if rows_trick else None)
        x = x[0]
    elif rows_trick:
        x = jnp.pad(x, ((0, 1), (0, 0)))
    y = x @ weight_in_out
    if swiglu:
        gate, up = jnp.split(y, 2, axis=-1)
        y = jax.nn.silu(gate) * up
    return y[:1]


def device_busy_s(fn, *args) -> float:
    """Seconds the device spent in kernels during one call of fn (after a warm-up call)."""
    jax.block_until_ready(fn(*args))
    return 1e-9 * sum(duration for _, _, duration in traced_events(fn, *args)[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-1.5b"])
    parser.add_argument("--sweep", action="store_true", help="also time other launch configurations")
    parser.add_argument("--unrolled", action="store_true",
                        help="also time the unrolled variant (MatvecConfig.unroll) over tile shapes and warps")
    parser.add_argument("--hints", action="store_true",
                        help="also time the default plan with an eviction policy on the weight loads, and on 1 warp")
    parser.add_argument("--only", nargs="+", choices=["qkv", "o", "gate_up", "down"], help="these projections only")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--interpret", action="store_true", help="CPU smoke run (use with --shapes tiny)")
    args = parser.parse_args()
    for shape in args.shapes:
        bench_shape(shape, args)


def bench_shape(shape, args):
    config = common.shape_config(shape)
    layers = config.num_layers
    key = jax.random.key(0, impl="rbg")
    results = {"device": jax.devices()[0].device_kind, "shape": shape, "projections": {}}
    print(f"{results['device']} {shape}", flush=True)
    summary = []
    for name, width, rows, norm, swiglu in projections(config):
        keys = jax.random.split(key, layers + 3)
        weights = [0.02 * jax.random.normal(k, (rows, width), jnp.bfloat16) for k in keys[:layers]]
        x = jax.random.normal(keys[-1], (1, width), jnp.bfloat16)
        residual = jax.random.normal(keys[-2], (1, width), jnp.bfloat16)
        scale = 1 + 0.1 * jax.random.normal(keys[-3], (width,), jnp.bfloat16)
        weight_bytes = rows * width * 2
        kw = dict(residual=residual if norm else None, norm_scale=scale if norm else None, swiglu=swiglu)

        def timed(fn, weights):
            call = jax.jit(lambda ws: [fn(w) for w in ws])
            if args.interpret:
                seconds = common.time_fn(lambda: call(weights), repeats=args.repeats, warmup=1)
            else:
                seconds = min(device_busy_s(call, weights) for _ in range(3))
            us = 1e6 * seconds / layers
            return us, weight_bytes / (us * 1e-6) / 1e9

        if args.only and name not in args.only:
            continue
        row, default = {}, None
        configs = [dm.MatvecConfig()]
        if args.sweep:
            configs += [dm.MatvecConfig(block_n=n, block_k=k, num_warps=w)
                        for n, k, w in itertools.product([2, 4, 8], [512, 1024, 2048], [2, 4, 8])]
        if args.unrolled:
            block_ns = [2, 4, 8] if not swiglu else [1, 2, 4, 8]
            block_ks = [512, 2048] if width <= 2048 and not swiglu else [256, 512] if swiglu else [256, 512, 1024]
            configs += [dm.MatvecConfig(block_n=n, block_k=k, num_warps=w, unroll=True)
                        for n, k, w in itertools.product(block_ns, block_ks, [2, 4, 8])]
        if args.hints:
            configs += [dm.MatvecConfig(weight_eviction="evict_first"), dm.MatvecConfig(weight_eviction="evict_last"),
                        dm.MatvecConfig(num_warps=1), dm.MatvecConfig(num_warps=1, weight_eviction="evict_first")]
        for cfg in configs:
            fn = functools.partial(dm.gpu_matvec, x, config=cfg, interpret=args.interpret, **kw)
            try:
                out = fn(weights[0])
                expected = dm.reference(x, weights[0], **kw)
                if norm:
                    out, expected = out[1], expected[1]
                error = float(jnp.linalg.norm((out - expected).astype(jnp.float32))
                              / jnp.linalg.norm(expected.astype(jnp.float32)))
                us, gbs = timed(fn, weights)
            except Exception as e:  # a launch configuration Triton refuses (registers, shared memory)
                row[str(cfg)] = {"error": str(e)[:200]}
                continue
            planned = dm.plan(cfg, num_out=rows // 2 if swiglu else rows, width=width, swiglu=swiglu, has_norm=norm)
            row[str(planned)] = {"us": us, "GBps": gbs, "rel_error": error}
            if cfg == configs[0]:
                default = str(planned)
            print(f"  {name} {planned}: {us:.2f} µs {gbs:.0f} GB/s", flush=True)
        weights_in_out = [w.T for w in weights]
        jax.block_until_ready(weights_in_out)
        del weights
        xla_fn = functools.partial(xla_path, x, residual, scale, norm=norm, swiglu=swiglu,
                                   rows_trick=not args.interpret)
        xla_us, xla_gbs = timed(xla_fn, weights_in_out)
        del weights_in_out
        ok = {k: v for k, v in row.items() if "us" in v}
        best = min(ok, key=lambda k: ok[k]["us"])
        results["projections"][name] = {"K": width, "N": rows, "xla_us": xla_us, "xla_GBps": xla_gbs,
                                        "configs": row, "best": best, "default": default}
        summary.append((name, xla_us, ok[default]["us"] if default else float("nan"), ok[best]["us"]))
        print(f"{name} [{rows}x{width}]: xla {xla_us:.2f} µs ({xla_gbs:.0f} GB/s); default "
              f"{ok[default]['us'] if default else float('nan'):.2f} µs; best {ok[best]['us']:.2f} µs "
              f"({ok[best]['GBps']:.0f} GB/s, rel err {ok[best]['rel_error']:.1e}) {best}", flush=True)
    common.write_results(f"matvec_bench_{shape}.json", results)
    print(f"\n{shape}, device µs per projection | XLA path | kernel (default plan) | best kernel")
    for name, *times in summary:
        print(f"{name} | " + " | ".join(f"{t:.2f}" for t in times))
    print("layer total | " + " | ".join(f"{sum(r[i] for r in summary):.2f}" for i in range(1, 4)))


if __name__ == "__main__":
    main()
