"""ffjax.generate: stopping rules, shapes, sampling, validation and compilation behaviour."""

import jax
import numpy as np
import pytest

import ffjax
from ffjax import executables
from tests import tiny_models

QWEN = tiny_models.qwen2_config()


@pytest.fixture(scope="module")
def model(converted):
    return converted("qwen-generate", QWEN)[0]


def test_exactly_max_new_tokens_without_eos(model):
    prompt = np.arange(5, 17)
    for n in (1, 2, 63, 64, 65):
        result = ffjax.generate(model, prompt, n)
        assert result.tokens.shape == (n,)
        assert result.stats.new_tokens == n and result.stats.prompt_tokens == 12


def test_stops_at_first_eos_inclusive(model):
    prompt = np.arange(5, 17)
    free = ffjax.generate(model, prompt, 40).tokens
    eos = int(free[7])
    first = int(np.flatnonzero(free == eos)[0])
    stopped = ffjax.generate(model, prompt, 40, eos_id=eos).tokens
    np.testing.assert_array_equal(stopped, free[: first + 1])
    assert stopped[-1] == eos


def test_batched_prompts_match_single_prompts(model):
    prompts = np.random.RandomState(0).randint(0, tiny_models.VOCAB, (2, 9))
    batched = ffjax.generate(model, prompts, 20).tokens
    for row, prompt in zip(batched, prompts):
        np.testing.assert_array_equal(row, ffjax.generate(model, prompt, 20).tokens)


def test_sampling_is_reproducible_by_seed_and_differs_from_greedy(model):
    prompt = np.arange(3, 11)
    a = ffjax.generate(model, prompt, 48, temperature=5.0, seed=1).tokens
    b = ffjax.generate(model, prompt, 48, temperature=5.0, seed=1).tokens
    c = ffjax.generate(model, prompt, 48, temperature=5.0, seed=2).tokens
    greedy = ffjax.generate(model, prompt, 48).tokens
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, greedy)


def test_stats_separate_compilation_from_run_time(model):
    prompt = np.arange(1, 200) % tiny_models.VOCAB  # a prompt bucket no other test uses
    first = ffjax.generate(model, prompt, 8).stats
    second = ffjax.generate(model, prompt, 8).stats
    assert first.compile_s > 0 and second.compile_s == 0
    assert second.tokens_per_s > 0 and second.total_s == second.prefill_s + second.decode_s


def test_no_recompilation_across_prompts_and_budgets_of_one_bucket(model):
    compiles = []
    listener = lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None
    ffjax.generate(model, np.arange(20, 37), 50, eos_id=3)  # warm-up: prompt bucket 32, output bucket 64
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        before = executables.count()
        for length, budget, eos in [(17, 50, 3), (25, 64, None), (32, 33, 7), (19, 60, 11)]:
            prompt = np.random.RandomState(length).randint(0, tiny_models.VOCAB, length)
            ffjax.generate(model, prompt, budget, eos_id=eos)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert executables.count() == before
    assert compiles == []


def test_a_kernel_switch_changed_between_calls_compiles_its_own_program(model, monkeypatch):
    prompt = np.arange(1, 300) % tiny_models.VOCAB  # a prompt bucket only the tracing-input tests use
    ffjax.generate(model, prompt, 8)
    before = executables.count()
    monkeypatch.setenv("FFJAX_SKINNY_GEMM", "off")  # read while tracing: the cached program would ignore it
    ffjax.generate(model, prompt, 8)
    assert executables.count() > before


def test_an_edited_skinny_gemm_plan_compiles_its_own_program(model, monkeypatch):
    from pallas_kernels import skinny_gemm
    prompt = np.arange(1, 300) % tiny_models.VOCAB
    ffjax.generate(model, prompt, 8)
    before = executables.count()
    # the plan is read while tracing, like the switches: a tuning script that edits it must not get the old program
    monkeypatch.setitem(skinny_gemm.PLANS, (32, 64, 64), skinny_gemm.SkinnyConfig())
    ffjax.generate(model, prompt, 8)
    assert executables.count() > before


def test_xla_options_compile_their_own_program_and_reach_xla(model):
    prompt = np.arange(1, 300) % tiny_models.VOCAB
    expected = ffjax.generate(model, prompt, 8).tokens
    before = executables.count()
    with executables.xla_options({"xla_gpu_enable_pdl": True}):  # a GPU option: the CPU program is the same
        np.testing.assert_array_equal(ffjax.generate(model, prompt, 8).tokens, expected)
    assert executables.count() > before
    # the options reach XLA's compiler: it refuses one it does not know
    with executables.xla_options({"xla_no_such_option": True}), \
            pytest.raises(jax.errors.JaxRuntimeError, match="xla_no_such_option"):
        ffjax.generate(model, prompt, 8)


def test_a_fixed_prompt_bucket_serves_prompts_of_several_buckets_with_one_program(model):
    prompts = [np.random.RandomState(n).randint(0, tiny_models.VOCAB, n) for n in (9, 40, 70)]
    expected = [ffjax.generate(model, p, 24).tokens for p in prompts]
    ffjax.generate(model, prompts[0], 24, prompt_bucket=96)  # warm-up
    before = executables.count()
    for prompt, tokens in zip(prompts, expected):
        np.testing.assert_array_equal(ffjax.generate(model, prompt, 24, prompt_bucket=96).tokens, tokens)
    assert executables.count() == before


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt_ids=[], max_new_tokens=4), ValueError, "at least one token"),
    (dict(prompt_ids=[1, 2, tiny_models.VOCAB], max_new_tokens=4), ValueError, "vocabulary"),
    (dict(prompt_ids=[-1, 2], max_new_tokens=4), ValueError, "vocabulary"),
    (dict(prompt_ids=[1.5, 2.0], max_new_tokens=4), TypeError, "integer token ids"),
    (dict(prompt_ids=[[[1]]], max_new_tokens=4), ValueError, r"\[T\] or \[B, T\]"),
    (dict(prompt_ids=[1, 2], max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(prompt_ids=[1, 2], max_new_tokens=4, eos_id=10_000), ValueError, "eos_id"),
    (dict(prompt_ids=[1, 2], max_new_tokens=4, temperature=-1.0), ValueError, "temperature"),
    (dict(prompt_ids=[1, 2], max_new_tokens=True), ValueError, "max_new_tokens"),
    (dict(prompt_ids=[1, 2], max_new_tokens=4, eos_id=2.7), ValueError, "eos_id"),
    (dict(prompt_ids=[1, 2], max_new_tokens=QWEN.max_position_embeddings), ValueError, "max_position_embeddings"),
    (dict(prompt_ids=[1, 2, 3], max_new_tokens=4, prompt_bucket=2), ValueError, "prompt_bucket"),
])
def test_bad_inputs_are_refused_before_any_compute(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        ffjax.generate(model, **kwargs)


def test_attention_implementation_switch_is_validated(model, monkeypatch):
    monkeypatch.setenv("FFJAX_ATTENTION", "refrence")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        ffjax.generate(model, [1, 2, 3], 4)
    monkeypatch.setenv("FFJAX_ATTENTION", "reference")
    np.testing.assert_array_equal(ffjax.generate(model, [1, 2, 3], 4).tokens,
                                  ffjax.generate(model, [1, 2, 3], 4).tokens)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="GPU kernels are allowed on a GPU")
@pytest.mark.parametrize("impl", ["gpu_triton", "gpu_mosaic"])
def test_forcing_a_gpu_kernel_off_the_gpu_is_refused_by_name(model, monkeypatch, impl):
    monkeypatch.setenv("FFJAX_ATTENTION", impl)
    with pytest.raises(ValueError, match=f"{impl}.*runs GPU kernels"):
        ffjax.generate(model, [1, 2, 3], 4)
