"""FailFast on real checkpoints: Qwen2.5-7B-Instruct verifies, Fast-dLLM v2 1.5B drafts. Made for a TPU VM;
runs wherever JAX does (GPU, CPU).

Download the two HF snapshots yourself; this script never contacts a model hub and never runs checkpoint code
(config.json, *.safetensors and tokenizer files are all it reads):

    hf download Qwen/Qwen2.5-7B-Instruct --local-dir hf/qwen2.5-7b-instruct \\
        --include "*.json" --include "*.safetensors" --include merges.txt
    hf download Efficient-Large-Model/Fast_dLLM_v2_1.5B --local-dir hf/fast-dllm-v2-1.5b \\
        --include "*.json" --include "*.safetensors" --include merges.txt
    python examples/tpu_vm_failfast.py --verifier-hf hf/qwen2.5-7b-instruct --drafter-hf hf/fast-dllm-v2-1.5b \\
        --work ckpt/real-pair --compare-vanilla

The first run converts both into ffjax checkpoints under WORK/verifier and WORK/drafter (bfloat16: about 18 GB of
disk, and as much again for the 7B's staging files while it converts); later runs reuse them, in the dtype they
were converted in (``--dtype`` then only casts on load). Both models are loaded onto one device: in bfloat16 they
need about 19 GB of its memory plus KV caches (TPU v4, v5p, v6e, A100, H100; not a 16 GB v5e chip).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ffjax  # noqa: E402
from checkpoints_convert import convert  # noqa: E402
from checkpoints_convert.hf_safetensors import TOKENIZER_FILES  # noqa: E402
from ffjax.chat import chat_ids  # noqa: E402
from ffjax.checkpoint import PARAMS_DIR  # noqa: E402

DEFAULT_PROMPT = "Write a Python function that returns the n-th Fibonacci number, and explain how it works."


def is_converted(hf_dir: str, out: str) -> bool:
    """True when ``out`` holds a finished conversion of ``hf_dir``. The converter writes the params, then
    config.json, then copies the tokenizer files, so the last of these present means it ran to the end."""
    tokenizer_files = [name for name in TOKENIZER_FILES if os.path.exists(os.path.join(hf_dir, name))]
    return os.path.isdir(os.path.join(out, PARAMS_DIR)) and all(
        os.path.exists(os.path.join(out, name)) for name in ["config.json", *tokenizer_files])


def convert_pair(verifier_hf: str, drafter_hf: str, work: str, dtype: str = "bfloat16") -> tuple[str, str]:
    """Converts both HF snapshots into WORK/verifier and WORK/drafter (skipping finished ones); returns those."""
    outputs = []
    for name, hf_dir in (("verifier", verifier_hf), ("drafter", drafter_hf)):
        out = os.path.join(work, name)
        if is_converted(hf_dir, out):
            print(f"{name}: reusing {out}")
        else:
            config = convert(hf_dir, out, dtype)
            print(f"{name}: converted {config.model_type} ({config.num_layers} layers) to {out}")
        outputs.append(out)
    return outputs[0], outputs[1]


def load_pair(verifier_dir: str, drafter_dir: str, dtype: str = "bfloat16") -> tuple[ffjax.Model, ffjax.Model]:
    return ffjax.load(verifier_dir, dtype=dtype), ffjax.load(drafter_dir, dtype=dtype)


chat_prompt = chat_ids  # ``text`` as one user turn in the verifier's chat template, as ids


@dataclasses.dataclass(frozen=True)
class RunResult:
    speculative: ffjax.SpeculateResult
    vanilla: ffjax.GenerateResult | None  # plain greedy decoding, when asked to compare

    @property
    def identical(self) -> bool | None:
        if self.vanilla is None:
            return None
        return bool(np.array_equal(self.speculative.tokens, self.vanilla.tokens))


def run(verifier: ffjax.Model, drafter: ffjax.Model, prompt_ids, max_new_tokens: int = 256, *,
        eos_id: int | None = None, compare_vanilla: bool = False,
        config: ffjax.FailFastConfig = ffjax.FailFastConfig()) -> RunResult:
    """FailFast on one prompt, and optionally plain greedy decoding of the same prompt as the reference.
    Compilation is timed apart from decoding (see ffjax/executables.py), so no warm-up call is needed."""
    speculative = ffjax.speculate(verifier, drafter, prompt_ids, max_new_tokens, config=config, eos_id=eos_id)
    vanilla = ffjax.generate(verifier, prompt_ids, max_new_tokens, eos_id=eos_id) if compare_vanilla else None
    return RunResult(speculative, vanilla)


def print_report(result: RunResult, tokenizer) -> None:
    s = result.speculative.stats
    print(tokenizer.decode(result.speculative.tokens, skip_special_tokens=True))
    print(f"\nFailFast  {s.new_tokens} tokens, {s.tokens_per_s:.1f} tokens/s (compile {s.compile_s:.1f} s), "
          f"{s.rounds} rounds, mean accepted per round {s.mean_accepted:.2f}, "
          f"drafter forwards {s.drafter_forwards} ({s.drafter_forwards / max(s.rounds, 1):.1f} per round)")
    if result.vanilla is not None:
        v = result.vanilla.stats
        print(f"vanilla   {v.new_tokens} tokens, {v.tokens_per_s:.1f} tokens/s "
              f"-> FailFast speedup {s.tokens_per_s / v.tokens_per_s:.2f}x")
        print(f"identical to greedy decoding: {result.identical}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier-hf", required=True, help="local HF snapshot of the verifier")
    parser.add_argument("--drafter-hf", required=True, help="local HF snapshot of the Fast-dLLM v2 drafter")
    parser.add_argument("--work", required=True, help="converted checkpoints go to WORK/verifier, WORK/drafter")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--compare-vanilla", action="store_true",
                        help="also decode plainly: check the tokens are identical and report the speedup")
    args = parser.parse_args(argv)

    print("devices:", jax.devices())
    verifier, drafter = load_pair(*convert_pair(args.verifier_hf, args.drafter_hf, args.work, args.dtype),
                                  args.dtype)
    tokenizer = verifier.tokenizer()
    result = run(verifier, drafter, chat_prompt(tokenizer, args.prompt), args.max_new_tokens,
                 eos_id=tokenizer.eos_token_id, compare_vanilla=args.compare_vanilla)
    print_report(result, tokenizer)
    if result.identical is False:
        if args.dtype == "float32":
            return 1  # in float32 FailFast's output equals greedy decoding token for token
        print("(bfloat16: a near-tie between two logits can resolve differently in the k-token verification "
              "than in one-token decoding; see ffjax.speculate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
