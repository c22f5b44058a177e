"""ffjax end to end on a tiny local model pair: convert HF checkpoints, decode plainly, decode with FailFast.

    python examples/quickstart.py [--workdir DIR] [--max-new-tokens N]

Writes a tiny random Qwen2 verifier and a Fast-dLLM v2 drafter sharing its weights (HF safetensors format),
converts both with `python -m checkpoints_convert`, then runs `ffjax.generate` and `ffjax.speculate` and checks
that FailFast produced exactly the verifier's greedy tokens. (Issue 6 replaces this pair with real
Qwen2.5-Coder models.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ffjax  # noqa: E402
from examples import tiny_checkpoints  # noqa: E402


def convert(src: str, out: str) -> None:
    if not os.path.exists(os.path.join(out, "config.json")):
        subprocess.run([sys.executable, "-m", "checkpoints_convert", src, out, "--dtype", "float32"], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ffjax-quickstart"))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)

    hf_verifier, hf_drafter = tiny_checkpoints.write_pair(args.workdir)
    convert(hf_verifier, os.path.join(args.workdir, "verifier"))
    convert(hf_drafter, os.path.join(args.workdir, "drafter"))
    verifier = ffjax.load(os.path.join(args.workdir, "verifier"))
    drafter = ffjax.load(os.path.join(args.workdir, "drafter"))

    prompt = np.random.default_rng(1).integers(3, tiny_checkpoints.VOCAB - 1, 40)
    for _ in range(2):  # the first call of each compiles; report the second
        vanilla = ffjax.generate(verifier, prompt, args.max_new_tokens)
        failfast = ffjax.speculate(verifier, drafter, prompt, args.max_new_tokens)
    identical = np.array_equal(vanilla.tokens, failfast.tokens)
    s = failfast.stats
    print(f"generated {len(failfast.tokens)} tokens: {failfast.tokens[:16].tolist()} ...")
    print(f"vanilla   {vanilla.stats.tokens_per_s:9.1f} tokens/s")
    print(f"FailFast  {s.tokens_per_s:9.1f} tokens/s ({s.tokens_per_s / vanilla.stats.tokens_per_s:.2f}x), "
          f"{s.rounds} rounds, mean accepted {s.mean_accepted:.1f}, max {s.accepted.max()}, "
          f"drafter forwards/round {s.drafter_forwards / s.rounds:.1f}")
    print(f"identical to greedy decoding: {identical}")
    print("(a tiny random pair shows the mechanics, not speed: its drafter is not trained to agree with the "
          "verifier; see BENCHMARKS.md for measured numbers)")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
