"""The skinny tensor-core GEMM (``pallas_kernels.skinny_gemm``): its plan, its input checks, its CUDA lowering,
and how the decoder routes a few-row projection to it.

The kernel itself needs a Hopper GPU (Mosaic GPU's interpreter cannot run WGMMA on a transposed operand); its
numbers are checked there by ``benchmarks/kernels_gpu_check.py --skinny-only``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import decoder
from ffjax.kv_cache import PER_LAYER
from pallas_kernels import skinny_gemm as sg
from ffjax.config import ModelConfig
from tests import tiny_models


def shape(*dims, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(dims, dtype)


def cuda_module(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_reference_is_a_float32_accumulated_product_rounded_to_the_input_dtype():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 256)), rng.standard_normal((64, 256))
    got = sg.reference(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
    want = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) @ np.asarray(jnp.asarray(w, jnp.bfloat16), np.float64).T
    assert got.dtype == jnp.bfloat16 and got.shape == (3, 64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 ** -8, atol=1e-6)


def test_plan_has_configs_only_for_measured_few_row_shapes():
    assert sg.plan(1, 3584, 18944) == sg.plan(2, 3584, 18944) == sg.PLANS[(8, 3584, 18944)]
    assert sg.plan(9, 3584, 18944) is None  # 16 padded rows: nothing measured there
    assert sg.plan(32, 1536, 8960) == sg.PLANS[(32, 1536, 8960)]  # the 1.5B drafter block's down projection
    assert sg.plan(33, 1536, 8960) is None  # past the kernel's row limit
    assert sg.plan(1, 4608, 3584) is None  # 7B qkv: XLA's GEMM measured faster
    for (rows, num_out, width), config in sg.PLANS.items():
        sg._check(jax.ShapeDtypeStruct((rows, width), jnp.bfloat16), shape(num_out, width), config)


@pytest.mark.parametrize("rows,config", [(2, sg.PLANS[(8, 3584, 18944)]), (5, sg.SkinnyConfig(128, 64, 6, 1))])
def test_kernel_lowers_to_one_mosaic_gpu_call_of_64x8_wgmmas(rows, config):
    text = cuda_module(lambda x, w: sg.gpu_skinny_gemm(x, w, config), shape(rows, 18944), shape(3584, 18944))
    assert text.count("custom_call @mosaic_gpu") == 1
    assert "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16" in text  # swap-AB: 8 token columns
    assert f"tensor<{config.split_k}x3584x8x{'f32' if config.split_k > 1 else 'bf16'}>" in text


def test_the_drafter_block_lowers_to_64x32_wgmmas_with_five_float32_partials():
    config = sg.PLANS[(32, 1536, 8960)]
    text = cuda_module(lambda x, w: sg.gpu_skinny_gemm(x, w, config), shape(32, 8960), shape(1536, 8960))
    assert text.count("custom_call @mosaic_gpu") == 1
    assert "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16" in text  # all 32 block rows as one B tile
    assert "tensor<5x1536x32xf32>" in text


@pytest.mark.parametrize("x,w,config,message", [
    (shape(33, 256), shape(64, 256), sg.SkinnyConfig(), "at most 32 rows"),
    (shape(1, 256), shape(64, 128), sg.SkinnyConfig(), r"x \[M, K\] and weight \[N, K\]"),
    (shape(1, 256, dtype=jnp.float32), shape(64, 256, dtype=jnp.float32), sg.SkinnyConfig(), "bf16 or f16"),
    (shape(1, 256), shape(96, 256), sg.SkinnyConfig(), "block_n 64 must be a multiple of 64 dividing N = 96"),
    (shape(1, 384), shape(64, 384), sg.SkinnyConfig(block_k=128, split_k=2), "must divide K = 384"),
])
def test_bad_shapes_and_dtypes_are_refused_before_lowering(x, w, config, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda x, w: sg.gpu_skinny_gemm(x, w, config), x, w)


def test_decoder_asks_for_the_kernel_only_on_hopper_and_when_allowed(monkeypatch):
    h, w = jnp.zeros((1, 2, 18944), jnp.bfloat16), shape(3584, 18944)
    assert decoder.skinny_gemm_config(h, w) is None  # this CPU
    monkeypatch.setattr(sg, "hopper_gpu", lambda: True)
    assert decoder.skinny_gemm_config(h, w) == sg.PLANS[(8, 3584, 18944)]
    assert decoder.skinny_gemm_config(h.astype(jnp.float32), shape(3584, 18944, dtype=jnp.float32)) is None
    monkeypatch.setenv(sg.SKINNY_ENV, "off")
    assert decoder.skinny_gemm_config(h, w) is None
    monkeypatch.setenv(sg.SKINNY_ENV, "yes")
    with pytest.raises(ValueError, match="FFJAX_SKINNY_GEMM must be auto or off"):
        decoder.skinny_gemm_config(h, w)


def test_a_forward_routes_planned_projections_through_the_kernel(monkeypatch):
    """With the tiny model's down projection planned (the kernel stood in for by its reference, which runs on
    CPU), a 3-token forward over the per-layer cache calls it once per layer at its rows, and the logits equal
    XLA's GEMM path; the reference impl (FFJAX_ATTENTION=reference) never calls it."""
    config = ModelConfig.from_hf(tiny_models.qwen2_config(num_hidden_layers=2).to_dict())
    params = decoder.init_params(config, jax.random.key(0), dtype=jnp.bfloat16, layout=PER_LAYER)
    tokens = jnp.asarray([[5, 9, 2]], jnp.int32)

    @functools.partial(jax.jit, static_argnums=0)
    def forward(impl):
        hidden, _ = decoder.decode(config, params, tokens, decoder.new_cache(config, params, 1, 16),
                                   attention_impl=impl)
        return decoder.logits(config, params, hidden)

    expected = forward("auto")
    calls = []

    def stand_in(x, weight, plan):
        calls.append((x.shape, weight.shape, plan))
        return sg.reference(x, weight)

    down = (config.hidden_size, config.intermediate_size)
    monkeypatch.setattr(sg, "hopper_gpu", lambda: True)
    monkeypatch.setattr(sg, "PLANS", {(8, *down): sg.SkinnyConfig(block_k=64)})
    monkeypatch.setattr(sg, "gpu_skinny_gemm", stand_in)
    forward.clear_cache()
    got = forward("auto")
    assert calls == [((3, config.intermediate_size), down, sg.SkinnyConfig(block_k=64))] * config.num_layers
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    calls.clear()
    forward("reference")
    assert calls == []
