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
def _tokenizer_identity(path: str, mtime: float, size: int) -> str:
    """A digest of what decides token ids (vocabulary, merges, added tokens), not of formatting or
    normalizer details. Cached per file version: parsing a 7 MB tokenizer.json takes seconds."""
    with open(path) as f:
        spec = json.load(f)
    bpe = spec.get("model", {})
    added = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
    canonical = json.dumps([bpe.get("vocab"), bpe.get("merges"), added], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _identity(path: str) -> str:
    stat = os.stat(path)
    return _tokenizer_identity(path, stat.st_mtime, stat.st_size)


def check_drafter_matches_verifier(verifier: Model, drafter: Model, ff) -> None:
    v_file, d_file = _tokenizer_file(verifier), _tokenizer_file(drafter)
    if v_file is not None and d_file is not None:
        if _identity(v_file) != _identity(d_file):
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
