"""Can this drafter serve this verifier? Checked on the host before anything is compiled."""

from __future__ import annotations

import json
import os

from ffjax.checkpoint import Model


class IncompatibleModelsError(ValueError):
    """Drafter and verifier do not share a tokenizer / vocabulary."""


def _tokenizer_identity(model: Model):
    """The vocabulary and merges of the model's tokenizer.json, or None when it has none."""
    if model.path is None:
        return None
    path = os.path.join(model.path, "tokenizer.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        spec = json.load(f)
    bpe = spec.get("model", {})
    added = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
    return json.dumps([bpe.get("vocab"), bpe.get("merges"), added], sort_keys=True)


def check_drafter_matches_verifier(verifier: Model, drafter: Model, ff) -> None:
    v_tok, d_tok = _tokenizer_identity(verifier), _tokenizer_identity(drafter)
    if v_tok is not None and d_tok is not None:
        if v_tok != d_tok:
            raise IncompatibleModelsError("drafter and verifier tokenizers differ (vocabulary, merges or special "
                                          "tokens): drafts would be meaningless to the verifier")
    elif verifier.config.vocab_size != drafter.config.vocab_size:
        # Without tokenizer files only equal vocabularies prove anything (Qwen2.5 sizes differ by padding rows,
        # which their tokenizer files settle).
        raise IncompatibleModelsError(
            f"drafter vocabulary ({drafter.config.vocab_size}) differs from the verifier's "
            f"({verifier.config.vocab_size}) and no tokenizer files show they share a tokenizer")
    if drafter.config.is_dllm and ff.small_block_size > drafter.config.bd_size or (
            drafter.config.is_dllm and drafter.config.bd_size % ff.small_block_size):
        raise ValueError(f"small_block_size ({ff.small_block_size}) must divide the drafter's block size "
                         f"({drafter.config.bd_size})")
