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
import json
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
    "Complete the following Python function:\n```python\ndef {name}{signature}:\n    \"\"\"{doc_indented}\n    \"\"\"\n```",
    "Explain step by step what this Python function from the `{module}` module does, then give an example "
    "call and its result.\n\n```python\n{source}\n```",
    "Rewrite this function from the `{module}` module more simply, keeping its behaviour, and explain the "
    "changes.\n\n```python\n{source}\n```",
)


def _documented_functions(module):
    """(name, function) for the module's public functions and its public classes' public methods."""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and inspect.isfunction(method):
                    yield method_name, method


def stdlib_prompts(seed: int) -> list[str]:
    """Every (function, template) prompt from STDLIB_MODULES, shuffled deterministically."""
    prompts = []
    for module_name in STDLIB_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in _documented_functions(module):
            doc = inspect.getdoc(obj)
            try:
                source, signature = inspect.getsource(obj), str(inspect.signature(obj))
            except (OSError, TypeError, ValueError):
                continue
            if not doc or len(doc) < 40:
                continue
            doc_indented = doc.replace("\n", "\n    ")
            for template in TEMPLATES:
                prompts.append(template.format(name=name, signature=signature, doc=doc, doc_indented=doc_indented,
                                               module=module_name, source=source.strip()))
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


def prompt_ids(tokenizer, prompts, prompt_lengths, count: int) -> list[np.ndarray]:
    """The first ``count`` prompts that reach one of ``prompt_lengths`` tokens, each trimmed to the longest it
    reaches (a few fixed lengths keep the verifier's generation batched and the prompt lengths varied)."""
    ids = []
    for text in prompts:
        if len(ids) == count:
            return ids
        for length in sorted(prompt_lengths, reverse=True):
            fitted = tokenizer.prompt_ids(text, length)
            if fitted is not None:
                ids.append(fitted)
                break
    raise SystemExit(f"only {len(ids)} standard-library prompts reach {min(prompt_lengths)} tokens; lower "
                     "--prompt-lengths or --num-prompts")


def self_distillation_data(verifier, ids, *, seq_len: int, max_new_tokens: int | None, gen_batch: int, eos_id):
    """(x0 [N, seq_len], loss_mask [N, seq_len], stats): prompt + the verifier's greedy answer, answer supervised.

    Prompts of one length are generated together, ``gen_batch`` at a time, each answer up to ``max_new_tokens``
    (default: what fills ``seq_len``)."""
    num = len(ids)
    pad = eos_id if eos_id is not None else 0
    x0 = np.full((num, seq_len), pad, np.int32)
    loss_mask = np.zeros((num, seq_len), bool)
    answer_tokens, done = 0, 0
    for length in sorted({len(p) for p in ids}):
        rows = [i for i, p in enumerate(ids) if len(p) == length]
        new_tokens = min(max_new_tokens or seq_len, seq_len - length)
        for start in range(0, len(rows), gen_batch):
            chunk = rows[start:start + gen_batch]
            batch = np.stack([ids[i] for i in chunk])
            answers = ffjax.generate(verifier, batch, new_tokens, eos_id=eos_id).tokens
            for i, prompt, answer in zip(chunk, batch, answers):
                sequence = np.concatenate([prompt, answer])[:seq_len]
                x0[i, :len(sequence)] = sequence
                loss_mask[i, length:len(sequence)] = True
                answer_tokens += len(sequence) - length
            done += len(chunk)
            print(f"  generated {done}/{num} answers (prompt length {length})", flush=True)
    return x0, loss_mask, {"sequences": num, "answer_tokens": int(answer_tokens),
                           "prompt_lengths": {str(n): sum(len(p) == n for p in ids) for n in sorted({len(p) for p in ids})}}


def save_data(path: str, x0, loss_mask, held_out, stats) -> None:
    """The generated data, plain arrays (np.load without pickles reads it back)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lengths = np.array([len(p) for p in held_out], np.int32)
    held = np.zeros((len(held_out), max(lengths, default=0)), np.int32)
    for row, prompt in zip(held, held_out):
        row[:len(prompt)] = prompt
    np.savez(path, x0=x0, loss_mask=loss_mask, held_out=held, held_out_lengths=lengths,
             stats=np.frombuffer(json.dumps(stats).encode(), np.uint8))


def load_data(path: str):
    with np.load(path, allow_pickle=False) as data:
        held_out = [row[:n] for row, n in zip(data["held_out"], data["held_out_lengths"])]
        return data["x0"], data["loss_mask"], held_out, json.loads(data["stats"].tobytes())


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
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[64, 128, 192, 256],
                        help="prompts are trimmed to the longest of these they reach")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: seq_len - prompt length")
    parser.add_argument("--data", help="an .npz of generated data: reused if it exists, else written after generation")
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
            args.steps, args.batch_size, args.seq_len, args.prompt_lengths = 30, 4, 64, [16, 32]
            args.num_prompts, args.gen_batch, args.warmup, args.lr, args.rank = 16, 16, 5, 3e-3, 8
            args.eval_prompts, args.eval_new_tokens = 2, 32
    if not (args.verifier and args.base and args.out):
        parser.error("--verifier, --base and --out are required (or --tiny)")
    if args.seq_len % args.bd_size:
        parser.error(f"--seq-len must be a multiple of --bd-size {args.bd_size}")
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    t_start = time.perf_counter()

    verifier = ffjax.load(args.verifier, dtype=dtype)
    base = ffjax.load(args.base, dtype=dtype, layout="stacked")  # training scans the stacked layers
    config = train.drafter_config(base.config, bd_size=args.bd_size, mask_token_id=args.mask_token_id)
    eos_id = verifier.config.eos_token_ids[0] if verifier.config.eos_token_ids else None
    print(f"verifier {args.verifier}, base {args.base} ({dtype}, {jax.default_backend()})", flush=True)

    t_data = time.perf_counter()
    if args.data and os.path.exists(args.data):
        x0, loss_mask, held_out, data_stats = load_data(args.data)
        print(f"reusing the generated data in {args.data}: {data_stats}", flush=True)
    else:
        tokenizer = ByteTokenizer(config.vocab_size) if args.tiny else ChatTokenizer(args.verifier)
        ids = prompt_ids(tokenizer, stdlib_prompts(args.seed), args.prompt_lengths,
                         args.eval_prompts + args.num_prompts)
        held_out, ids = ids[:args.eval_prompts], ids[args.eval_prompts:]  # never trained on
        x0, loss_mask, data_stats = self_distillation_data(
            verifier, ids, seq_len=args.seq_len, max_new_tokens=args.max_new_tokens, gen_batch=args.gen_batch,
            eos_id=eos_id)
        if args.data:
            save_data(args.data, x0, loss_mask, held_out, data_stats)
    t_data = time.perf_counter() - t_data
    print(f"data: {data_stats} ({t_data:.1f} s)", flush=True)

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

    delta = lora.stored(state.delta)  # measure exactly what is shipped
    merged = ffjax.Model(config, lora.merge(config, base.params, delta), base.path)
    acceptance = measure_acceptance(verifier, merged, held_out, args.eval_new_tokens, eos_id)
    manifest = {
        "base_model": os.path.abspath(args.base),
        "base_model_sha256": lora.params_sha256(base.params),
        # The demo pair's drafter base is pinned by its GGUF (fetch-demo-pair checks this before merging).
        "base_gguf_sha256": base_gguf_sha256(args.base),
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
                 "modules": list(STDLIB_MODULES), "templates": list(TEMPLATES), "max_new_tokens": args.max_new_tokens or "fills seq_len", "tokenizer": "byte (tiny)" if args.tiny else "verifier chat template",
                 **data_stats},
        "steps": args.steps,
        "final_loss": float(np.mean(np.asarray(losses[-10:]))),  # mean of the last 10 steps (noise varies)
        "loss_log": log,
        "acceptance": acceptance,
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "device": str(jax.devices()[0].device_kind),
    }
    lora.save_delta(args.out, delta, manifest)
    size = lora.delta_bytes(delta)
    print(f"wrote {args.out}: delta {size / 1e6:.2f} MB{'  (over the 32 MB budget!)' if size > 32e6 else ''}, "
          f"final loss {manifest['final_loss']:.4f}, acceptance {acceptance}")
    if args.write_drafter:
        checkpoint.save(args.write_drafter, config, merged.params)
        for name in os.listdir(args.base):  # tokenizer files travel with the drafter
            if name not in ("config.json", checkpoint.PARAMS_DIR) and os.path.isfile(os.path.join(args.base, name)):
                shutil.copy(os.path.join(args.base, name), args.write_drafter)
        print(f"wrote the merged drafter to {args.write_drafter}")
    return 0


def base_gguf_sha256(base_dir: str) -> str | None:
    """The GGUF hash fetch-demo-pair recorded for a converted base, if it came from there."""
    try:
        with open(os.path.join(base_dir, "demo_pair_manifest.json")) as f:
            return json.load(f).get("gguf_sha256")
    except (OSError, ValueError):
        return None


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
