"""Static-shape policy: every length that reaches a compiled program is rounded to a bucket here, so nearby
prompt lengths and budgets share one executable."""

from __future__ import annotations

MIN_PROMPT_BUCKET = 16
MIN_NEW_TOKENS_BUCKET = 64
CACHE_ALIGN = 128


def next_power_of_two(n: int, minimum: int = 1) -> int:
    n = max(int(n), minimum)
    return 1 << (n - 1).bit_length()


def prompt_bucket(prompt_len: int, requested: int | None = None) -> int:
    """Padded prompt length: powers of two from 16, or ``requested`` (one length for a whole prompt set, so it
    shares one compiled program)."""
    if requested is None:
        return next_power_of_two(prompt_len, MIN_PROMPT_BUCKET)
    if not isinstance(requested, int) or isinstance(requested, bool) or requested < prompt_len:
        raise ValueError(f"prompt_bucket must be an integer >= the prompt's {prompt_len} tokens, got {requested!r}")
    return requested


def new_tokens_bucket(max_new_tokens: int) -> int:
    """Capacity of the output buffer: powers of two from 64."""
    return next_power_of_two(max_new_tokens, MIN_NEW_TOKENS_BUCKET)


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def cache_length(padded_prompt_len: int, max_new_tokens: int, extra: int = 0) -> int:
    """KV cache slots for a padded prompt, the output budget and ``extra`` lookahead slots (drafts)."""
    return round_up(padded_prompt_len + new_tokens_bucket(max_new_tokens) + extra, CACHE_ALIGN)
