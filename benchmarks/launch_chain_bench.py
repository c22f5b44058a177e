"""What one small kernel costs in a chain of dependent kernels, by kind of kernel and XLA option set.

Why. The 7B decode step and the drafter pass are chains of about 12 kernels per layer, and the kernels that do
almost nothing (split-K sums, norms, SwiGLU, the attention merge) still take 1.4-1.9 µs each (BENCHMARKS.md,
issues 2 and 3). XLA's programmatic dependent launch (PDL) lets a kernel start before its predecessor ends and
wait (``griddepcontrol.wait``) only where it reads that predecessor's output. In the 7B step XLA's PDL options
took only 0.4-0.8% off (thirteenth session). One reason may be that 9 of a 7B layer's 12 kernel boundaries touch
a Pallas kernel, which XLA may not launch that way. This script asks that question directly: for each kind of
kernel, a chain of identical tiny kernels, each reading the previous one's output, is timed at two lengths
under each option set. The slope is the cost of one more kernel in the chain.

Kinds: ``xla`` (one loop fusion per step, kept apart by optimisation barriers), ``triton`` (a Pallas kernel
lowered through Triton), ``mosaic`` (a Pallas Mosaic GPU kernel), and ``triton_pdl`` / ``mosaic_pdl``: the same
kernels with ``griddepcontrol.wait`` before their first read and ``griddepcontrol.launch_dependents`` right
after it, as ``pallas_kernels.dependent_launch`` puts them in the decoder's kernels (``FFJAX_PALLAS_PDL=on``). The instructions do nothing in a kernel that was not launched with PDL, so where a ``_pdl`` chain is
faster than its plain one, the kernel was launched that way. ``xla_<kind>`` alternates an XLA fusion with the
Pallas kernel, as the decode step does; its figure is per kernel too.

    python3 benchmarks/launch_chain_bench.py                     # on a GPU: every kind under every option set
    python3 benchmarks/launch_chain_bench.py --lengths 2 6       # CPU: the chains without PDL, Pallas interpreted
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import time_back_to_back  # noqa: E402
from pallas_kernels import dependent_launch  # noqa: E402

OPTION_SETS = {
    "default": {},
    "pdl": {"xla_gpu_enable_pdl": True, "xla_gpu_enable_pdl_launch": True},
    "no_command_buffer": {"xla_gpu_enable_command_buffer": ""},
    # custom calls (Pallas kernels among them) inside XLA's CUDA graphs too, where their handlers allow it
    "command_buffer_custom_calls": {"xla_gpu_enable_command_buffer": "+CUSTOM_CALL"},
}
KINDS = ("xla", "triton", "triton_pdl", "mosaic", "mosaic_pdl",
         "xla_triton", "xla_triton_pdl", "xla_mosaic", "xla_mosaic_pdl")


def xla_step(x):
    return lax.optimization_barrier(x * 1.0001 + 1.0)


def triton_step(x, *, pdl: bool, interpret: bool):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    def kernel(x_ref, o_ref):
        offsets = jnp.arange(x.shape[0], dtype=jnp.int32)
        if pdl:  # the load's offsets pass through the wait, as in the decoder's Triton kernels
            offsets = offsets + dependent_launch.triton_after_predecessor(jnp.int32(0))
        o_ref[...] = pltriton.load(x_ref.at[offsets]) * 1.0001 + 1.0

    return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), interpret=interpret,
                          compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
                          name="chain_triton_pdl" if pdl else "chain_triton")(x)


def mosaic_step(x, *, pdl: bool, interpret: bool):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import mosaic_gpu as plgpu

    from pallas_kernels.gpu_mosaic import _interpret_params

    flat_shape, x = x.shape, x.reshape(-1, 128)  # TMA boxes take at most 256 elements a dimension

    def entry(x_hbm, o_hbm):
        def body(x_smem, ready):
            if pdl:
                dependent_launch.mosaic_wait_and_release()
            plgpu.copy_gmem_to_smem(x_hbm, x_smem, ready)
            plgpu.barrier_wait(ready)
            x_smem[...] = x_smem[...] * 1.0001 + 1.0
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(x_smem, o_hbm)
            plgpu.wait_smem_to_gmem(0)

        pl.run_scoped(body, plgpu.SMEM(x.shape, x.dtype), plgpu.Barrier(num_barriers=1))

    interpret_params = {"interpret": _interpret_params(True)} if interpret else {}
    out = plgpu.kernel(entry, out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(1,), grid_names=("i",),
                       **interpret_params)(x)
    return out.reshape(flat_shape)


def step_of(kind: str, interpret: bool):
    """One step of the chain: one kernel, or for ``xla_*`` kinds an XLA fusion then the Pallas kernel (as in the
    decode step, where XLA's GEMMs and sums alternate with Pallas kernels)."""
    if kind.startswith("xla_"):
        pallas_step = step_of(kind[len("xla_"):], interpret)
        return lambda x: pallas_step(xla_step(x))
    if kind == "xla":
        return xla_step
    if kind.startswith("triton"):
        return functools.partial(triton_step, pdl=kind.endswith("_pdl"), interpret=interpret)
    if kind.startswith("mosaic"):
        return functools.partial(mosaic_step, pdl=kind.endswith("_pdl"), interpret=interpret)
    raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")


def chain(step, length: int):
    def run(x):
        for _ in range(length):
            x = step(x)
        return x
    return jax.jit(run)


def kernels_per_step(kind: str) -> int:
    return 2 if kind.startswith("xla_") else 1


def expected(x, length: int):
    for _ in range(length):
        x = x * 1.0001 + 1.0
    return x


def measure(kind: str, options: dict, lengths: tuple[int, int], width: int, interpret: bool) -> dict:
    x = jnp.linspace(0.0, 1.0, width, dtype=jnp.float32)
    seconds = {}
    for length in lengths:
        compiled = chain(step_of(kind, interpret), length).lower(x).compile(compiler_options=options or None)
        out = compiled(x)
        error = float(jnp.max(jnp.abs(out - expected(x, length * kernels_per_step(kind)))))
        if error > 1e-3 * length:  # a kernel that started before its input was written would show here
            raise AssertionError(f"{kind} chain of {length}: max |error| {error}")
        seconds[length] = time_back_to_back(lambda: compiled(x))
    short, long = lengths
    kernels = kernels_per_step(kind) * (long - short)
    return {"per_kernel_us": 1e6 * (seconds[long] - seconds[short]) / kernels,
            "chain_us": {str(n): 1e6 * s for n, s in seconds.items()}}


def pdl_support() -> dict:
    """What this JAX says about PDL for Pallas kernels: its compiler params' fields, and which of its files
    (Python sources, shared libraries) mention ``uses_pdl``, the flag that makes a kernel launch with PDL."""
    import dataclasses
    import importlib.util

    from jax.experimental.pallas import mosaic_gpu as plgpu
    from jax.experimental.pallas import triton as pltriton
    mentions = []
    for package in ("jax", "jaxlib", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin"):
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for folder, _, files in os.walk(root):
                for name in files:
                    if name.endswith((".py", ".so")):
                        path = os.path.join(folder, name)
                        with open(path, "rb") as f:
                            if b"uses_pdl" in f.read():
                                mentions.append(os.path.relpath(path, os.path.dirname(root)))
    return {"mosaic_gpu_compiler_params": [f.name for f in dataclasses.fields(plgpu.CompilerParams)],
            "triton_compiler_params": [f.name for f in dataclasses.fields(pltriton.CompilerParams)],
            "files_mentioning_uses_pdl": sorted(mentions)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--option-sets", nargs="+", default=list(OPTION_SETS), choices=list(OPTION_SETS))
    parser.add_argument("--lengths", nargs=2, type=int, default=[32, 160])
    parser.add_argument("--width", type=int, default=1024, help="float32 elements per kernel, a multiple of 128")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    # CPU: the Pallas kernels in their interpreters, which have no griddepcontrol
    kinds = [k for k in args.kinds if on_gpu or not k.endswith("_pdl")]
    option_sets = args.option_sets if on_gpu else ["default"]
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    support = pdl_support()
    print(json.dumps(support), flush=True)
    results = {}
    for kind in kinds:
        for name in option_sets:
            try:
                results[f"{kind}/{name}"] = measure(kind, OPTION_SETS[name], tuple(args.lengths), args.width,
                                                    interpret=not on_gpu)
            except Exception as error:  # an option set or kind this jax cannot build: say so, go on
                results[f"{kind}/{name}"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            print(kind, name, json.dumps(results[f"{kind}/{name}"]), flush=True)
    print(f"\nµs per kernel in a chain (the slope between chains of {args.lengths[0]} and {args.lengths[1]} steps):")
    print("kind        " + "".join(f"{name:>20}" for name in option_sets))
    for kind in kinds:
        cells = [results[f"{kind}/{name}"] for name in option_sets]
        print(f"{kind:<12}" + "".join(f"{c['per_kernel_us']:>20.2f}" if "per_kernel_us" in c else f"{'error':>20}"
                                      for c in cells))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__, "lengths": args.lengths,
                       "width": args.width, "pdl_support": support, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
