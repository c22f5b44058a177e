"""Programmatic dependent launch (PDL) in ffjax's Pallas kernels, off by default: a trial switch.

With PDL (Hopper and later) a kernel may start while the kernel before it in the stream is still running, and
must execute ``griddepcontrol.wait`` before it reads anything that kernel wrote; ``griddepcontrol.launch_dependents``
lets the kernel after it start early in turn. Both instructions do nothing in a kernel that was not launched with
PDL, so a kernel that carries them is correct either way. XLA launches its own kernels this way under
``xla_gpu_enable_pdl``; whether it or Mosaic GPU's runtime launches Pallas kernels this way is what
``benchmarks/launch_chain_bench.py`` measures. With ``FFJAX_PALLAS_PDL=on`` the decoder's Pallas kernels carry
the instructions, so an A/B of the decode step can follow that answer.

Each kernel waits before its first load of anything its predecessor may have written (weights, and caches written
in earlier steps, may be read before) and releases its dependants right after. That is safe because every kernel
in the chain waits before it releases: when a kernel starts, all kernels before its predecessor have finished.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

PDL_ENV = "FFJAX_PALLAS_PDL"
_WAIT_THEN_RELEASE = "griddepcontrol.wait; griddepcontrol.launch_dependents;"


def enabled() -> bool:
    """Whether $FFJAX_PALLAS_PDL asks the Pallas kernels for the PDL instructions ("off", the default, or "on")."""
    mode = os.environ.get(PDL_ENV, "off")
    if mode not in ("off", "on"):
        raise ValueError(f"{PDL_ENV} must be off or on, not {mode!r}")
    return mode == "on"


def triton_after_predecessor(*indices, interpret: bool = False):
    """``indices`` (int32 scalars inside a Triton-lowered kernel), each plus a zero that an inline asm returns
    after it has waited for the predecessor kernel and released the successor. Every load whose address is
    computed from a result is issued after the wait: Triton's inline asm is pure, so only a data dependence orders
    it. Returns one index for one, else a tuple. ``interpret``: the indices unchanged (the Pallas interpreter has
    no asm), so the rest of a kernel's PDL variant still runs in CPU tests."""
    from jax.experimental.pallas import triton as pltriton

    if interpret:
        return indices[0] if len(indices) == 1 else indices
    (zero,) = pltriton.elementwise_inline_asm(
        f"{_WAIT_THEN_RELEASE} mov.b32 $0, $1;", args=[jnp.zeros((1,), jnp.int32)], constraints="=r,r",
        pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct((1,), jnp.int32)])
    zero = jnp.sum(zero)  # back to a scalar: a rank-0 asm result does not mix with Triton's scalars
    routed = tuple(index + zero for index in indices)
    return routed[0] if len(routed) == 1 else routed


def mosaic_wait_and_release():
    """Inside a Mosaic GPU kernel, before its first copy from HBM: the instructions are ordered memory effects."""
    from jax.experimental.pallas import mosaic_gpu as plgpu

    plgpu.griddepcontrol_wait()
    plgpu.griddepcontrol_launch_dependents()


__all__ = ["PDL_ENV", "enabled", "mosaic_wait_and_release", "triton_after_predecessor"]
