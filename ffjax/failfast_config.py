"""``FailFastConfig``: the drafting strategy, validated when it is built."""

from __future__ import annotations

import dataclasses

from ffjax.inputs import check_unit_interval, is_integer


@dataclasses.dataclass(frozen=True)
class FailFastConfig:
    """FailFast's knobs (defaults from the paper).

    Draft-length rule (ffjax's exact rule): the window starts at ``init_spec_len`` tokens. Whenever every position
    of the window is unmasked: stop if any token unmasked so far this round had confidence < ``tau`` when it was
    unmasked — tokens past the window that a sub-block step unmasked too count, as in the reference (fail fast);
    else stop if the window has reached ``max_spec_len``; else grow it by ``incr_len``, never past
    ``max_spec_len`` (win big). The draft is the window. A draft therefore never exceeds ``max_spec_len`` tokens. (The reference prototype
    compares its cap with the number of recorded confidences, which counts more than the draft, so its drafts
    reach ~70 with a cap of 60; set ``max_spec_len=70`` for drafts of that reach.)
    ``dynamic=False`` is the fixed-length baseline: exactly ``init_spec_len`` drafted tokens per round.
    ``reuse_rejected`` (off by default, the paper's appendix E): a draft that stops for low confidence is extended
    with the previous round's rejected tail where they overlap, at no forward pass (rule in ``reuse_rejected.py``).
    ``tau`` and ``drafter_threshold`` are traced: changing them never recompiles.
    """

    tau: float = 0.45
    drafter_threshold: float = 0.05
    init_spec_len: int = 10
    incr_len: int = 10
    max_spec_len: int = 60
    small_block_size: int = 8
    buckets: tuple[int, ...] = (16, 32, 64, 96)
    dynamic: bool = True
    reuse_rejected: bool = False

    def __post_init__(self):
        for name in ("tau", "drafter_threshold"):
            object.__setattr__(self, name, check_unit_interval(name, getattr(self, name)))
        for name in ("init_spec_len", "incr_len", "max_spec_len", "small_block_size"):
            value = getattr(self, name)
            if not is_integer(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.init_spec_len > self.max_spec_len:
            raise ValueError(f"init_spec_len ({self.init_spec_len}) exceeds max_spec_len ({self.max_spec_len})")
        buckets = tuple(self.buckets)
        if not buckets or any(not isinstance(b, int) or b <= 0 for b in buckets) or list(buckets) != sorted(
                set(buckets)):
            raise ValueError(f"buckets must be strictly increasing positive integers, got {self.buckets!r}")
        # A verification pass holds the last accepted token plus the draft.
        if buckets[-1] < self.longest_draft + 1:
            raise ValueError(f"the largest bucket ({buckets[-1]}) must hold the longest draft plus one token "
                             f"({self.longest_draft + 1})")
        if self.reuse_rejected and not self.dynamic:
            raise ValueError("reuse_rejected lengthens drafts that stop for low confidence: it needs dynamic=True")
        object.__setattr__(self, "buckets", buckets)

    @property
    def longest_draft(self) -> int:
        return self.max_spec_len if self.dynamic else self.init_spec_len

    def static_key(self) -> tuple:
        """Everything that shapes the compiled program (tau and drafter_threshold are runtime values)."""
        return (self.init_spec_len, self.incr_len, self.max_spec_len, self.small_block_size, self.buckets,
                self.dynamic, self.reuse_rejected)
