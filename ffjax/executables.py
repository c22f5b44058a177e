"""Ahead-of-time compiled executables, cached by their static key.

Compiling explicitly (``lower().compile()``) keeps compile time out of measured run time, and makes the number
of compilations observable: a new entry here is exactly one XLA compilation.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Hashable

import jax

_compiled: dict[Hashable, Any] = {}
compile_seconds = {"total": 0.0}
_xla_options: dict[str, Any] = {}


@contextlib.contextmanager
def xla_options(options: dict[str, Any] | None):
    """Programs compiled inside the block get these XLA compile options (e.g. ``{"xla_gpu_enable_pdl": True}``;
    bools, ints and strings as XLA's flags take them), and they are part of each program's key. Unlike
    ``XLA_FLAGS``, which is read once per process, this lets one process time option sets side by side
    (``benchmarks/ab_decode.py --xla-options``). XLA refuses an unknown option or a bad value at compile time."""
    global _xla_options
    previous, _xla_options = _xla_options, dict(options or {})
    try:
        yield
    finally:
        _xla_options = previous


def run(key: tuple, jitted: Callable, *args) -> tuple[Any, float, float]:
    """(outputs, seconds compiling now, seconds running): compiles on first use, then times the run alone."""
    executable, compile_s = get(key, jitted, *args)
    start = time.perf_counter()
    outputs = jax.block_until_ready(executable(*args))
    return outputs, compile_s, time.perf_counter() - start


def _signature(args) -> tuple:
    """Pytree structure, shapes and dtypes of the arguments: what a compiled executable is specialised to."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    return treedef, tuple((getattr(x, "shape", ()), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)


def kernel_switches() -> tuple:
    """What the decoder reads while tracing besides its arguments: the environment switches and ``skinny_gemm``'s
    plan table (which a tuning script may edit). A program compiled under other values is another program."""
    from ffjax.attention import resolve_impl
    from ffjax.decoder import MATVEC_ENV
    from pallas_kernels.dependent_launch import PDL_ENV
    from pallas_kernels.skinny_gemm import PLANS, SKINNY_ENV
    return (resolve_impl(), *(os.environ.get(name) for name in (MATVEC_ENV, SKINNY_ENV, PDL_ENV)),
            frozenset(PLANS.items()))


def get(key: tuple, jitted: Callable, *example_args) -> tuple[Any, float]:
    """(executable, seconds spent compiling it now: 0.0 on a cache hit). ``key`` names the program and its
    static arguments; the arguments' structure, shapes and dtypes are added to it here."""
    key = (*key, kernel_switches(), tuple(sorted(_xla_options.items())), _signature(example_args))
    if key in _compiled:
        return _compiled[key], 0.0
    start = time.perf_counter()
    _compiled[key] = jitted.lower(*example_args).compile(compiler_options=_xla_options or None)
    elapsed = time.perf_counter() - start
    compile_seconds["total"] += elapsed
    return _compiled[key], elapsed


def donate_on_accelerators(*argnums: int) -> tuple[int, ...]:
    """Buffer donation lets XLA update caches in place; the CPU backend cannot use it (and warns), so skip it."""
    return argnums if jax.default_backend() != "cpu" else ()


def count(prefix: str | None = None) -> int:
    """Number of cached executables (whose key starts with ``prefix`` when given)."""
    return sum(1 for k in _compiled if prefix is None or (isinstance(k, tuple) and k[0] == prefix))


def clear() -> None:
    _compiled.clear()
