"""transformers `generate` (eager, bf16, greedy) at the same shapes: the baseline beside ffjax's numbers.

    python benchmarks/hf_generate_bench.py --shapes qwen2.5-7b qwen2.5-1.5b [--context 1024] [--new 128]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import transformers

sys.path.insert(0, ".")
from benchmarks import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-7b", "qwen2.5-1.5b"])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--new", type=int, default=128)
    args = parser.parse_args()
    results = {}
    for name in args.shapes:
        s = common.SHAPES[name]
        config = transformers.Qwen2Config(
            vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
            num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
            num_key_value_heads=s["num_kv_heads"], tie_word_embeddings=s["tie_word_embeddings"],
            max_position_embeddings=32768)
        with torch.device("cuda"):
            model = transformers.Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
        prompt = torch.randint(0, s["vocab_size"], (1, args.context), device="cuda")
        kwargs = dict(attention_mask=torch.ones_like(prompt), do_sample=False, eos_token_id=None, pad_token_id=0)
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kwargs)  # warm-up
            timings = {}
            for n in (1, args.new):
                torch.cuda.synchronize()
                start = time.perf_counter()
                model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)
                torch.cuda.synchronize()
                timings[n] = time.perf_counter() - start
        ms_per_token = 1e3 * (timings[args.new] - timings[1]) / (args.new - 1)
        results[name] = {"hf_generate_ms_per_token": ms_per_token, "hf_prefill_s": timings[1]}
        print(f"| {name} | transformers {transformers.__version__} eager generate | {ms_per_token:.2f} ms/token |",
              flush=True)
        del model
        torch.cuda.empty_cache()
    common.write_results("hf_generate_bench.json", results)


if __name__ == "__main__":
    main()
