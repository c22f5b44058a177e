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


@dataclasses.dataclass
class Totals:
    tokens: int = 0
    seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    drafter_forwards: int = 0
    max_accepted: int = 0
    lossless: bool = True
    trajectory: list = dataclasses.field(default_factory=list)

    def add(self, result, reference_tokens):
        s = result.stats
        self.tokens += len(result.tokens)
        self.seconds += s.wall_time_s
        self.drafted += int(s.drafted.sum())
        self.accepted += int(s.accepted.sum())
        self.rounds += s.rounds
        self.drafter_forwards += s.drafter_forwards
        self.max_accepted = max(self.max_accepted, int(s.accepted.max(initial=0)))
        self.lossless &= bool(np.array_equal(result.tokens, reference_tokens))
        self.trajectory.extend(int(a) for a in s.accepted)


def load_prompts(path, verifier) -> list[np.ndarray]:
    if path is None:
        rng = np.random.default_rng(0)
        return [rng.integers(3, min(verifier.config.vocab_size, 30_000), n) for n in (24, 40, 57)]
    lines = [line.rstrip("\n") for line in open(path) if line.strip()]
    if all(token.isdigit() for line in lines for token in line.split()):
        return [np.array([int(t) for t in line.split()]) for line in lines]
    tokenizer = verifier.tokenizer()
    return [np.asarray(tokenizer.apply_chat_template([{"role": "user", "content": line}],
                                                     add_generation_prompt=True, tokenize=True)) for line in lines]


def run(verifier, drafter, ar_drafter, prompts, max_new_tokens, fixed_lengths, eos_id):
    """{method name: Totals}; every method is warmed up on the first prompt before timing."""
    configs = {"FailFast": (drafter, ffjax.FailFastConfig())}
    for length in fixed_lengths:
        configs[f"dLLM fixed k={length} (thr 0.9)"] = (drafter, ffjax.FailFastConfig(
            dynamic=False, init_spec_len=length, drafter_threshold=0.9))
    if ar_drafter is not None:
        configs["AR drafter fixed k=5"] = (ar_drafter, ffjax.FailFastConfig(dynamic=False, init_spec_len=5))
        configs["AR drafter dynamic"] = (ar_drafter, ffjax.FailFastConfig())

    vanilla = Totals()
    references = []
    ffjax.generate(verifier, prompts[0], max_new_tokens, eos_id=eos_id)
    for prompt in prompts:
        out = ffjax.generate(verifier, prompt, max_new_tokens, eos_id=eos_id)
        references.append(out.tokens)
        vanilla.tokens += len(out.tokens)
        vanilla.seconds += out.stats.total_s
    totals = {"vanilla": vanilla}
    for name, (draft_model, config) in configs.items():
        ffjax.speculate(verifier, draft_model, prompts[0], max_new_tokens, config=config, eos_id=eos_id)
        totals[name] = Totals()
        for prompt, reference in zip(prompts, references):
            totals[name].add(ffjax.speculate(verifier, draft_model, prompt, max_new_tokens, config=config,
                                             eos_id=eos_id), reference)
    best_fixed = max((n for n in totals if n.startswith("dLLM fixed")), key=lambda n: totals[n].tokens /
                     totals[n].seconds, default=None)
    return totals, best_fixed


def report(totals, best_fixed, out_dir) -> str:
    base = totals["vanilla"].tokens / totals["vanilla"].seconds
    rows = ["| method | tokens/s | speedup | acceptance | mean / max accepted per round | drafter fwd / round "
            "| identical to vanilla |", "|---|---|---|---|---|---|---|"]
    for name, t in totals.items():
        rate = t.tokens / t.seconds
        mark = " (best fixed)" if name == best_fixed else ""
        if name == "vanilla":
            rows.append(f"| vanilla | {rate:.1f} | 1.00x | - | - | - | - |")
            continue
        rows.append(f"| {name}{mark} | {rate:.1f} | {rate / base:.2f}x | {t.accepted / max(t.drafted, 1):.2f} | "
                    f"{t.accepted / max(t.rounds, 1):.2f} / {t.max_accepted} | "
                    f"{t.drafter_forwards / max(t.rounds, 1):.2f} | {t.lossless} |")
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
    totals, best_fixed = run(verifier, drafter, ar_drafter, prompts, args.max_new_tokens, args.fixed_lengths,
                             args.eos_id)
    print(report(totals, best_fixed, args.out))
    return 0 if all(t.lossless for t in totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
