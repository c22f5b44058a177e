"""FailFast against its baselines on a prompt set: a table, and the accepted length of every round.

    python examples/failfast_compare.py --verifier DIR --drafter DIR [--ar-drafter DIR] [--prompts FILE]
        [--max-new-tokens 256] [--out DIR]
    python examples/failfast_compare.py --tiny            # a tiny local pair (mechanics only, no speedup)

Baselines: vanilla greedy decoding; the block-diffusion drafter at threshold 0.9 with a fixed draft length (the
best of --fixed-lengths); the AR drafter with a fixed length and with FailFast's dynamic rule. Every run is
checked token for token against vanilla. --prompts holds one prompt per line (text, tokenized with the
verifier's tokenizer and chat template) or whitespace-separated token ids. Writes rounds.csv (accepted length
per round) and, when matplotlib is installed, accepted_per_round.png (the paper's trajectory figure) to --out.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ffjax  # noqa: E402
from examples import tiny_checkpoints  # noqa: E402
from ffjax.chat import chat_ids  # noqa: E402


REUSE = "FailFast + reuse rejected"


@dataclasses.dataclass
class Totals:
    tokens: int = 0
    seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    drafter_forwards: int = 0
    max_accepted: int = 0
    reused: int = 0  # drafted tokens taken from rejected tails (reuse_rejected)
    reused_accepted: int = 0  # ... of which the verifier accepted
    prompts: int = 0
    identical_prompts: int = 0  # outputs equal to vanilla's, token for token
    trajectory: list = dataclasses.field(default_factory=list)  # accepted draft tokens, every round in order

    @property
    def lossless(self) -> bool:
        return self.identical_prompts == self.prompts

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def add(self, result, reference_tokens):
        s = result.stats
        self.tokens += len(result.tokens)
        self.seconds += s.wall_time_s
        self.drafted += int(s.drafted.sum())
        self.accepted += int(s.accepted.sum())
        self.rounds += s.rounds
        self.drafter_forwards += s.drafter_forwards
        self.max_accepted = max(self.max_accepted, int(s.accepted.max(initial=0)))
        self.reused += int(s.reused.sum())
        self.reused_accepted += int(np.maximum(s.accepted - (s.drafted - s.reused), 0).sum())
        self.prompts += 1
        self.identical_prompts += int(np.array_equal(result.tokens, reference_tokens))
        self.trajectory.extend(int(a) for a in s.accepted)

    def summary(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s,
                "rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
                "acceptance_rate": self.accepted / max(self.drafted, 1),
                "mean_accepted_per_round": self.accepted / max(self.rounds, 1), "max_accepted": self.max_accepted,
                "drafter_forwards_per_round": self.drafter_forwards / max(self.rounds, 1),
                "drafter_forwards_per_accepted_token": self.drafter_forwards / max(self.accepted, 1),
                "accepted_histogram": np.bincount(self.trajectory).tolist() if self.trajectory else [],
                "reused": self.reused, "reused_accepted": self.reused_accepted,
                "prompts": self.prompts, "identical_prompts": self.identical_prompts}


def load_prompts(path, verifier) -> list[np.ndarray]:
    if path is None:
        rng = np.random.default_rng(0)
        return [rng.integers(3, min(verifier.config.vocab_size, 30_000), n) for n in (24, 40, 57)]
    lines = [line.rstrip("\n") for line in open(path) if line.strip()]
    if all(token.isdigit() for line in lines for token in line.split()):
        return [np.array([int(t) for t in line.split()]) for line in lines]
    tokenizer = verifier.tokenizer()
    return [chat_ids(tokenizer, line) for line in lines]


def baseline_methods(drafter, ar_drafter, fixed_lengths, ar_fixed_lengths=(5,), reuse_rejected=False) -> dict:
    """{name: (drafter model, FailFastConfig)}: FailFast (and, if asked, FailFast reusing rejected drafts), the
    dLLM drafter at threshold 0.9 with each fixed draft length, and (given an AR drafter) the AR drafter with each
    fixed length and with the dynamic rule."""
    methods = {"FailFast": (drafter, ffjax.FailFastConfig())}
    if reuse_rejected:
        methods[REUSE] = (drafter, ffjax.FailFastConfig(reuse_rejected=True))
    for length in fixed_lengths:
        methods[f"dLLM fixed k={length} (thr 0.9)"] = (drafter, ffjax.FailFastConfig(
            dynamic=False, init_spec_len=length, drafter_threshold=0.9))
    if ar_drafter is not None:
        for length in ar_fixed_lengths:
            methods[f"AR drafter fixed k={length}"] = (ar_drafter, ffjax.FailFastConfig(dynamic=False,
                                                                                        init_spec_len=length))
        methods["AR drafter dynamic"] = (ar_drafter, ffjax.FailFastConfig())
    return methods


def run(verifier, methods, prompts, max_new_tokens, eos_id, *, prompt_bucket=None, log=None):
    """{"vanilla" and each method's name: Totals}, plus vanilla's outputs; every method is warmed up (compiled) on
    the first prompt before timing, so the totals are run time only."""
    vanilla, references = Totals(), []
    ffjax.generate(verifier, prompts[0], max_new_tokens, eos_id=eos_id, prompt_bucket=prompt_bucket)
    for prompt in prompts:
        out = ffjax.generate(verifier, prompt, max_new_tokens, eos_id=eos_id, prompt_bucket=prompt_bucket)
        references.append(out.tokens)
        vanilla.tokens += len(out.tokens)
        vanilla.seconds += out.stats.total_s
    vanilla.prompts = vanilla.identical_prompts = len(prompts)
    totals = {"vanilla": vanilla}
    if log:
        log(f"vanilla: {vanilla.tokens_per_s:.1f} tokens/s")
    for name, (draft_model, config) in methods.items():
        ffjax.speculate(verifier, draft_model, prompts[0], max_new_tokens, config=config, eos_id=eos_id,
                        prompt_bucket=prompt_bucket)
        totals[name] = Totals()
        for prompt, reference in zip(prompts, references):
            totals[name].add(ffjax.speculate(verifier, draft_model, prompt, max_new_tokens, config=config,
                                             eos_id=eos_id, prompt_bucket=prompt_bucket), reference)
        if log:
            s = totals[name].summary()
            log(f"{name}: {s['tokens_per_s']:.1f} tokens/s, {s['mean_accepted_per_round']:.2f} accepted/round, "
                f"{s['identical_prompts']}/{s['prompts']} identical")
    return totals, references


def best_of(totals, prefix):
    """The fastest method whose name starts with ``prefix``."""
    return max((n for n in totals if n.startswith(prefix)), key=lambda n: totals[n].tokens_per_s, default=None)


def report(totals, best_fixed, out_dir) -> str:
    """A markdown table; rounds.csv and (with matplotlib) the accepted-per-round figure in ``out_dir``."""
    base = totals["vanilla"].tokens_per_s
    rows = ["| method | tokens/s | speedup | acceptance | mean / max accepted per round | drafter fwd / round "
            "| identical to vanilla |", "|---|---|---|---|---|---|---|"]
    for name, t in totals.items():
        s = t.summary()
        mark = " (best fixed)" if name == best_fixed else ""
        if name == "vanilla":
            rows.append(f"| vanilla | {s['tokens_per_s']:.1f} | 1.00x | - | - | - | - |")
            continue
        rows.append(f"| {name}{mark} | {s['tokens_per_s']:.1f} | {s['tokens_per_s'] / base:.2f}x | "
                    f"{s['acceptance_rate']:.2f} | {s['mean_accepted_per_round']:.2f} / {s['max_accepted']} | "
                    f"{s['drafter_forwards_per_round']:.2f} | {s['identical_prompts']}/{s['prompts']} |")
    rows += [f"\n{name}: {t.reused} drafted tokens came from rejected tails, {t.reused_accepted} of them accepted"
             for name, t in totals.items() if name == REUSE]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "rounds.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "round", "accepted"])
        for name, t in totals.items():
            writer.writerows([name, i, a] for i, a in enumerate(t.trajectory))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        rows.append("\n(matplotlib not installed: per-round accepted lengths are in rounds.csv)")
    else:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for name in ("FailFast", best_fixed):
            if name in totals:
                ax.plot(totals[name].trajectory, label=name, lw=1)
        ax.set_xlabel("verification round")
        ax.set_ylabel("accepted draft tokens")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "accepted_per_round.png"), dpi=120)
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier")
    parser.add_argument("--drafter")
    parser.add_argument("--ar-drafter")
    parser.add_argument("--prompts")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--fixed-lengths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--eos-id", type=int)
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny local pair")
    parser.add_argument("--reuse-rejected", action="store_true", help="also run FailFast with reuse_rejected")
    parser.add_argument("--out", default="failfast_compare_out")
    args = parser.parse_args(argv)
    if args.tiny:
        from checkpoints_convert import convert
        work = tempfile.mkdtemp(prefix="ffjax-compare-")
        hf_verifier, hf_drafter = tiny_checkpoints.write_pair(work)
        convert(hf_verifier, os.path.join(work, "verifier"), "float32", progress=False)
        convert(hf_drafter, os.path.join(work, "drafter"), "float32", progress=False)
        args.verifier, args.drafter = os.path.join(work, "verifier"), os.path.join(work, "drafter")
        args.ar_drafter = args.ar_drafter or args.verifier
    if not (args.verifier and args.drafter):
        parser.error("--verifier and --drafter are required (or --tiny)")
    verifier, drafter = ffjax.load(args.verifier), ffjax.load(args.drafter)
    ar_drafter = ffjax.load(args.ar_drafter) if args.ar_drafter else None
    prompts = load_prompts(args.prompts, verifier)
    methods = baseline_methods(drafter, ar_drafter, args.fixed_lengths, reuse_rejected=args.reuse_rejected)
    totals, _ = run(verifier, methods, prompts, args.max_new_tokens, args.eos_id)
    print(report(totals, best_of(totals, "dLLM fixed"), args.out))
    return 0 if all(t.lossless for t in totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
