"""FailFast's draft-length rule, shared by the diffusion and the autoregressive drafter."""

from __future__ import annotations

import jax.numpy as jnp

from ffjax.failfast_config import FailFastConfig


def initial_window(ff: FailFastConfig, cap):
    """[B] first window: ``init_spec_len`` tokens, never more than ``cap`` (what is still worth drafting)."""
    return jnp.minimum(ff.init_spec_len, cap)


def failed_fast(confidence, recorded, tau):
    """[B] whether a token drafted this round (where recorded) had confidence below tau."""
    # NaN confidence counts as unsure: a broken drafter must fail fast, not draft at full length forever.
    return jnp.any(recorded & ~(confidence >= tau), axis=1)


def decide(ff: FailFastConfig, known, confidence, recorded, window, cap, tau):
    """After a drafter call: (stop [B], window [B]).

    known [B]: drafted tokens available contiguously from the start of the draft; confidence [B, D]: the
    confidence each drafted token was unmasked with, where recorded [B, D] (every token unmasked so far this
    round, past the window too); window [B]: the current window; cap [B]: the longest draft allowed this round
    (``max_spec_len``, less near the end of the budget, 0 when only the verifier's own token is still needed).
    Growing may make a window full at once (tokens past the old window can be unmasked in the same step), so
    the rule is applied as many times as the window can grow, without another forward pass.
    """
    unsure = failed_fast(confidence, recorded, tau)
    stop = jnp.zeros(window.shape, bool)
    growths = -(-(ff.max_spec_len - ff.init_spec_len) // ff.incr_len) if ff.dynamic else 0
    for _ in range(growths + 1):
        full = ~stop & (known >= window)
        if not ff.dynamic:
            stop = stop | full
            continue
        stop_now = full & (unsure | (window >= cap))
        window = jnp.where(full & ~stop_now, jnp.minimum(window + ff.incr_len, cap), window)
        stop = stop | stop_now
    return stop, window
