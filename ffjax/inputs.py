"""Validation of user inputs, done on the host before anything is compiled or run."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ffjax import shapes
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


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_unit_interval(name: str, value) -> float:
    """The value as a float, if it is a real number in [0, 1]; else a ValueError naming it."""
    if not is_real(value) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_autoregressive(config: ModelConfig, role: str) -> None:
    if config.is_dllm:
        raise ValueError(f"the {role} must be an autoregressive model; {config.model_type!r} is a block-diffusion "
                         "model (use ffjax.dllm_generate, or pass it as the drafter of ffjax.speculate)")


def check_generation_args(config: ModelConfig, prompt_len: int, max_new_tokens, *, eos_id=None,
                          temperature=0.0) -> None:
    if not is_integer(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if prompt_len + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context of {config.max_position_embeddings} positions (max_position_embeddings)")
    if eos_id is not None and (not is_integer(eos_id) or not 0 <= eos_id < config.vocab_size):
        raise ValueError(f"eos_id must be a token id in [0, {config.vocab_size}), got {eos_id!r}")
    if not is_real(temperature) or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")


def pad_to_bucket(prompt: np.ndarray, bucket: int | None = None) -> np.ndarray:
    """[B, T] prompt right-padded with zeros to its bucket length (see ffjax/shapes.py)."""
    padded = np.zeros((prompt.shape[0], shapes.prompt_bucket(prompt.shape[1], bucket)), np.int32)
    padded[:, : prompt.shape[1]] = prompt
    return padded


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
