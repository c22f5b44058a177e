"""``python -m ffjax demo``: FailFast on the demo pair, streamed, with vanilla decoding measured beside it.

Fetches the pair on first use (``fetch_demo_pair``: Qwen2.5-Coder-1.5B-Instruct verifier, the 0.5B adapted into a
block-diffusion drafter), streams the answer as each round is accepted, then decodes the same prompt plainly and
reports tokens/s of both (run time; compilation is timed apart), the speedup and the acceptance.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from ffjax.chat import chat_ids

DEFAULT_PROMPT = ("Write a Python function `merge_intervals(intervals)` that merges overlapping closed intervals "
                  "given as (start, end) tuples and returns them sorted. Add a docstring and two doctest examples.")
DEFAULT_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ffjax", "demo-pair")


@dataclasses.dataclass(frozen=True)
class DemoReport:
    failfast_tokens_per_s: float
    vanilla_tokens_per_s: float
    mean_accepted_per_round: float
    drafter_forwards_per_round: float
    rounds: int
    new_tokens: int
    identical: bool

    @property
    def speedup(self) -> float:
        return self.failfast_tokens_per_s / self.vanilla_tokens_per_s

    def lines(self) -> list[str]:
        return [f"FailFast: {self.failfast_tokens_per_s:.1f} tokens/s ({self.new_tokens} tokens, {self.rounds} rounds), "
                f"vanilla greedy: {self.vanilla_tokens_per_s:.1f} tokens/s -> speedup {self.speedup:.2f}x",
                f"mean accepted draft tokens per round: {self.mean_accepted_per_round:.2f}; drafter forwards per "
                f"round: {self.drafter_forwards_per_round:.2f}; identical to vanilla greedy: {self.identical}"]


class TextStream:
    """Prints the decoded text as token chunks arrive (decoding the whole answer each time keeps multi-token
    characters intact)."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out, self.ids, self.printed = tokenizer, out, [], ""

    def __call__(self, tokens: np.ndarray) -> None:
        self.ids.extend(int(t) for t in tokens)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text


def run_demo(verifier, drafter, prompt: str, max_new_tokens: int, out=None) -> DemoReport:
    """Streams FailFast's answer to ``prompt`` to ``out`` (default stdout), then measures vanilla greedy decoding."""
    import ffjax

    out = out or sys.stdout
    tokenizer = verifier.tokenizer()
    ids = chat_ids(tokenizer, prompt)
    eos_id = verifier.config.eos_token_ids[0] if verifier.config.eos_token_ids else None
    out.write(f">>> {prompt}\n(compiling on first use...)\n")
    out.flush()
    result = ffjax.speculate(verifier, drafter, ids, max_new_tokens, eos_id=eos_id, stream=TextStream(tokenizer, out))
    out.write("\n\n(vanilla greedy decoding of the same prompt, for the comparison...)\n")
    out.flush()
    vanilla = ffjax.generate(verifier, ids, max_new_tokens, eos_id=eos_id)
    stats = result.stats
    return DemoReport(failfast_tokens_per_s=stats.tokens_per_s, vanilla_tokens_per_s=vanilla.stats.tokens_per_s,
                      mean_accepted_per_round=stats.mean_accepted,
                      drafter_forwards_per_round=stats.drafter_forwards / max(stats.rounds, 1), rounds=stats.rounds,
                      new_tokens=stats.new_tokens, identical=bool(np.array_equal(result.tokens, vanilla.tokens)))


def main(args) -> int:
    import ffjax
    from ffjax.demo_pair import fetch_demo_pair

    if args.verifier and args.drafter:
        verifier_dir, drafter_dir = args.verifier, args.drafter
    else:
        paths = fetch_demo_pair(args.dir, offline_from=args.offline_from)
        verifier_dir, drafter_dir = paths.verifier, paths.drafter
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    print(f"devices: {jax.devices()}; verifier {verifier_dir}, drafter {drafter_dir} ({dtype})")
    verifier, drafter = ffjax.load(verifier_dir, dtype=dtype), ffjax.load(drafter_dir, dtype=dtype)
    report = run_demo(verifier, drafter, args.prompt, args.max_new_tokens)
    print("\n" + "\n".join(report.lines()))
    return 0
