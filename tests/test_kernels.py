"""prefix_block_attention: the jnp reference against a literal reading of the spec, and the Pallas kernels
(GPU/Triton and TPU/Mosaic, both in Pallas interpret mode on CPU) against the reference.

Tolerances. float32: the kernels do the reference's float32 arithmetic in another order (online softmax,
tiled sums), so outputs of magnitude <= ~3 agree to 1e-5 absolute. bfloat16: inputs are bf16; the
kernels, like the reference, round probabilities to bf16 before the product with V (relative error 2^-9) and
round the output to bf16 (another 2^-9): against the float32 evaluation of the same bf16 inputs we allow a
relative Frobenius error of 1e-2 and 2e-2 absolute per element (about 4 bf16 ulps at magnitude 1).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

import pallas_kernels
from pallas_kernels import block_diffusion_training, dispatch, gpu_triton, reference, tpu_mosaic
from pallas_kernels.gpu_triton import TritonConfig

# The TPU interpreter that models TPU memory: reads past an array's end return NaN, races are reported.
TPU_INTERPRET = pltpu.InterpretParams(out_of_bounds_reads="uninitialized", detect_races=True)


@dataclasses.dataclass(frozen=True)
class Case:
    num_queries: int
    group: int  # query heads per KV head
    head_dim: int
    block_size: int | None
    dtype: str
    q_start: tuple[int, ...]  # one per batch row
    kv_len: tuple[int, ...]
    num_kv_heads: int = 1
    num_keys: int = 0  # cache length; 0: just enough for the largest kv_len
    peaked: bool = False  # larger logits: exercises the online-softmax rescaling

    @property
    def cache_length(self):
        return self.num_keys or max(max(self.kv_len), 1)

    def __str__(self):
        mask = "causal" if self.block_size is None else f"bs{self.block_size}"
        return (f"Tq{self.num_queries}-g{self.group}x{self.num_kv_heads}-d{self.head_dim}-{mask}-{self.dtype}"
                f"-B{len(self.q_start)}")


def make_inputs(case: Case, seed: int, poison_past_kv_len=False):
    """Random q, k, v; with ``poison_past_kv_len`` the cache past each row's kv_len holds NaN."""
    rng = np.random.default_rng(seed)
    batch = len(case.q_start)
    q = rng.standard_normal((batch, case.num_queries, case.group * case.num_kv_heads, case.head_dim))
    if case.peaked:
        q *= 4.0
    k = rng.standard_normal((batch, case.cache_length, case.num_kv_heads, case.head_dim))
    v = rng.standard_normal((batch, case.cache_length, case.num_kv_heads, case.head_dim))
    if poison_past_kv_len:
        for row, length in enumerate(case.kv_len):
            k[row, length:] = np.nan
            v[row, length:] = np.nan
    cast = lambda x: jnp.asarray(x, case.dtype)  # noqa: E731
    return (cast(q), cast(k), cast(v), jnp.asarray(case.q_start, jnp.int32),
            jnp.asarray(case.kv_len, jnp.int32))


def assert_close_to_reference(out, q, k, v, q_start, kv_len, block_size):
    assert out.shape == q.shape and out.dtype == q.dtype
    out = np.asarray(out.astype(jnp.float32))
    up = lambda x: x.astype(jnp.float32)  # noqa: E731
    expected = np.asarray(reference.prefix_block_attention(up(q), up(k), up(v), q_start, kv_len,
                                                           block_size=block_size))
    assert not np.isnan(out).any()
    if q.dtype == jnp.float32:
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    else:
        np.testing.assert_allclose(out, expected, atol=2e-2, rtol=0)
        assert np.linalg.norm(out - expected) <= 1e-2 * np.linalg.norm(expected)


# A covering set rather than the full product: every Tq, GQA ratio, head dim, mask, dtype and raggedness
# pattern appears, and the risky pairs (odd group x odd Tq, a tile boundary inside a block, rows that see
# nothing, kv_len inside the block, q_start = 0) each appear at least once.
CASES = [
    Case(1, 1, 64, None, "float32", (5, 0), (6, 1)),
    Case(1, 7, 128, 32, "bfloat16", (40, 63), (41, 64), num_kv_heads=2, num_keys=100),
    Case(5, 6, 64, 8, "float32", (0, 17, 90), (5, 22, 95)),
    Case(9, 7, 64, 8, "bfloat16", (30, 0), (39, 0)),  # second row: kv_len 0, sees nothing
    Case(32, 1, 128, 32, "float32", (64, 0), (96, 32)),
    Case(32, 6, 128, None, "bfloat16", (200,), (232,), num_kv_heads=2, num_keys=256),
    Case(37, 7, 64, None, "float32", (3, 150), (40, 187), peaked=True),
    Case(37, 6, 128, 32, "bfloat16", (128, 7), (150, 44)),  # kv_len ends inside the block
    Case(64, 1, 64, 32, "bfloat16", (0, 300), (64, 364)),
    Case(100, 7, 128, 8, "float32", (57,), (157,), num_keys=200),
    Case(127, 6, 64, None, "bfloat16", (33, 250), (160, 377)),
    Case(128, 7, 128, 32, "bfloat16", (384,), (512,)),
    Case(128, 1, 128, None, "float32", (0, 100), (128, 228), peaked=True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gpu_kernel_matches_reference(case):
    args = make_inputs(case, seed=zlib.crc32(str(case).encode()))
    out = gpu_triton.prefix_block_attention(*args, block_size=case.block_size, interpret=True)
    assert_close_to_reference(out, *args, case.block_size)


@pytest.mark.parametrize("case", CASES[::2] + [CASES[1], CASES[7]], ids=str)
def test_tpu_kernel_matches_reference(case):
    args = make_inputs(case, seed=zlib.crc32(str(case).encode()) + 1)
    out = tpu_mosaic.prefix_block_attention(*args, block_size=case.block_size, interpret=TPU_INTERPRET)
    assert_close_to_reference(out, *args, case.block_size)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_gpu_kernel_matches_reference_on_random_shapes(data):
    batch = data.draw(st.integers(1, 3))
    num_queries = data.draw(st.integers(1, 128))
    block_size = data.draw(st.sampled_from([None, 8, 32]))
    q_start = [data.draw(st.integers(0, 300)) for _ in range(batch)]
    kv_len = [data.draw(st.integers(0, s + num_queries)) for s in q_start]
    case = Case(num_queries, data.draw(st.sampled_from([1, 6, 7])), data.draw(st.sampled_from([64, 128])),
                block_size, data.draw(st.sampled_from(["float32", "bfloat16"])), tuple(q_start), tuple(kv_len),
                num_keys=max(kv_len) + data.draw(st.integers(0, 40)) or 1)
    args = make_inputs(case, seed=data.draw(st.integers(0, 2**31 - 1)))
    out = gpu_triton.prefix_block_attention(*args, block_size=block_size, interpret=True)
    assert_close_to_reference(out, *args, block_size)


POISON_CASE = Case(37, 6, 64, 8, "float32", (100, 20), (137, 40), num_kv_heads=2, num_keys=300)


@pytest.mark.parametrize("kernel", ["gpu_triton", "tpu_mosaic"])
def test_kernels_never_read_the_cache_past_kv_len(kernel):
    q, k, v, q_start, kv_len = make_inputs(POISON_CASE, seed=3, poison_past_kv_len=True)
    if kernel == "gpu_triton":
        out = gpu_triton.prefix_block_attention(q, k, v, q_start, kv_len, block_size=8, interpret=True)
    else:
        out = tpu_mosaic.prefix_block_attention(q, k, v, q_start, kv_len, block_size=8, interpret=TPU_INTERPRET)
    clean = lambda x: jnp.nan_to_num(x, nan=0.0)  # noqa: E731
    assert_close_to_reference(out, q, clean(k), clean(v), q_start, kv_len, 8)


@pytest.mark.parametrize("config", [
    TritonConfig(num_splits=1),
    TritonConfig(block_m=16, block_k=32, num_splits=5),
    TritonConfig(block_m=128, block_k=128, num_splits=2),
    TritonConfig(block_m=32, block_k=16, num_splits=40),  # more splits than key tiles: empty splits
], ids=str)
def test_gpu_kernel_launch_configs_compute_the_same_function(config):
    case = Case(45, 7, 64, None, "float32", (10, 333), (55, 378), num_kv_heads=2, num_keys=400)
    args = make_inputs(case, seed=11)
    out = gpu_triton.prefix_block_attention(*args, block_size=None, interpret=True, config=config)
    assert_close_to_reference(out, *args, None)


def test_float32_queries_over_a_bf16_cache_give_float32_outputs():
    q, k, v, q_start, kv_len = make_inputs(Case(16, 6, 64, 8, "bfloat16", (40, 3), (56, 19)), seed=9)
    q32 = q.astype(jnp.float32)
    expected = reference.prefix_block_attention(q32, k, v, q_start, kv_len, block_size=8)
    for out in (gpu_triton.prefix_block_attention(q32, k, v, q_start, kv_len, block_size=8, interpret=True),
                tpu_mosaic.prefix_block_attention(q32, k, v, q_start, kv_len, block_size=8,
                                                  interpret=TPU_INTERPRET)):
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=2e-2)  # bf16 products


def test_scale_argument_is_used():
    case = Case(8, 2, 64, 8, "float32", (16,), (24,))
    args = make_inputs(case, seed=5)
    expected = reference.prefix_block_attention(*args, block_size=8, scale=0.3)
    for out in (gpu_triton.prefix_block_attention(*args, block_size=8, scale=0.3, interpret=True),
                tpu_mosaic.prefix_block_attention(*args, block_size=8, scale=0.3, interpret=TPU_INTERPRET)):
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)


def test_merge_splits_equals_softmax_over_all_keys():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 20)) * 3  # 3 rows, 20 keys split 8 / 8 / 4
    values = rng.standard_normal((20, 4))
    bounds = [(0, 8), (8, 16), (16, 20)]
    outs, lses = [], []
    for lo, hi in bounds:
        w = np.exp(scores[:, lo:hi] - scores[:, lo:hi].max(1, keepdims=True))
        outs.append(w @ values[lo:hi] / w.sum(1, keepdims=True))
        lses.append(np.log(np.exp(scores[:, lo:hi]).sum(1)))
    # A fourth split that saw no key, and a row (appended) that no split saw.
    outs.append(np.zeros((3, 4)))
    lses.append(np.full(3, -np.inf))
    partial_out = np.concatenate([np.stack(outs), np.zeros((4, 1, 4))], axis=1)  # [splits, rows, D]
    partial_lse = np.concatenate([np.stack(lses), np.full((4, 1), -np.inf)], axis=1)
    merged = gpu_triton.merge_splits(jnp.asarray(partial_out, jnp.float32)[None, None],
                                     jnp.asarray(partial_lse, jnp.float32)[None, None])[0, 0]
    probs = np.exp(scores - scores.max(1, keepdims=True))
    expected = probs @ values / probs.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(merged[:3]), expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(merged[3]), 0.0)


@pytest.mark.parametrize("batch,num_kv_heads,group,rows_per_token,num_splits",
                         [(1, 2, 6, 8, 17), (2, 1, 7, 7, 3), (1, 4, 4, 4, 2)],
                         ids=["decode-group6-padded-17splits", "B2-group7-unpadded", "group4"])
def test_merge_kernel_writes_what_merge_splits_and_from_rows_give(batch, num_kv_heads, group, rows_per_token,
                                                                   num_splits):
    """The merge kernel (Pallas interpreter) = ``merge_splits`` then the rows back to [B, T, Hq, D]; padding rows
    of a group (``rows_per_token`` > group) are dropped, a split that saw no key weighs nothing."""
    num_tokens, head_dim = 5, 32
    num_rows = num_tokens * rows_per_token + 3  # kernels may write tile padding past the last token
    rng = np.random.default_rng(1)
    partial_out = jnp.asarray(rng.standard_normal((batch, num_kv_heads, num_splits, num_rows, head_dim)), jnp.float32)
    partial_lse = rng.standard_normal((batch, num_kv_heads, num_splits, num_rows)) * 4
    partial_lse[:, :, -1, ::2] = -np.inf  # the last split saw no key for every other row
    partial_lse = jnp.asarray(partial_lse, jnp.float32)
    merged = gpu_triton.merge_splits(partial_out, partial_lse)[:, :, :num_tokens * rows_per_token]
    merged = merged.reshape(batch, num_kv_heads, num_tokens, rows_per_token, head_dim)[:, :, :, :group]
    expected = merged.transpose(0, 2, 1, 3, 4).reshape(batch, num_tokens, num_kv_heads * group, head_dim)
    got = gpu_triton.merge_splits_to_heads(partial_out, partial_lse, num_tokens=num_tokens, group=group,
                                           rows_per_token=rows_per_token, out_dtype=jnp.float32, interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)


# --- the reference itself, against a literal reading of the specification -------------------------------

def literal_attention(q, k, v, q_start, kv_len, block_size):
    """float64, one query at a time, straight from the issue's definition of visibility."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, num_queries, num_q_heads, head_dim = q.shape
    group = num_q_heads // k.shape[2]
    out = np.zeros_like(q)
    for b in range(batch):
        for i in range(num_queries):
            pos = int(q_start[b]) + i
            keys = [j for j in range(k.shape[1]) if j < kv_len[b] and
                    (j <= pos if block_size is None else j // block_size <= pos // block_size)]
            if not keys:
                continue
            for h in range(num_q_heads):
                s = k[b, keys, h // group] @ q[b, i, h] * head_dim ** -0.5
                p = np.exp(s - s.max())
                out[b, i, h] = p @ v[b, keys, h // group] / p.sum()
    return out


@pytest.mark.parametrize("block_size", [None, 4])
def test_reference_follows_the_specification(block_size):
    case = Case(6, 3, 16, block_size, "float32", (0, 5, 9), (6, 9, 0), num_kv_heads=2, num_keys=16)
    args = make_inputs(case, seed=7)
    out = reference.prefix_block_attention(*args, block_size=block_size)
    np.testing.assert_allclose(np.asarray(out), literal_attention(*args, block_size), atol=1e-5)


def test_reference_returns_zeros_for_queries_that_see_no_key():
    case = Case(4, 2, 16, None, "bfloat16", (3,), (0,), num_keys=8)
    out = reference.prefix_block_attention(*make_inputs(case, seed=1), block_size=None)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), 0.0)


# --- dispatch -----------------------------------------------------------------------------------------

def test_dispatch_uses_the_reference_on_cpu_and_the_tpu_kernel_on_tpu():
    assert pallas_kernels.default_backend("cpu") == "reference"
    assert pallas_kernels.default_backend("tpu") == "tpu_mosaic"
    assert pallas_kernels.default_backend("gpu") == ("gpu_triton" if dispatch.GPU_KERNEL_VERIFIED else "reference")
    assert pallas_kernels.default_backend("cpu", interpret=True) == "gpu_triton"


def test_dispatch_entry_point_runs_each_backend():
    case = Case(7, 6, 64, 8, "float32", (9, 0), (16, 7))
    args = make_inputs(case, seed=2)
    expected = np.asarray(reference.prefix_block_attention(*args, block_size=8))
    for backend in pallas_kernels.BACKENDS:
        out = pallas_kernels.prefix_block_attention(*args, block_size=8, interpret=True, backend=backend)
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, err_msg=backend)
    with pytest.raises(ValueError, match="unknown backend"):
        pallas_kernels.prefix_block_attention(*args, backend="cuda")


def test_kernels_reject_head_counts_that_do_not_group():
    q = jnp.zeros((1, 4, 7, 64))
    k = jnp.zeros((1, 16, 2, 64))
    with pytest.raises(ValueError, match="multiple"):
        gpu_triton.prefix_block_attention(q, k, k, jnp.zeros(1, jnp.int32), jnp.ones(1, jnp.int32),
                                          interpret=True)


# --- drafter training: the [x_t ; x_0] block-diffusion mask ----------------------------------------------

def test_training_mask_is_bd_obc_bc():
    seq_len, block_size = 12, 4
    mask = block_diffusion_training.training_mask(seq_len, block_size)
    for i in range(2 * seq_len):
        for j in range(2 * seq_len):
            q_clean, k_clean = i >= seq_len, j >= seq_len
            q_block, k_block = (i % seq_len) // block_size, (j % seq_len) // block_size
            if not q_clean and not k_clean:
                expected = q_block == k_block  # M_BD: own noisy block, both directions
            elif not q_clean and k_clean:
                expected = k_block < q_block  # M_OBC: strictly earlier clean blocks
            elif q_clean and k_clean:
                expected = k_block <= q_block  # M_BC: block-causal over clean blocks
            else:
                expected = False  # clean tokens never see noised ones
            assert mask[i, j] == expected, (i, j)


def test_splash_training_attention_matches_dense_forward_and_backward():
    seq_len, block_size = 128, 32
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 2 * seq_len, heads, 64)), jnp.float32) for heads in (4, 2, 2))

    def loss(attention):
        return lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, block_size)))

    splash = functools.partial(block_diffusion_training.splash_attention, interpret=True)
    dense = block_diffusion_training.dense_attention
    np.testing.assert_allclose(np.asarray(splash(q, k, v, block_size)), np.asarray(dense(q, k, v, block_size)),
                               atol=1e-5)
    for got, want in zip(jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v),
                         jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
