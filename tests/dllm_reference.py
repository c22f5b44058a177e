"""A plain, cache-free Fast-dLLM v2 decoder: the specification ffjax's drafter and dllm_generate are tested against.

Written for reading, not speed: every forward pass re-runs the whole sequence (complete blocks, then the current
block with its mask tokens) through ``logits_fn`` under the block-causal mask. Also builds the tiny dLLMs the
tests use (a tiny random Qwen2 saved as ``Fast_dLLM_Qwen`` and converted).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from tests import tiny_models

MASKED = None  # a block position that has no token yet


def block_causal_mask(length: int, bd_size: int) -> np.ndarray:
    """[T, T] bool: query i sees key j iff j's block is not after i's."""
    blocks = np.arange(length) // bd_size
    return blocks[None, :] <= blocks[:, None]


def torch_logits_fn(hf_model, bd_size: int):
    """token list -> float32 logits [T, V] from a transformers model, with an explicit 4D additive float mask."""
    def logits(tokens):
        visible = torch.as_tensor(block_causal_mask(len(tokens), bd_size))
        additive = torch.where(visible, 0.0, torch.finfo(torch.float32).min)[None, None]
        return tiny_models.hf_logits(hf_model, np.asarray([tokens]), attention_mask=additive)[0]
    return logits


def predict(logits_row: np.ndarray, mask_id: int) -> tuple[int, float]:
    """The most probable token other than the mask token, and its softmax probability."""
    logits_row = logits_row.astype(np.float64)
    probs = np.exp(logits_row - logits_row.max())
    probs /= probs.sum()
    candidates = probs.copy()
    candidates[mask_id] = -1.0
    token = int(np.argmax(candidates))
    return token, float(probs[token])


@dataclasses.dataclass
class ReferenceResult:
    tokens: list[int]  # generated ids, ending at the first EOS inclusive
    forward_passes: int
    # One entry per forward pass: {absolute position: (token, confidence)} of what that pass unmasked.
    trace: list[dict[int, tuple[int, float]]]


def generate(logits_fn, prompt, max_new_tokens: int, *, bd_size: int, small_block_size: int, threshold: float,
             mask_id: int, eos_id: int | None = None) -> ReferenceResult:
    prompt = [int(t) for t in prompt]
    P = len(prompt)
    complete = P // bd_size * bd_size
    committed = prompt[:complete]  # complete blocks
    block = prompt[complete:] + [MASKED] * (bd_size - (P - complete))  # the block being decoded
    trace = []

    def run(tokens):
        trace.append({})
        return logits_fn(tokens)

    def generated_so_far():
        """The generated tokens before the first masked position."""
        sequence = committed + block
        end = sequence.index(MASKED) if MASKED in sequence else len(sequence)
        return sequence[P:end]

    def finished():
        done = generated_so_far()
        return len(done) >= max_new_tokens or (eos_id is not None and eos_id in done)

    # Prefill: the prompt's complete blocks in one pass; a prompt ending on a block boundary gets the next
    # block's first token from its last position.
    if complete:
        logits = run(committed)
        if P == complete:
            token, confidence = predict(logits[-1], mask_id)
            block = [token] + [MASKED] * (bd_size - 1)
            trace[-1][P] = (token, confidence)

    while not finished():
        block_start = len(committed)
        if MASKED not in block:
            # Commit: one more pass over the complete block; its last position predicts the next block's first token.
            logits = run(committed + block)
            token, confidence = predict(logits[-1], mask_id)
            committed = committed + block
            block = [token] + [MASKED] * (bd_size - 1)
            trace[-1][block_start + bd_size] = (token, confidence)
            continue
        # One decoding step on the first sub-block that still has a masked position.
        logits = run(committed + [mask_id if t is MASKED else t for t in block])
        sub = block.index(MASKED) // small_block_size * small_block_size
        candidates = [j for j in range(sub, sub + small_block_size) if block[j] is MASKED]
        # Token shift: position j is predicted by the output at j - 1 (position 0 by its own).
        predictions = {j: predict(logits[block_start + max(j - 1, 0)], mask_id) for j in candidates}
        most_confident = max(candidates, key=lambda j: predictions[j][1])  # first one on ties
        for j in candidates:
            token, confidence = predictions[j]
            if confidence > threshold or j == most_confident:
                block[j] = token
                trace[-1][block_start + j] = (token, confidence)

    tokens = generated_so_far()[:max_new_tokens]
    if eos_id is not None and eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id) + 1]
    return ReferenceResult(tokens=tokens, forward_passes=len(trace), trace=trace)


def make_tiny_dllm(directory: str, *, bd_size: int, mask_token_id: int, seed: int = 1, confidence: float = 25.0,
                   prepare=None, **config_overrides):
    """(ffjax.Model, torch model): a tiny random Qwen2 saved as a Fast_dLLM_Qwen checkpoint and converted.

    ``confidence`` scales the final norm so the softmax is peaked: with the defaults, thresholds 0.05 / 0.3 / 0.9
    unmask visibly different numbers of tokens per pass (tests check that they do).
    """
    import ffjax
    from checkpoints_convert import convert

    hf_model = tiny_models.build(tiny_models.qwen2_config(**config_overrides), seed=seed, confidence=confidence)
    if prepare is not None:  # edits the torch weights before they are saved
        with torch.no_grad():
            prepare(hf_model)
    hf_dir = tiny_models.save(hf_model, os.path.join(directory, "hf"))
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_config = json.load(f)
    hf_config.update(model_type="Fast_dLLM_Qwen", architectures=["Fast_dLLM_QwenForCausalLM"], bd_size=bd_size,
                     mask_token_id=mask_token_id)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf_config, f)
    out = os.path.join(directory, "ffjax")
    convert(hf_dir, out, "float32", progress=False)
    return ffjax.load(out), hf_model
