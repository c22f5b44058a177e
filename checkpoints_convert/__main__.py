"""``python -m checkpoints_convert SRC OUT [--dtype bfloat16|float32]``"""

import argparse
import sys

from checkpoints_convert.convert import DTYPES, convert
from ffjax.checkpoint import CheckpointError
from ffjax.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checkpoints_convert", description=(
        "Convert an HF model directory (config.json + *.safetensors) or a .gguf file into an ffjax checkpoint "
        "(orbax params + config.json + tokenizer files)."))
    parser.add_argument("src", help="HF model directory or .gguf file")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    args = parser.parse_args(argv)
    try:
        config = convert(args.src, args.out, args.dtype)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {config.model_type} ({config.num_layers} layers, vocab {config.vocab_size}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
