"""Can this drafter serve this verifier? Checked on the host before anything is compiled."""

from __future__ import annotations

import functools
import hashlib
import json
import os

from ffjax.checkpoint import Model


class IncompatibleModelsError(ValueError):
    """Drafter and verifier do not share a tokenizer / vocabulary."""


def _tokenizer_file(model: Model) -> str | None:
    if model.path is None:
        return None
    path = os.path.join(model.path, "tokenizer.json")
    return path if os.path.exists(path) else None


@functools.lru_cache(maxsize=16)
def _tokenizer_identity(path: str, mtime: float, size: int) -> tuple[str, frozenset]:
    """(digest of the BPE vocabulary and merges, the added tokens as (id, text) pairs): what decides token ids,
    not formatting or normalizer details. Cached per file version: parsing a 7 MB tokenizer.json takes seconds."""
    with open(path) as f:
        spec = json.load(f)
    bpe = spec.get("model", {})
    added = frozenset((t["id"], t["content"]) for t in spec.get("added_tokens", []))
    return hashlib.sha256(json.dumps([bpe.get("vocab"), bpe.get("merges")], sort_keys=True).encode()).hexdigest(), added


def _identity(path: str) -> tuple[str, frozenset]:
    stat = os.stat(path)
    return _tokenizer_identity(path, stat.st_mtime, stat.st_size)


def check_drafter_matches_verifier(verifier: Model, drafter: Model, ff) -> None:
    v_file, d_file = _tokenizer_file(verifier), _tokenizer_file(drafter)
    if v_file is not None and d_file is not None:
        (v_bpe, v_added), (d_bpe, d_added) = _identity(v_file), _identity(d_file)
        # A drafter may add tokens of its own (Fast-dLLM v2 adds its mask token); every id the verifier knows
        # must mean the same to both.
        if v_bpe != d_bpe or not v_added <= d_added:
            raise IncompatibleModelsError("drafter and verifier tokenizers differ (vocabulary, merges or special "
                                          "tokens): drafts would be meaningless to the verifier")
    elif verifier.config.vocab_size != drafter.config.vocab_size:
        # Without tokenizer files only equal vocabularies prove anything (Qwen2.5 sizes differ by padding rows,
        # which their tokenizer files settle).
        raise IncompatibleModelsError(
            f"drafter vocabulary ({drafter.config.vocab_size}) differs from the verifier's "
            f"({verifier.config.vocab_size}) and no tokenizer files show they share a tokenizer")
    if drafter.config.is_dllm:
        from ffjax.drafter import check_small_block_size
        check_small_block_size(drafter.config, ff.small_block_size)
