"""dllm_generate: standalone Fast-dLLM v2 generation, checked token for token and pass for pass against the
cache-free reference (tests/dllm_reference.py) run on the transformers model."""

import collections

import numpy as np
import pytest

from ffjax import executables
from ffjax.dllm_generate import dllm_generate
from tests import dllm_reference as reference
from tests import tiny_models

MASK_ID = 150
SMALL_BLOCK = {8: 4, 32: 8}


@pytest.fixture(scope="module")
def dllm(tmp_path_factory):
    """(bd_size, mask_token_id) -> (ffjax.Model, torch model) of a tiny Fast_dLLM_Qwen checkpoint."""
    models = {}

    def make(bd_size, mask_token_id=MASK_ID):
        key = (bd_size, mask_token_id)
        if key not in models:
            models[key] = reference.make_tiny_dllm(str(tmp_path_factory.mktemp(f"dllm{bd_size}")),
                                                   bd_size=bd_size, mask_token_id=mask_token_id)
        return models[key]

    return make


def prompt_of(length, seed=0):
    return np.random.default_rng(seed + length).integers(3, MASK_ID, length).astype(np.int32)


def run_reference(hf_model, model, prompt, max_new_tokens, *, threshold, small_block_size=None, eos_id=None,
                  logits_fn=None):
    bd_size = model.config.bd_size
    return reference.generate(logits_fn or reference.torch_logits_fn(hf_model, bd_size), prompt, max_new_tokens,
                              bd_size=bd_size, small_block_size=small_block_size or SMALL_BLOCK[bd_size],
                              threshold=threshold, mask_id=model.config.mask_token_id, eos_id=eos_id)


@pytest.mark.parametrize("bd_size, prompt_len", [
    (8, 5), (8, 8), (8, 16), (8, 19),  # below a block, exactly one and two blocks, a partial block
    (32, 7), (32, 32), (32, 64), (32, 67),
])
def test_tokens_and_forward_passes_equal_the_reference(dllm, bd_size, prompt_len):
    model, hf_model = dllm(bd_size)
    prompt = prompt_of(prompt_len)
    passes = []
    for threshold in (0.05, 0.3, 0.9):
        expected = run_reference(hf_model, model, prompt, 40, threshold=threshold)
        result = dllm_generate(model, prompt, 40, threshold=threshold, small_block_size=SMALL_BLOCK[bd_size])
        assert result.tokens.tolist() == expected.tokens
        assert result.stats.forward_passes == expected.forward_passes
        passes.append(expected.forward_passes)
    assert len(set(passes)) > 1  # the thresholds decode differently on this model


def test_one_sub_block_per_block(dllm):
    model, hf_model = dllm(8)
    prompt = prompt_of(11)
    expected = run_reference(hf_model, model, prompt, 30, threshold=0.3, small_block_size=8)
    result = dllm_generate(model, prompt, 30, threshold=0.3, small_block_size=8)
    assert result.tokens.tolist() == expected.tokens
    assert result.stats.forward_passes == expected.forward_passes


@pytest.mark.parametrize("max_new_tokens", [1, 3, 8, 13])
def test_exactly_max_new_tokens(dllm, max_new_tokens):
    """Generation stops as soon as the first max_new_tokens positions are unmasked, even inside a sub-block."""
    model, hf_model = dllm(8)
    prompt = prompt_of(8, seed=1)
    expected = run_reference(hf_model, model, prompt, max_new_tokens, threshold=0.3)
    result = dllm_generate(model, prompt, max_new_tokens, threshold=0.3, small_block_size=4)
    assert len(result.tokens) == max_new_tokens
    assert result.tokens.tolist() == expected.tokens
    assert result.stats.forward_passes == expected.forward_passes


def test_eos_inside_a_block_stops_generation(dllm):
    model, hf_model = dllm(32)
    prompt = prompt_of(7)
    free = run_reference(hf_model, model, prompt, 60, threshold=0.3)
    # An EOS that first appears in the middle of a block (not at its first position).
    index = next(i for i, t in enumerate(free.tokens) if (len(prompt) + i) % 32 not in (0, 31)
                 and i >= 10 and t not in free.tokens[:i])
    eos_id = free.tokens[index]
    expected = run_reference(hf_model, model, prompt, 60, threshold=0.3, eos_id=eos_id)
    result = dllm_generate(model, prompt, 60, threshold=0.3, eos_id=eos_id)
    assert result.tokens.tolist() == expected.tokens == free.tokens[: index + 1]
    assert result.stats.forward_passes == expected.forward_passes < free.forward_passes
    assert result.stats.new_tokens == index + 1


def test_batch_rows_equal_single_prompt_runs(dllm):
    model, _ = dllm(8)
    prompts = np.stack([prompt_of(13, seed=2), prompt_of(13, seed=3)])
    singles = [dllm_generate(model, p, 24, threshold=0.3, small_block_size=4) for p in prompts]
    eos_id = int(singles[0].tokens[9])  # row 0 stops early; row 1 goes on (or stops at its own EOS)
    singles = [dllm_generate(model, p, 24, threshold=0.3, small_block_size=4, eos_id=eos_id) for p in prompts]
    batched = dllm_generate(model, prompts, 24, threshold=0.3, small_block_size=4, eos_id=eos_id)
    for row, single in enumerate(singles):
        assert batched.tokens[row].tolist() == single.tokens.tolist()
        assert batched.stats.row_forward_passes[row] == single.stats.forward_passes
    assert batched.stats.forward_passes == max(s.stats.forward_passes for s in singles)


def test_mask_token_is_never_emitted(dllm, tmp_path):
    """A model whose output row for the mask token slightly outscores its favourite token still never emits it."""
    model, _ = dllm(8)
    prompt = prompt_of(9)
    generated = dllm_generate(model, prompt, 40, threshold=0.3, small_block_size=4).tokens.tolist()
    favourite = collections.Counter(generated).most_common(1)[0][0]

    def mask_outscores_favourite(hf_model):
        hf_model.lm_head.weight[MASK_ID] = 1.05 * hf_model.lm_head.weight[favourite]

    model, hf_model = reference.make_tiny_dllm(str(tmp_path), bd_size=8, mask_token_id=MASK_ID,
                                               prepare=mask_outscores_favourite)
    raw_argmaxes = set()
    logits_fn = reference.torch_logits_fn(hf_model, 8)

    def recording_logits_fn(tokens):
        logits = logits_fn(tokens)
        raw_argmaxes.update(np.argmax(logits[len(prompt) - 1:], axis=-1).tolist())
        return logits

    expected = run_reference(hf_model, model, prompt, 40, threshold=0.3, logits_fn=recording_logits_fn)
    result = dllm_generate(model, prompt, 40, threshold=0.3, small_block_size=4)
    assert MASK_ID in raw_argmaxes  # left alone, the model would have predicted the mask token
    assert MASK_ID not in result.tokens.tolist()
    assert result.tokens.tolist() == expected.tokens and len(result.tokens) == 40


def test_new_thresholds_reuse_the_compiled_loop(dllm):
    model, _ = dllm(8)
    prompt = prompt_of(6)
    dllm_generate(model, prompt, 16, threshold=0.5, small_block_size=4)
    before = executables.count()
    for threshold in (0.0, 0.42, 1.0):
        result = dllm_generate(model, prompt, 16, threshold=threshold, small_block_size=4)
        assert result.stats.compile_s == 0.0
    assert executables.count() == before


def test_stats(dllm):
    model, _ = dllm(8)
    result = dllm_generate(model, prompt_of(21), 32, threshold=0.05, small_block_size=4)
    stats = result.stats
    assert (stats.prompt_tokens, stats.new_tokens) == (21, 32)
    assert stats.tokens_per_forward == pytest.approx(32 / stats.forward_passes)
    assert stats.tokens_per_forward > 1  # parallel decoding: fewer passes than tokens
    assert stats.total_s == pytest.approx(stats.prefill_s + stats.decode_s) and stats.tokens_per_s > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=-0.1), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(small_block_size=3), "small_block_size"),
    (dict(small_block_size=0), "small_block_size"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(eos_id=MASK_ID), "mask token"),
    (dict(eos_id=10_000), "eos_id"),
    (dict(prompt_ids=np.array([5, MASK_ID, 7])), "mask token"),
    (dict(prompt_ids=np.array([], np.int32)), "at least one token"),
])
def test_invalid_arguments_fail_early(dllm, kwargs, message):
    model, _ = dllm(8)
    args = dict(prompt_ids=np.array([5, 6, 7]), max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=message):
        dllm_generate(model, args.pop("prompt_ids"), args.pop("max_new_tokens"), **args)


def test_an_autoregressive_model_is_refused(converted):
    model, _ = converted("qwen2-ar-for-dllm", tiny_models.qwen2_config())
    with pytest.raises(ValueError, match="autoregressive"):
        dllm_generate(model, np.array([1, 2, 3]), 4)
