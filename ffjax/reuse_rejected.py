"""Reusing the previous round's rejected draft (the FailFast paper's appendix E; ``FailFastConfig.reuse_rejected``).

When a round's draft stops for low confidence, the previous round's rejected tail may already hold what comes
next: if a suffix of at least two tokens of the new draft reappears in that tail, the tail's tokens after the
match are appended to the draft, at no forward pass. Verification decides as always, so output is unchanged.

ffjax's exact rule (as the reference's drafter-side splice does it, plus a cap; an earlier exploration script
of the reference matched differently):
* the tail is the last round's draft after its first rejected token (that token was replaced by the verifier's,
  so the tail starts where the new draft starts); it is empty when at most the last drafted token was rejected;
* the longest suffix of the draft that occurs in the tail, at its leftmost occurrence, wins; a suffix of one
  token is not enough;
* the draft grows only if the tail has tokens after that match (no other match is tried), and never past the
  round's cap
  (``max_spec_len``, less near the end of the budget), so every draft still fits the verification buckets.
"""

from __future__ import annotations

import jax.numpy as jnp


def rejected_tail(inputs, accepted, drafted, width: int):
    """(tail [B, width], tail length [B]): drafts d_{a+2}..d_k of the round just verified, where inputs [B, W] is
    (last accepted token, d_1, ..., d_k), k = ``drafted`` and a = ``accepted``. Slots past the length hold -1."""
    start = accepted + 2  # inputs index of d_{a+2}
    length = jnp.maximum(drafted - accepted - 1, 0)
    i = jnp.arange(width)[None, :]
    index = jnp.clip(start[:, None] + i, 0, inputs.shape[1] - 1)
    tail = jnp.take_along_axis(inputs, index, axis=1)
    return jnp.where(i < length[:, None], tail, -1).astype(jnp.int32), length.astype(jnp.int32)


def extend_draft(draft, drafted, tail, tail_len, cap):
    """(draft with the tail's continuation appended [B, W], new length [B]) for drafts [B, W] of ``drafted``
    tokens, never longer than ``cap`` [B] or W; rows with no qualifying match are returned unchanged.

    A suffix starting at draft index i matches the tail at index j when draft[i + l] == tail[j + l] for every l
    up to the draft's end; the new draft is draft[:i] + tail[j:], i.e. the draft followed by tail[j + k - i:]."""
    batch, width = draft.shape
    tail_width = tail.shape[1]
    p = jnp.arange(width)
    offsets = jnp.arange(-(width - 1), tail_width)  # d = j - i
    q = p[None, :] + offsets[:, None]  # [D, W]: tail index aligned with draft index p
    in_tail = (q >= 0) & (q < tail_len[:, None, None])
    same = in_tail & (draft[:, None, :] == tail[:, jnp.clip(q, 0, tail_width - 1)])
    beyond_draft = p[None, None, :] >= drafted[:, None, None]
    # match[b, d, i]: every draft position from i to the draft's end equals the tail at offset d.
    ok = (same | beyond_draft).astype(jnp.int32)
    match = jnp.flip(jnp.cumprod(jnp.flip(ok, axis=2), axis=2), axis=2).astype(bool)
    i = p[None, None, :]
    j = i + offsets[None, :, None]
    valid = match & (i <= drafted[:, None, None] - 2) & (j >= 0)
    # The longest suffix (smallest i), then its leftmost occurrence (smallest j): one score per (d, i). Only that
    # match counts; if nothing follows it in the tail, the draft stays as it is (no fallback to another match).
    score = jnp.where(valid, i * (2 * width + tail_width) + j, jnp.iinfo(jnp.int32).max)
    best = jnp.argmin(score.reshape(batch, -1), axis=1)
    found = jnp.min(score.reshape(batch, -1), axis=1) < jnp.iinfo(jnp.int32).max
    best_d = offsets[best // width]
    # draft[:i] + tail[j:] has i + m - j = m - d tokens; its continuation starts at tail[j + k - i] = tail[d + k].
    source_start = best_d + drafted
    grown = jnp.where(found, jnp.minimum(tail_len - best_d, jnp.minimum(cap, width)), drafted)
    grown = jnp.maximum(grown, drafted)
    extra = p[None, :] - drafted[:, None]  # draft index -> index into the continuation
    source = jnp.clip(source_start[:, None] + extra, 0, tail_width - 1)
    appended = jnp.take_along_axis(tail, source, axis=1)
    take = (extra >= 0) & (p[None, :] < grown[:, None])
    return jnp.where(take, appended, draft), grown.astype(jnp.int32)
