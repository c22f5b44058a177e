"""Programmatic dependent launch in the decoder's Pallas kernels (``pallas_kernels.dependent_launch``), a trial
switch: off by default; with FFJAX_PALLAS_PDL=on each kernel's GPU lowering waits for its predecessor before its
first load, and without it none does; the Pallas interpreter ignores it; a compiled program under one setting is
never reused under the other."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import executables
from pallas_kernels import decode_matvec, dependent_launch, reference, skinny_gemm
from pallas_kernels.dispatch import append_attention
from pallas_kernels.gpu_triton import TritonConfig
from pallas_kernels.gpu_append_attention import append_attention as gpu_append_attention
from pallas_kernels.residual_rms_norm import gpu_residual_rms_norm, residual_rms_norm
from pallas_kernels.residual_rms_norm import reference as norm_reference
from tests.test_append_attention import make_inputs

WAIT = "griddepcontrol.wait"


def cuda_lowering(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def shape(*dims, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(dims, dtype)


def test_the_switch_is_off_unless_asked_and_refuses_other_values(monkeypatch):
    monkeypatch.delenv(dependent_launch.PDL_ENV, raising=False)
    assert not dependent_launch.enabled()
    monkeypatch.setenv(dependent_launch.PDL_ENV, "on")
    assert dependent_launch.enabled()
    monkeypatch.setenv(dependent_launch.PDL_ENV, "yes")
    with pytest.raises(ValueError, match="FFJAX_PALLAS_PDL must be off or on, not 'yes'"):
        dependent_launch.enabled()


@pytest.mark.parametrize("mode,waits", [("off", 0), ("on", 1)])
def test_the_residual_norm_waits_only_when_switched_on(monkeypatch, mode, waits):
    monkeypatch.setenv(dependent_launch.PDL_ENV, mode)
    text = cuda_lowering(lambda x, d, s: residual_rms_norm(x, d, s, eps=1e-6, rows=2, backend="gpu_triton"),
                         shape(1, 1, 3584), shape(1, 2, 3584), shape(3584))
    assert text.count(WAIT) == waits


@pytest.mark.parametrize("mode,waits", [("off", 0), ("on", 2)])
def test_the_decoding_rows_attention_and_its_split_merge_wait_only_when_switched_on(monkeypatch, mode, waits):
    monkeypatch.setenv(dependent_launch.PDL_ENV, mode)
    qkv, tables, cache, lengths = shape(1, 2, 36, 128), shape(1, 1, 64, dtype=jnp.float32), \
        shape(1, 1152, 4, 128), shape(1, dtype=jnp.int32)
    text = cuda_lowering(lambda *a: append_attention(*a, num_q_heads=28, backend="gpu_triton", out_rows=2)[0],
                         qkv, tables, tables, cache, cache, lengths, lengths)
    assert text.count(WAIT) == waits  # one in the attention kernel, one in the merge of its 36 splits


@pytest.mark.parametrize("mode,waits", [("off", 0), ("on", 1)])
def test_the_decoding_row_matvec_waits_only_when_switched_on(monkeypatch, mode, waits):
    monkeypatch.setenv(dependent_launch.PDL_ENV, mode)
    text = cuda_lowering(lambda x, r, s, w: decode_matvec.matvec(x, w, residual=r, norm_scale=s, swiglu=True,
                                                                 backend="gpu_triton"),
                         shape(1, 1536), shape(1, 1536), shape(1536), shape(2 * 8960, 1536))
    assert text.count(WAIT) == waits


@pytest.mark.parametrize("pdl,waits", [(False, 0), (True, 1)])
def test_the_skinny_gemm_waits_only_when_asked(pdl, waits):
    config = skinny_gemm.PLANS[(8, 3584, 18944)]
    text = cuda_lowering(lambda x, w: skinny_gemm.gpu_skinny_gemm(x, w, config, pdl=pdl), shape(1, 18944),
                         shape(3584, 18944))
    assert text.count(WAIT) == waits


def test_each_kernels_pdl_variant_computes_the_same_in_the_interpreter():
    """The interpreter has no asm, so the wait itself is left out there; the rest of each variant runs: the
    routed indices, and the attention's own indexing of q_start and kv_len per batch row (ragged here)."""
    rng = np.random.default_rng(0)
    x, delta = (jnp.asarray(rng.standard_normal((2, 3, 256)), jnp.float32) for _ in range(2))
    scale = jnp.asarray(rng.standard_normal(256), jnp.float32)
    got = gpu_residual_rms_norm(x, delta, scale, eps=1e-6, rows=4, interpret=True, pdl=True)
    for g, w in zip(got, norm_reference(x, delta, scale, eps=1e-6, rows=4)):
        np.testing.assert_allclose(g, w, atol=1e-5)

    qkv, qkv_bias, cos, sin, k_cache, v_cache = make_inputs(3, batch=2, tokens=5, num_q_heads=6, num_kv_heads=2,
                                                            head_dim=32, cache_length=256, q_start=[200, 37],
                                                            dtype=jnp.float32)
    args = (qkv, cos, sin, k_cache, v_cache, jnp.array([200, 37], jnp.int32), jnp.array([205, 40], jnp.int32))
    want = reference.append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias)
    got = gpu_append_attention(*args, num_q_heads=6, qkv_bias=qkv_bias, interpret=True,
                               config=TritonConfig(block_k=32, num_splits=4), pdl=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)

    row, residual = (jnp.asarray(rng.standard_normal((1, 256)), jnp.float32) for _ in range(2))
    weight = jnp.asarray(rng.standard_normal((2 * 192, 256)) / 16, jnp.float32)
    got = decode_matvec.gpu_matvec(row, weight, residual=residual, norm_scale=scale, swiglu=True, interpret=True,
                                   pdl=True)
    want = decode_matvec.reference(row, weight, residual=residual, norm_scale=scale, swiglu=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_programs_compiled_under_one_setting_are_not_reused_under_the_other(monkeypatch):
    monkeypatch.setenv(dependent_launch.PDL_ENV, "off")
    off = executables.kernel_switches()
    monkeypatch.setenv(dependent_launch.PDL_ENV, "on")
    assert executables.kernel_switches() != off


@pytest.mark.parametrize("mode,waits", [("off", 0), ("on", 1)])
def test_the_mosaic_attention_and_its_split_merge_wait_only_when_switched_on(monkeypatch, mode, waits):
    from pallas_kernels import dispatch
    monkeypatch.setenv(dependent_launch.PDL_ENV, mode)
    q, cache, lengths = shape(1, 32, 28, 128), shape(1, 4096, 4, 128), shape(1, dtype=jnp.int32)
    text = cuda_lowering(lambda *a: dispatch.prefix_block_attention(*a, backend="gpu_mosaic"),
                         q, cache, cache, lengths, lengths)
    calls = {re.search(r"custom_call @(\S+)\(", line).group(1): line.count(WAIT)
             for line in text.splitlines() if "custom_call @" in line}
    assert calls == {"mosaic_gpu_v2": waits, "__gpu$xla.gpu.triton": waits}  # the kernel, then the merge
