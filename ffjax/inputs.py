"""Validation of user inputs, done on the host before anything is compiled or run."""

from __future__ import annotations

import numpy as np

from ffjax.config import ModelConfig


def as_prompt_batch(prompt_ids, config: ModelConfig) -> tuple[np.ndarray, bool]:
    """A [B, T] int32 array of ids and whether the caller passed a single 1-D prompt."""
    prompt = np.asarray(prompt_ids)
    if prompt.size == 0:
        raise ValueError(f"prompt_ids must hold at least one token, got shape {prompt.shape}")
    if prompt.dtype.kind not in "iu":
        raise TypeError(f"prompt_ids must be integer token ids, got dtype {prompt.dtype}")
    was_1d = prompt.ndim == 1
    if was_1d:
        prompt = prompt[None, :]
    if prompt.ndim != 2:
        raise ValueError(f"prompt_ids must be [T] or [B, T], got shape {prompt.shape}")
    if prompt.shape[0] < 1 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_ids must hold at least one token, got shape {prompt.shape}")
    if prompt.min() < 0 or prompt.max() >= config.vocab_size:
        raise ValueError(f"prompt_ids must lie in [0, {config.vocab_size}) (the model's vocabulary), "
                         f"got values in [{prompt.min()}, {prompt.max()}]")
    return prompt.astype(np.int32), was_1d


def check_generation_args(config: ModelConfig, max_new_tokens, *, eos_id=None, temperature=0.0) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if eos_id is not None and not 0 <= eos_id < config.vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {config.vocab_size})")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")


def unbatch_tokens(out: np.ndarray, eos_id: int | None) -> list[np.ndarray]:
    """Per row: the generated ids up to and including the first EOS (padding -1 removed)."""
    rows = []
    for row in out:
        row = row[row >= 0]
        if eos_id is not None:
            hits = np.flatnonzero(row == eos_id)
            if hits.size:
                row = row[: hits[0] + 1]
        rows.append(row.astype(np.int32))
    return rows
