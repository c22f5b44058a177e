"""The block MLP kernel (``pallas_kernels.swiglu_gemm``): RMSNorm, gate_up product and SwiGLU in one Triton
kernel.

On CPU the kernel runs in the Pallas interpreter (its loop, tiles, norm and SwiGLU are the kernel's own code) and
its CUDA lowering is checked; the decoder uses it only when $FFJAX_SWIGLU_GEMM is on.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffjax import decoder
from ffjax.config import ModelConfig
from ffjax.kv_cache import PER_LAYER
from pallas_kernels import swiglu_gemm as sg
from tests import tiny_models


def operands(rows, half, width, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((rows, width)), dtype)
    weight = jnp.asarray(rng.standard_normal((2 * half, width)) * width ** -0.5, dtype)
    scale = jnp.asarray(1 + 0.1 * rng.standard_normal(width), dtype)
    return x, weight, scale


# float32: summation order only. bf16: the norm's input to the product is rounded once (after the scale) instead of
# twice, which moves gate and up by about a unit in the last place and the activation by a few (the SwiGLU
# amplifies them); about as far from the exact result as the reference is.
TOLERANCE = {jnp.float32: dict(rtol=1e-5, atol=1e-5), jnp.bfloat16: dict(rtol=2 ** -6, atol=2 ** -6)}

CASES = [
    (32, 256, 384, jnp.float32, sg.SwigluConfig()),  # a drafter block: no padding rows, 3 K steps
    (20, 128, 256, jnp.bfloat16, sg.SwigluConfig(block_n=64, block_k=64)),  # rows padded to 32
    (9, 64, 128, jnp.bfloat16, sg.SwigluConfig(block_n=16, block_k=128, num_stages=2)),  # one K step
]


@pytest.mark.parametrize("rows,half,width,dtype,config", CASES)
def test_interpreted_kernel_matches_the_reference(rows, half, width, dtype, config):
    x, weight, _ = operands(rows, half, width, dtype)
    got = sg.gpu_swiglu_gemm(x, weight, config=config, interpret=True)
    with jax.default_matmul_precision("highest"):
        want = sg.reference(x, weight)
    assert got.shape == (rows, half) and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **TOLERANCE[dtype])


@pytest.mark.parametrize("rows,half,width,dtype,config", CASES)
def test_with_the_norm_it_is_the_activation_of_the_normed_rows(rows, half, width, dtype, config):
    x, weight, scale = operands(rows, half, width, dtype)
    got = sg.gpu_swiglu_gemm(x, weight, norm_scale=scale, eps=1e-6, config=config, interpret=True)
    with jax.default_matmul_precision("highest"):
        want = sg.reference(x, weight, norm_scale=scale, eps=1e-6)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **TOLERANCE[dtype])


def test_reference_is_silu_of_the_gate_half_times_the_up_half():
    x, weight, _ = operands(4, 8, 16, jnp.float32)
    with jax.default_matmul_precision("highest"):
        product = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
        got = sg.reference(x, weight)
    gate, up = product[:, :8], product[:, 8:]
    np.testing.assert_allclose(np.asarray(got), gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,padded", [(32, 32), (40, 64), (2, 16)])
def test_kernel_lowers_to_one_triton_call_for_cuda_with_rows_padded_to_a_power_of_two(rows, padded):
    x, w = jax.ShapeDtypeStruct((rows, 1536), jnp.bfloat16), jax.ShapeDtypeStruct((17920, 1536), jnp.bfloat16)
    scale = jax.ShapeDtypeStruct((1536,), jnp.bfloat16)
    text = (jax.jit(lambda x, s, w: sg.gpu_swiglu_gemm(x, w, norm_scale=s))
            .trace(x, scale, w).lower(lowering_platforms=("cuda",)).as_text())
    assert text.count("__gpu$xla.gpu.triton") == 1
    # the kernel's rows (Triton's tiles are powers of two), then the real ones
    assert f"tensor<{padded}x1536xbf16>" in text and f"tensor<{padded}x8960xbf16>" in text
    assert f"tensor<{rows}x8960xbf16>" in text


def shape(*dims):
    return jax.ShapeDtypeStruct(dims, jnp.bfloat16)


@pytest.mark.parametrize("x,w,kwargs,message", [
    ((4, 64), (96, 32), {}, r"x \[M, K\] and weight \[2I, K\]"),
    ((4, 64), (97, 64), {}, r"x \[M, K\] and weight \[2I, K\]"),
    ((4, 128), (96, 128), dict(config=sg.SwigluConfig(block_n=32)), "block_n 32 must divide I = 48"),
    ((4, 96), (128, 96), dict(config=sg.SwigluConfig(block_k=64)), "block_k 64 must divide K = 96"),
    ((4, 128), (128, 128), dict(norm_scale=shape(64)), r"norm_scale must be \[K\] = \[128\]"),
])
def test_bad_shapes_are_refused_before_lowering(x, w, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda x, w: sg.gpu_swiglu_gemm(x, w, **kwargs), shape(*x), shape(*w))


def test_switch_is_off_by_default_and_validated(monkeypatch):
    monkeypatch.delenv(sg.SWIGLU_GEMM_ENV, raising=False)
    assert not sg.enabled()
    monkeypatch.setenv(sg.SWIGLU_GEMM_ENV, "on")
    assert sg.enabled()
    monkeypatch.setenv(sg.SWIGLU_GEMM_ENV, "yes")
    with pytest.raises(ValueError, match="FFJAX_SWIGLU_GEMM must be on or off"):
        sg.enabled()


@pytest.mark.parametrize("platform,switch,block,weight,applies", [
    ("gpu", "on", (1, 32, 1536), (17920, 1536), True),  # a drafter block
    ("gpu", "on", (2, 20, 1536), (17920, 1536), True),  # 40 rows over the batch
    ("gpu", "off", (1, 32, 1536), (17920, 1536), False),
    ("cpu", "on", (1, 32, 1536), (17920, 1536), False),
    ("gpu", "on", (1, 1, 1536), (17920, 1536), False),  # a lone row: decode_matvec's
    ("gpu", "on", (1, 65, 1536), (17920, 1536), False),  # larger blocks: XLA's GEMM
    ("gpu", "on", (1, 32, 576), (3072, 576), False),  # K not a multiple of block_k
    ("gpu", "on", (1, 32, 1536), (17920 + 32, 1536), False),  # I not a multiple of block_n
])
def test_decoder_uses_the_kernel_only_where_it_is_allowed_and_fits(monkeypatch, platform, switch, block, weight,
                                                                   applies):
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    monkeypatch.setenv(sg.SWIGLU_GEMM_ENV, switch)
    bf16 = lambda dims: jax.ShapeDtypeStruct(dims, jnp.bfloat16)  # noqa: E731
    assert decoder.swiglu_gemm_applies(bf16(block), bf16(weight)) == applies
    if applies:  # a float32 model keeps XLA's path
        f32 = lambda dims: jax.ShapeDtypeStruct(dims, jnp.float32)  # noqa: E731
        assert not decoder.swiglu_gemm_applies(f32(block), f32(weight))


def test_a_block_forward_through_the_kernel_matches_the_unfused_layers(monkeypatch):
    """With the kernel allowed (run by the interpreter) a 12-token block's forward over the per-layer cache calls
    it once per layer with the residual sum and the MLP norm's scale, and its logits match the unfused path's."""
    config = ModelConfig.from_hf(tiny_models.qwen2_config(num_hidden_layers=2).to_dict())
    params = decoder.init_params(config, jax.random.key(0), dtype=jnp.float32, layout=PER_LAYER)
    tokens = jnp.arange(3, 15, dtype=jnp.int32)[None]

    def forward():
        hidden, _ = decoder.decode(config, params, tokens, decoder.new_cache(config, params, 1, 32))
        return decoder.logits(config, params, hidden)

    with jax.default_matmul_precision("highest"):
        expected = jax.jit(forward)()
    calls = []
    kernel = sg.gpu_swiglu_gemm

    def interpreted(x, weight, *, norm_scale, eps):
        calls.append((x.shape, weight.shape, norm_scale.shape, eps))
        return kernel(x, weight, norm_scale=norm_scale, eps=eps, config=sg.SwigluConfig(block_n=16, block_k=32),
                      interpret=True)

    monkeypatch.setattr(decoder, "swiglu_gemm_applies", lambda x, weight: True)
    monkeypatch.setattr(sg, "gpu_swiglu_gemm", interpreted)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda: forward())()  # a new function: traced again, so the patched choice is seen
    hidden, intermediate = config.hidden_size, config.intermediate_size
    assert calls == [((12, hidden), (2 * intermediate, hidden), (hidden,), config.rms_norm_eps)] * config.num_layers
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
