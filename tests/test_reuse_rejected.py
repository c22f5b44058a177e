"""The appendix-E rule: a draft that failed fast is extended from the previous round's rejected tail."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ffjax.reuse_rejected import extend_draft, rejected_tail

WIDTH = 12


def padded(tokens):
    row = np.full((1, WIDTH), -1, np.int32)
    row[0, :len(tokens)] = tokens
    return jnp.asarray(row)


def extended(draft, tail, cap=WIDTH - 1):
    out, length = extend_draft(padded(draft), jnp.asarray([len(draft)]), padded(tail), jnp.asarray([len(tail)]),
                               jnp.asarray([cap]))
    return np.asarray(out)[0, :int(length[0])].tolist()


@pytest.mark.parametrize("draft, tail, expected", [
    ([5, 6, 7, 8], [9, 7, 8, 1, 2, 3], [5, 6, 7, 8, 1, 2, 3]),  # suffix 7 8 found: its continuation is appended
    ([5, 6, 7, 8], [6, 7, 8, 4, 7, 8, 1], [5, 6, 7, 8, 4, 7, 8, 1]),  # the longest suffix (6 7 8) wins
    ([7, 8], [7, 8, 3, 7, 8, 4], [7, 8, 3, 7, 8, 4]),  # the leftmost occurrence wins
    ([5, 6, 7, 8], [9, 8, 1, 2], [5, 6, 7, 8]),  # a one-token overlap is not enough
    ([5, 6, 7, 8], [1, 7, 8], [5, 6, 7, 8]),  # nothing after the match: unchanged
    ([5, 6, 7, 8], [7, 9, 8, 1], [5, 6, 7, 8]),  # the overlap must be contiguous
    ([5, 6, 7, 8], [], [5, 6, 7, 8]),  # no tail (the last round was accepted in full)
    ([5, 6, 7, 8], [7, 8, 1, 6, 7, 8], [5, 6, 7, 8]),  # the winning match (6 7 8) has nothing after it: no fallback
    ([8], [8, 1, 2], [8]),  # a one-token draft has no two-token suffix
])
def test_the_longest_overlapping_suffix_brings_in_the_tails_continuation(draft, tail, expected):
    assert extended(draft, tail) == expected


def test_the_extended_draft_never_passes_the_rounds_cap_or_its_array():
    assert extended([5, 6, 7, 8], [7, 8, 1, 2, 3], cap=6) == [5, 6, 7, 8, 1, 2]
    assert extended([5, 6, 7, 8], [7, 8, 1, 2, 3], cap=3) == [5, 6, 7, 8]  # never shortened either
    assert len(extended([5, 6, 7, 8], [7, 8] + list(range(10, 19)), cap=100)) == WIDTH


def rule(draft, tail, cap):
    """The rule as plain Python: the first match in (longest suffix, leftmost occurrence) order decides."""
    k = len(draft)
    for i in range(k - 1):  # suffixes of at least two tokens, longest first
        for j in range(len(tail) - (k - i) + 1):
            if tail[j:j + k - i] == draft[i:]:
                grown = draft[:i] + tail[j:]
                return grown[:max(k, min(cap, WIDTH))] if len(grown) > k else draft
    return draft


@settings(max_examples=60, deadline=None)
@given(draft=st.lists(st.integers(0, 2), max_size=WIDTH), tail=st.lists(st.integers(0, 2), max_size=WIDTH),
       cap=st.integers(0, WIDTH + 4))
def test_extend_draft_follows_the_rule_as_stated(draft, tail, cap):
    assert extended(draft, tail, cap) == rule(draft, tail, cap)


def test_rows_are_extended_independently():
    drafts = jnp.concatenate([padded([5, 6, 7, 8]), padded([1, 2, 3])])
    tails = jnp.concatenate([padded([7, 8, 9]), padded([4, 4])])
    out, length = extend_draft(drafts, jnp.asarray([4, 3]), tails, jnp.asarray([3, 2]), jnp.asarray([20, 20]))
    assert length.tolist() == [5, 3]
    assert np.asarray(out)[0, :5].tolist() == [5, 6, 7, 8, 9] and np.asarray(out)[1, :3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("accepted, expected", [(0, [12, 13, 14, 15]), (2, [14, 15]), (4, []), (5, [])])
def test_the_tail_is_the_draft_after_its_first_rejected_token(accepted, expected):
    inputs = jnp.asarray([[100, 11, 12, 13, 14, 15, -1, -1]])  # the last accepted token, then d_1..d_5
    tail, length = rejected_tail(inputs, jnp.asarray([accepted]), jnp.asarray([5]), WIDTH)
    assert int(length[0]) == len(expected)
    assert np.asarray(tail)[0, :len(expected)].tolist() == expected
    assert np.all(np.asarray(tail)[0, len(expected):] == -1)
