"""Adapt an autoregressive Qwen2 model into a Fast-dLLM v2 block-diffusion drafter (LoRA, self-distillation).

    python examples/adapt_drafter.py --tiny                      # CPU, tiny random models built on the fly, < 1 min
    python examples/adapt_drafter.py --verifier DIR --base DIR --out DELTA_DIR \\
        [--steps 300 --batch-size 4 --seq-len 512 --lr 2e-4 --rank 16 --num-prompts 256 --max-new-tokens 256]

1. Loads the verifier and the base (ffjax checkpoints, e.g. converted Qwen2.5-Coder 1.5B / 0.5B).
2. Builds prompts from Python standard-library docstrings and source (never HumanEval), chat-formatted, all
   trimmed to one token length so the verifier generates for a whole batch at once.
3. Self-distillation: the verifier answers them greedily (``ffjax.generate``); sequence = prompt + answer,
   the loss covers the answer only.
4. Trains the LoRA delta (ffjax/adaptation) with the Fast-dLLM v2 recipe for --steps steps.
5. Writes the delta (safetensors) + manifest.json (base hash, recipe, data, steps, final loss, acceptance);
   --write-drafter also writes the merged drafter as an ffjax checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import ffjax  # noqa: E402
from ffjax import checkpoint, decoder  # noqa: E402
from ffjax.adaptation import lora, train  # noqa: E402

# Modules whose public functions give the prompts: pure-Python code with real docstrings.
STDLIB_MODULES = ("textwrap", "json", "functools", "itertools", "collections", "heapq", "bisect", "statistics",
                  "string", "shlex", "difflib", "fractions", "csv", "base64", "calendar", "colorsys", "fnmatch",
                  "glob", "html", "ipaddress", "operator", "pathlib", "pprint", "random", "re", "secrets",
                  "tokenize", "urllib.parse", "uuid", "zipfile", "gzip", "copy", "dataclasses", "enum", "typing",
                  "argparse", "configparser", "datetime", "decimal", "email.utils", "graphlib", "hashlib", "hmac",
                  "inspect", "keyword", "linecache", "locale", "logging", "os.path", "posixpath", "queue",
                  "quopri", "sched", "selectors", "shutil", "tempfile", "threading", "timeit", "trace", "types",
                  "warnings", "weakref", "wave", "xml.dom.minidom", "zipapp")
TEMPLATES = (
    "Write a Python function `{name}{signature}` that does the following.\n\n{doc}",
    "Explain step by step what this Python function from the `{module}` module does, then give an example "
    "call and its result.\n\n```python\n{source}\n```",
    "Rewrite this function from the `{module}` module more simply, keeping its behaviour, and explain the "
    "changes.\n\n```python\n{source}\n```",
)


def stdlib_prompts(seed: int) -> list[str]:
    """Every (function, template) prompt from STDLIB_MODULES, shuffled deterministically."""
    prompts = []
    for module_name in STDLIB_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
                continue
            doc = inspect.getdoc(obj)
            try:
                source, signature = inspect.getsource(obj), str(inspect.signature(obj))
            except (OSError, TypeError, ValueError):
                continue
            if not doc or len(doc) < 40:
                continue
            for template in TEMPLATES:
                prompts.append(template.format(name=name, signature=signature, doc=doc, module=module_name,
                                               source=source.strip()))
    np.random.default_rng(seed).shuffle(prompts)
    return prompts


class ByteTokenizer:
    """For --tiny: bytes folded into the tiny vocabulary (ids 3.. below the mask token)."""

    def __init__(self, vocab_size: int):
        self.span = vocab_size - 4

    def prompt_ids(self, text: str, length: int) -> np.ndarray | None:
        ids = [3 + b % self.span for b in text.encode()]
        return np.asarray(ids[:length], np.int32) if len(ids) >= length else None


class ChatTokenizer:
    """The verifier's HF tokenizer with its chat template; the user message is trimmed to hit ``length``."""

    def __init__(self, model_dir: str):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        marker = "\x00CONTENT\x00"
        text = self.tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                            add_generation_prompt=True)
        head, tail = text.split(marker)
        self.head = self.tok.encode(head, add_special_tokens=False)
        self.tail = self.tok.encode(tail, add_special_tokens=False)

    def prompt_ids(self, text: str, length: int) -> np.ndarray | None:
        room = length - len(self.head) - len(self.tail)
        content = self.tok.encode(text, add_special_tokens=False)
        if room <= 0 or len(content) < room:
            return None
        return np.asarray(self.head + content[:room] + self.tail, np.int32)


def prompt_ids(tokenizer, prompts, prompt_len: int, count: int) -> list[np.ndarray]:
    """The first ``count`` prompts long enough to fill ``prompt_len`` tokens, trimmed to it."""
    ids = []
    for text in prompts:
        if len(ids) == count:
            return ids
        fitted = tokenizer.prompt_ids(text, prompt_len)
        if fitted is not None:
            ids.append(fitted)
    raise SystemExit(f"only {len(ids)} standard-library prompts reach {prompt_len} tokens; lower --prompt-len")


def self_distillation_data(verifier, ids, *, prompt_len: int, seq_len: int, max_new_tokens: int, gen_batch: int,
                           eos_id):
    """(x0 [N, seq_len], loss_mask [N, seq_len], stats): prompt + the verifier's greedy answer, answer supervised."""
    num = len(ids)
    pad = eos_id if eos_id is not None else 0
    x0 = np.full((num, seq_len), pad, np.int32)
    loss_mask = np.zeros((num, seq_len), bool)
    answer_tokens = 0
    for start in range(0, num, gen_batch):
        batch = np.stack(ids[start:start + gen_batch])
        out = ffjax.generate(verifier, batch, max_new_tokens, eos_id=eos_id).tokens
        for row, (prompt, answer) in enumerate(zip(batch, out if isinstance(out, list) else list(out))):
            sequence = np.concatenate([prompt, answer])[:seq_len]
            x0[start + row, :len(sequence)] = sequence
            loss_mask[start + row, prompt_len:len(sequence)] = True
            answer_tokens += len(sequence) - prompt_len
        print(f"  generated {min(start + gen_batch, num)}/{num} answers", flush=True)
    return x0, loss_mask, {"sequences": num, "answer_tokens": int(answer_tokens)}


def make_tiny_pair(workdir: str) -> tuple[str, str]:
    """Writes a tiny random AR verifier and base as ffjax checkpoints (so the real loading path runs)."""
    config = ffjax.ModelConfig(model_type="qwen2", vocab_size=128, hidden_size=64, intermediate_size=128,
                               num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                               rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False,
                               qkv_bias=True, bos_token_id=1, eos_token_ids=(2,))
    paths = []
    for name, seed in (("verifier", 0), ("base", 1)):
        path = os.path.join(workdir, name)
        params = decoder.init_params(config, jax.random.key(seed), jnp.float32, layout="stacked")
        params["final_norm"]["scale"] = params["final_norm"]["scale"] * 4.0  # a confident, non-uniform model
        checkpoint.save(path, config, params)
        paths.append(path)
    return paths[0], paths[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models built on the fly (CPU smoke run)")
    parser.add_argument("--verifier", help="ffjax checkpoint of the verifier (writes the training data)")
    parser.add_argument("--base", help="ffjax checkpoint of the AR model to adapt")
    parser.add_argument("--out", help="directory for delta.safetensors + manifest.json")
    parser.add_argument("--write-drafter", help="also write the merged drafter checkpoint here")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ffjax-adapt-drafter"))
    parser.add_argument("--dtype", default=None, help="params dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4,
                        help="clean sequences per step; each gives a complementary pair of 2 x seq_len-token rows")
    parser.add_argument("--seq-len", type=int, default=512, help="multiple of the block size")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: seq_len - prompt_len")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--gen-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--bd-size", type=int, default=32)
    parser.add_argument("--mask-token-id", type=int, default=None, help="default: Qwen2.5's 151665")
    parser.add_argument("--eval-prompts", type=int, default=4, help="held-out prompts for the FailFast check")
    parser.add_argument("--eval-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args(argv)

    if args.tiny:
        os.makedirs(args.workdir, exist_ok=True)
        args.verifier, args.base = make_tiny_pair(args.workdir)
        args.out = args.out or os.path.join(args.workdir, "delta")
        args.mask_token_id = 127 if args.mask_token_id is None else args.mask_token_id
        if "--steps" not in (argv or sys.argv):
            args.steps, args.batch_size, args.seq_len, args.prompt_len = 30, 4, 64, 32
            args.num_prompts, args.gen_batch, args.warmup, args.lr, args.rank = 16, 16, 5, 3e-3, 8
            args.eval_prompts, args.eval_new_tokens = 2, 32
    if not (args.verifier and args.base and args.out):
        parser.error("--verifier, --base and --out are required (or --tiny)")
    if args.seq_len % args.bd_size:
        parser.error(f"--seq-len must be a multiple of --bd-size {args.bd_size}")
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    max_new = args.max_new_tokens or args.seq_len - args.prompt_len
    t_start = time.perf_counter()

    verifier = ffjax.load(args.verifier, dtype=dtype)
    base = ffjax.load(args.base, dtype=dtype, layout="stacked")  # training scans the stacked layers
    config = train.drafter_config(base.config, bd_size=args.bd_size, mask_token_id=args.mask_token_id)
    eos_id = verifier.config.eos_token_ids[0] if verifier.config.eos_token_ids else None
    print(f"verifier {args.verifier}, base {args.base} ({dtype}, {jax.default_backend()})", flush=True)

    tokenizer = ByteTokenizer(config.vocab_size) if args.tiny else ChatTokenizer(args.verifier)
    prompts = stdlib_prompts(args.seed)
    ids = prompt_ids(tokenizer, prompts, args.prompt_len, args.eval_prompts + args.num_prompts)
    held_out, ids = ids[:args.eval_prompts], ids[args.eval_prompts:]  # never trained on
    t_data = time.perf_counter()
    x0, loss_mask, data_stats = self_distillation_data(
        verifier, ids, prompt_len=args.prompt_len, seq_len=args.seq_len, max_new_tokens=max_new,
        gen_batch=args.gen_batch, eos_id=eos_id)
    t_data = time.perf_counter() - t_data

    tc = train.TrainConfig(rank=args.rank, learning_rate=args.lr, warmup_steps=args.warmup, steps=args.steps,
                           weight_decay=args.weight_decay, seed=args.seed)
    step = train.train_step(config, tc)
    state = train.init_state(config, base.params, tc)
    rng = np.random.default_rng(args.seed)
    losses, log, t_train = [], [], time.perf_counter()
    for i in range(args.steps):
        rows = rng.choice(len(x0), size=args.batch_size, replace=len(x0) < args.batch_size)
        state, metrics = step(base.params, state, jnp.asarray(x0[rows]), jnp.asarray(loss_mask[rows]))
        losses.append(metrics["loss"])  # a device scalar: no host sync per step
        if (i + 1) % args.log_every == 0 or i + 1 == args.steps:
            log.append({"step": i + 1, "loss": float(metrics["loss"]), "accuracy": float(metrics["accuracy"])})
            print(f"  step {i + 1:5d}  loss {log[-1]['loss']:.4f}  masked-token accuracy "
                  f"{float(metrics['accuracy']):.3f}  grad norm {float(metrics['grad_norm']):.3f}", flush=True)
    t_train = time.perf_counter() - t_train

    merged = ffjax.Model(config, lora.merge(config, base.params, state.delta), base.path)
    acceptance = measure_acceptance(verifier, merged, held_out, args.eval_new_tokens, eos_id)
    manifest = {
        "base_model": os.path.abspath(args.base),
        "base_model_sha256": lora.params_sha256(base.params),
        "base_dtype": dtype,
        "verifier": os.path.abspath(args.verifier),
        "drafter_config": {"bd_size": config.bd_size, "mask_token_id": config.mask_token_id},
        "recipe": {"method": "Fast-dLLM v2 block diffusion: per-block t~U(eps,1), complementary pair, "
                             "[x_t; x_0] mask M_BD|M_OBC|M_BC, token shift, CE on masked answer tokens; "
                             "LoRA (float32) + mask-token embedding row, AdamW, global-norm clipping, "
                             "warmup-cosine schedule", "train_config": tc.to_json(),
                   "batch_size": args.batch_size, "seq_len": args.seq_len},
        "data": {"source": "self-distillation: the verifier's greedy answers (ffjax.generate) to prompts built "
                           "from Python standard-library docstrings and source; no HumanEval",
                 "modules": list(STDLIB_MODULES), "templates": list(TEMPLATES), "prompt_len": args.prompt_len,
                 "max_new_tokens": max_new, "tokenizer": "byte (tiny)" if args.tiny else "verifier chat template",
                 **data_stats},
        "steps": args.steps,
        "final_loss": float(np.mean(np.asarray(losses[-10:]))),  # mean of the last 10 steps (noise varies)
        "loss_log": log,
        "acceptance": acceptance,
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "device": str(jax.devices()[0].device_kind),
    }
    lora.save_delta(args.out, state.delta, manifest)
    size = lora.delta_bytes(state.delta)
    print(f"wrote {args.out}: delta {size / 1e6:.2f} MB{'  (over the 32 MB budget!)' if size > 32e6 else ''}, "
          f"final loss {manifest['final_loss']:.4f}, acceptance {acceptance}")
    if args.write_drafter:
        checkpoint.save(args.write_drafter, config, merged.params)
        for name in os.listdir(args.base):  # tokenizer files travel with the drafter
            if name not in ("config.json", checkpoint.PARAMS_DIR) and os.path.isfile(os.path.join(args.base, name)):
                shutil.copy(os.path.join(args.base, name), args.write_drafter)
        print(f"wrote the merged drafter to {args.write_drafter}")
    return 0


def measure_acceptance(verifier, drafter_model, ids, max_new_tokens, eos_id) -> dict:
    """FailFast (defaults) on held-out standard-library prompts: mean accepted draft tokens per round."""
    if not ids:
        return {}
    accepted, forwards, rounds = [], 0, 0
    for prompt in ids:
        stats = ffjax.speculate(verifier, drafter_model, prompt, max_new_tokens, eos_id=eos_id).stats
        accepted.extend(np.asarray(stats.accepted).tolist())
        forwards, rounds = forwards + stats.drafter_forwards, rounds + stats.rounds
    return {"prompts": len(ids), "max_new_tokens": max_new_tokens, "mean_accepted_per_round": float(np.mean(accepted)),
            "max_accepted": int(np.max(accepted)), "drafter_forwards_per_round": forwards / max(rounds, 1),
            "drafter_forwards_per_accepted_token": forwards / max(int(np.sum(accepted)), 1)}


if __name__ == "__main__":
    sys.exit(main())
