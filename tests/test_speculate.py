"""ffjax.speculate is lossless (token-identical to greedy generate) and follows FailFast's drafting rules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ffjax
from ffjax import decoder, executables
from ffjax.checkpoint import Model
from ffjax.compatibility import IncompatibleModelsError, check_drafter_matches_verifier
from ffjax.failfast_config import FailFastConfig
from ffjax.speculate import speculate
from tests import tiny_models

QWEN = tiny_models.qwen2_config()
MASK_ID = tiny_models.VOCAB - 1
BLOCK = 8
# Small windows so drafts cross several 8-token blocks and the largest bucket is exercised.
SMALL = FailFastConfig(init_spec_len=4, incr_len=5, max_spec_len=19, buckets=(8, 16, 24))


def as_dllm(model: Model) -> Model:
    """The same weights served as a Fast-dLLM v2 block-diffusion drafter."""
    config = dataclasses.replace(model.config, model_type="fast_dllm_qwen", bd_size=BLOCK, mask_token_id=MASK_ID)
    return Model(config, model.params)


def context_free(model: Model) -> Model:
    """Attention output zeroed: each position's prediction depends on its own token only, and the mask token's
    embedding is zero, so a masked position yields uniform logits. Served as a dLLM with these weights, the
    drafter then unmasks exactly the verifier's next token, one confident token per step."""
    params = jax.tree.map(lambda x: x, decoder.stack_layers(model.params))  # a copy, in the checkpoint layout
    params["layers"]["o"] = jnp.zeros_like(params["layers"]["o"])
    if decoder.layout_of(model.params) != decoder.layout_of(params):
        params = decoder.unstack_layers(params)
    params["embed"] = params["embed"].at[MASK_ID].set(0.0)
    params["final_norm"]["scale"] = params["final_norm"]["scale"] * 30.0  # confident without attention, too
    return Model(model.config, params)


@pytest.fixture(scope="module")
def models(converted):
    verifier = converted("spec-verifier", QWEN)[0]
    other = converted("spec-other", QWEN, seed=7)[0]
    bigram = context_free(verifier)
    return {"verifier": verifier, "dllm_twin": as_dllm(verifier), "dllm_unrelated": as_dllm(other),
            "ar_twin": verifier, "ar_unrelated": other, "bigram": bigram, "bigram_dllm": as_dllm(bigram)}


def prompt(seed, length):
    return np.random.RandomState(seed).randint(0, tiny_models.VOCAB - 1, length)


def assert_lossless(verifier, drafter, ids, max_new, config=FailFastConfig(), eos_id=None):
    result = speculate(verifier, drafter, ids, max_new, config=config, eos_id=eos_id)
    expected = ffjax.generate(verifier, ids, max_new, eos_id=eos_id).tokens
    np.testing.assert_array_equal(result.tokens, expected)
    return result


@pytest.mark.parametrize("drafter", ["dllm_twin", "dllm_unrelated", "ar_twin", "ar_unrelated"])
@pytest.mark.parametrize("length", [1, 8, 13])
def test_lossless_for_every_kind_of_drafter(models, drafter, length):
    assert_lossless(models["verifier"], models[drafter], prompt(length, length), 40)


@pytest.mark.parametrize("config", [SMALL, dataclasses.replace(SMALL, dynamic=False),
                                    dataclasses.replace(SMALL, tau=0.0), dataclasses.replace(SMALL, tau=1.0),
                                    dataclasses.replace(SMALL, reuse_rejected=True)],
                         ids=["failfast", "fixed", "tau0", "tau1", "reuse_rejected"])
@pytest.mark.parametrize("drafter", ["dllm_twin", "ar_unrelated"])
def test_lossless_across_configs(models, config, drafter):
    for seed in range(3):
        assert_lossless(models["verifier"], models[drafter], prompt(seed, 9 + seed), 33, config)


def test_identical_drafter_is_accepted_in_full_across_blocks(models):
    result = assert_lossless(models["bigram"], models["bigram_dllm"], prompt(3, 11), 90, SMALL)
    stats = result.stats
    assert np.array_equal(stats.accepted, stats.drafted)  # every draft accepted: each round ends on a bonus token
    assert stats.drafted.max() == SMALL.max_spec_len > 2 * BLOCK  # long drafts cross blocks
    assert stats.rounds < 90 / 10


def test_unrelated_drafter_is_rejected_yet_lossless(models):
    stats = assert_lossless(models["verifier"], models["dllm_unrelated"], prompt(4, 12), 48).stats
    assert stats.acceptance_rate < 0.3
    assert stats.rounds >= 48 / (1 + 10 * stats.acceptance_rate + 1) - 1


def test_eos_inside_a_draft_stops_right_after_it(models):
    ids = prompt(5, 10)
    free = ffjax.generate(models["bigram"], ids, 60).tokens
    eos = int(free[27])  # lands inside a long accepted draft
    result = assert_lossless(models["bigram"], models["bigram_dllm"], ids, 60, SMALL, eos_id=eos)
    assert result.tokens[-1] == eos and eos not in result.tokens[:-1]
    assert result.stats.drafted.max() > 10


@pytest.mark.parametrize("max_new", [1, 2, 23, 37])
def test_max_new_tokens_inside_a_draft_is_exact(models, max_new):
    result = assert_lossless(models["bigram"], models["bigram_dllm"], prompt(6, 10), max_new, SMALL)
    assert len(result.tokens) == max_new


def budget_caps(stats, max_new):
    """The longest useful draft of each round: what is left of the budget minus the verifier's own token (0 when
    only that token is missing: nothing is drafted then)."""
    produced = 1 + np.concatenate([[0], np.cumsum(stats.accepted + 1)[:-1]])
    return np.clip(max_new - produced - 1, 0, None)


def test_draft_length_follows_the_window_rule(models):
    verifier, unrelated = models["verifier"], models["dllm_unrelated"]
    never_fail = speculate(verifier, unrelated, prompt(7, 9), 80, config=dataclasses.replace(SMALL, tau=0.0)).stats
    # tau = 0: every window grows to max_spec_len (or to what the budget still allows).
    np.testing.assert_array_equal(never_fail.drafted, np.minimum(19, budget_caps(never_fail, 80)))
    always_fail = speculate(verifier, unrelated, prompt(7, 9), 40, config=dataclasses.replace(SMALL, tau=1.0)).stats
    # tau = 1: no window survives its first check.
    np.testing.assert_array_equal(always_fail.drafted, np.minimum(4, budget_caps(always_fail, 40)))
    fixed = speculate(verifier, unrelated, prompt(7, 9), 40, config=dataclasses.replace(SMALL, dynamic=False)).stats
    np.testing.assert_array_equal(fixed.drafted, np.minimum(4, budget_caps(fixed, 40)))
    dynamic = speculate(verifier, models["dllm_twin"], prompt(8, 9), 60, config=SMALL).stats
    caps = budget_caps(dynamic, 60)
    uncapped = caps >= SMALL.max_spec_len
    assert set(dynamic.drafted[uncapped]) <= {4, 9, 14, 19}  # windows only ever grow by incr_len
    assert np.all(dynamic.drafted <= np.minimum(caps, SMALL.max_spec_len))


@pytest.mark.parametrize("drafter", ["dllm_unrelated", "ar_unrelated"])
def test_reusing_rejected_drafts_lengthens_failed_drafts_at_no_forward_pass(models, drafter):
    config = dataclasses.replace(SMALL, reuse_rejected=True)
    verifier, draft_model = models["verifier"], models[drafter]
    ids = prompt(12, 10)
    reusing = assert_lossless(verifier, draft_model, ids, 60, config).stats
    plain = speculate(verifier, draft_model, ids, 60, config=SMALL).stats
    assert reusing.reused.sum() > 0  # an unrelated drafter fails fast, and its rejected tails overlap
    assert np.all(reusing.drafted <= np.minimum(budget_caps(reusing, 60), SMALL.max_spec_len))
    # An unrelated drafter's reused tokens are rejected like the rest, so both runs take the same rounds: the
    # drafter ran the same passes, and the reused tokens came on top of its drafts.
    np.testing.assert_array_equal(reusing.accepted, plain.accepted)
    assert reusing.drafter_forwards == plain.drafter_forwards
    np.testing.assert_array_equal(reusing.drafted - reusing.reused, plain.drafted)


def test_reuse_rejected_needs_the_dynamic_rule():
    with pytest.raises(ValueError, match="dynamic"):
        FailFastConfig(reuse_rejected=True, dynamic=False)


def test_ar_drafter_drafts_one_token_per_forward(models):
    config = dataclasses.replace(SMALL, dynamic=False)
    stats = assert_lossless(models["verifier"], models["ar_twin"], prompt(9, 10), 45, config).stats
    assert np.array_equal(stats.accepted, stats.drafted)  # same weights: every draft token is right
    assert stats.drafter_forwards == 1 + stats.drafted.sum()  # prompt prefill + one per drafted token


def test_stats_account_for_every_token(models):
    result = assert_lossless(models["verifier"], models["dllm_twin"], prompt(10, 10), 50, SMALL)
    s = result.stats
    assert s.verifier_forwards == s.rounds + 1  # prefill + one verification per round
    produced = 1 + int(np.sum(s.accepted + 1))  # prefill's token + (accepted + the verifier's own) per round
    assert produced >= 50 > produced - int(s.accepted[-1] + 1)
    assert s.drafter_forwards >= s.rounds and s.tokens_per_s > 0


def test_no_recompilation_for_new_prompts_and_thresholds(models):
    verifier, drafter = models["verifier"], models["dllm_twin"]
    speculate(verifier, drafter, prompt(11, 10), 30, config=SMALL)  # warm-up: prompt bucket 16
    ffjax.generate(verifier, prompt(11, 10), 30)  # the reference's programs too (the test must pass alone)
    compiles = []
    listener = lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        before = executables.count()
        for seed, (tau, threshold) in enumerate([(0.1, 0.5), (0.9, 0.01), (0.45, 0.05)]):
            config = dataclasses.replace(SMALL, tau=tau, drafter_threshold=threshold)
            assert_lossless(verifier, drafter, prompt(20 + seed, 9 + seed), 30 + seed, config)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert executables.count() == before and compiles == []


def test_a_fixed_prompt_bucket_serves_prompts_of_several_buckets_with_one_program(models):
    verifier, draft_model = models["verifier"], models["dllm_twin"]
    prompts = [prompt(30 + n, n) for n in (5, 20, 50)]  # buckets 16, 32 and 64 by default
    expected = [ffjax.generate(verifier, p, 30).tokens for p in prompts]
    speculate(verifier, draft_model, prompts[0], 30, config=SMALL, prompt_bucket=80)  # warm-up
    before = executables.count()
    for p, tokens in zip(prompts, expected):
        np.testing.assert_array_equal(speculate(verifier, draft_model, p, 30, config=SMALL, prompt_bucket=80).tokens,
                                      tokens)
    assert executables.count() == before


@pytest.mark.parametrize("drafter, eos_id, max_new", [("dllm_unrelated", 3, 40), ("ar_unrelated", None, 9)])
def test_streamed_tokens_arrive_round_by_round_and_add_up_to_the_output(models, drafter, eos_id, max_new):
    chunks = []
    result = speculate(models["verifier"], models[drafter], prompt(4, 12), max_new, config=SMALL, eos_id=eos_id,
                       stream=chunks.append)
    assert len(chunks) >= 2 and all(len(c) >= 1 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), result.tokens)
    np.testing.assert_array_equal(result.tokens, ffjax.generate(models["verifier"], prompt(4, 12), max_new,
                                                                eos_id=eos_id).tokens)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tau=st.floats(0, 1), threshold=st.floats(0, 1), seed=st.integers(0, 10_000), length=st.integers(1, 16),
       max_new=st.integers(1, 40))
def test_lossless_for_any_thresholds(models, tau, threshold, seed, length, max_new):
    config = dataclasses.replace(SMALL, tau=tau, drafter_threshold=threshold)
    assert_lossless(models["verifier"], models["dllm_twin"], prompt(seed, length), max_new, config)


def test_vocabulary_mismatch_is_refused_before_any_compute(models):
    verifier = models["verifier"]
    bigger = dataclasses.replace(verifier.config, vocab_size=tiny_models.VOCAB + 8)
    with pytest.raises(IncompatibleModelsError, match="vocabulary"):
        speculate(verifier, Model(bigger, verifier.params), prompt(0, 5), 10)


def test_drafter_with_a_smaller_vocabulary_survives_ids_it_lacks(models, tmp_path):
    """Qwen2.5 pairs differ in padded vocabulary rows; an id past the drafter's table must not poison it."""
    import json
    verifier = models["verifier"]
    small_vocab = 150
    params = dict(verifier.params, embed=verifier.params["embed"][:small_vocab],
                  lm_head=verifier.params["lm_head"][:, :small_vocab])
    for name in ("v", "d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"x": 0}, "merges": []}}))
    big = Model(verifier.config, verifier.params, str(tmp_path / "v"))
    small = Model(dataclasses.replace(verifier.config, vocab_size=small_vocab), params, str(tmp_path / "d"))
    seed = next(s for s in range(50) if ffjax.generate(verifier, prompt(s, 9), 60).tokens.max() >= small_vocab)
    stats = assert_lossless(big, small, prompt(seed, 9), 60, dataclasses.replace(SMALL, dynamic=False)).stats
    # The twin drafter stays right wherever the verifier stays inside its table.
    assert stats.acceptance_rate > 0.5


def test_tokenizer_mismatch_is_refused(models, tmp_path):
    import json
    verifier = models["verifier"]
    for name, vocab in (("a", {"x": 0}), ("b", {"y": 0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab, "merges": []}}))
    with pytest.raises(IncompatibleModelsError, match="tokenizers differ"):
        speculate(Model(verifier.config, verifier.params, str(tmp_path / "a")),
                  Model(verifier.config, verifier.params, str(tmp_path / "b")), prompt(0, 5), 10)


def test_drafter_tokenizer_may_add_its_mask_token_but_not_drop_the_verifiers_tokens(models, tmp_path):
    import json
    verifier, drafter = models["verifier"], models["dllm_twin"]
    special = [{"id": 5, "content": "<|im_end|>"}]
    files = {"verifier": special, "drafter_with_mask": special + [{"id": 7, "content": "|<MASK>|"}],
             "drafter_without_special": []}
    for name, added in files.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(
            json.dumps({"model": {"vocab": {"x": 0}, "merges": []}, "added_tokens": added}))
    v = Model(verifier.config, verifier.params, str(tmp_path / "verifier"))
    check_drafter_matches_verifier(v, Model(drafter.config, drafter.params, str(tmp_path / "drafter_with_mask")),
                                   SMALL)
    with pytest.raises(IncompatibleModelsError, match="tokenizers differ"):
        check_drafter_matches_verifier(
            v, Model(drafter.config, drafter.params, str(tmp_path / "drafter_without_special")), SMALL)


def test_diffusion_model_as_verifier_is_refused(models):
    with pytest.raises(ValueError, match="verifier must be an autoregressive model"):
        speculate(models["dllm_twin"], models["dllm_twin"], prompt(0, 5), 10)


def test_prompt_plus_budget_beyond_the_context_is_refused(models):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculate(models["verifier"], models["dllm_twin"], prompt(0, 5), QWEN.max_position_embeddings)


def test_batch_of_several_prompts_is_refused(models):
    with pytest.raises(ValueError, match="batch 1"):
        speculate(models["verifier"], models["dllm_twin"], np.ones((2, 4), np.int32), 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tau=1.5), "tau must be a number in"), (dict(drafter_threshold=-0.1), "drafter_threshold must be a number"),
    (dict(tau=float("nan")), "tau must be a number in"), (dict(tau=True), "tau must be a number in"),
    (dict(init_spec_len=0), "positive"), (dict(incr_len=2.5), "positive integer"),
    (dict(buckets=(32, 16, 96)), "strictly increasing"), (dict(buckets=(16, 32)), "largest bucket"),
    (dict(init_spec_len=70), "exceeds max_spec_len"),
])
def test_invalid_config_is_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FailFastConfig(**kwargs)


def test_small_block_size_must_divide_the_drafter_block(models):
    with pytest.raises(ValueError, match="small_block_size"):
        speculate(models["verifier"], models["dllm_twin"], prompt(0, 5), 10,
                  config=dataclasses.replace(SMALL, small_block_size=3))
