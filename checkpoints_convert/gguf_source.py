"""Tensor source for a llama.cpp GGUF file (qwen2 / llama): config from its metadata, HF-named tensors, its tokenizer.

Quantized tensors are dequantized to float32 one at a time (``GGUFReader`` memory-maps the file), so converting
needs memory for one tensor, not the model. What llama.cpp's converter changed on the way in is undone here:
HF names come back, llama's q/k rows are un-permuted and Llama-3 RoPE scaling is recovered from ``rope_freqs``.
"""

from __future__ import annotations

import math
import os
import re
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from ffjax.checkpoint import CheckpointError
from ffjax.config import ConfigError

SUPPORTED_ARCHITECTURES = ("qwen2", "llama")

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

# llama.cpp stores Llama-3 RoPE scaling as this tensor of per-frequency divisors, not as metadata.
ROPE_FREQS_TENSOR = "rope_freqs.weight"
# The pre-scaling context llama.cpp's converter assumes for Llama-3 when the file does not state one.
LLAMA3_DEFAULT_ORIGINAL_CONTEXT = 8192
# Elements dequantized at a time (16 MiB of float32), which bounds the dequantizer's temporaries.
DEQUANTIZE_CHUNK_ELEMENTS = 1 << 22
# llama.cpp's default RoPE base when a file omits ``{arch}.rope.freq_base``.
LLAMA_CPP_DEFAULT_ROPE_BASE = 10000.0


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor, or None for one outside the qwen2/llama decoder layout."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_TENSOR.match(gguf_name)
    if match and match[2] in _LAYER_TENSORS:
        return f"model.layers.{match[1]}.{_LAYER_TENSORS[match[2]]}.{match[3]}"
    return None


def unpermute_rotary_rows(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's llama q/k permutation: it interleaves each head's two rotary halves row by row
    (x0, y0, x1, y1, ...) for its RoPE kernel; HF keeps the halves apart (x0, x1, ..., y0, y1, ...)."""
    head_dim = rows.shape[0] // num_heads
    return rows.reshape(num_heads, head_dim // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


class GGUFSource:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._reader = _open_reader(self.path)
        self.architecture = self._metadata("general.architecture")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(
                f"{path}: GGUF architecture {self.architecture!r} is not supported; ffjax converts "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        if (self._metadata("split.count", required=False) or 1) > 1:
            raise CheckpointError(f"{path} is one shard of a split GGUF; merge the shards first "
                                  "(llama.cpp: llama-gguf-split --merge)")
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        self.hf_config = self._read_hf_config()
        # GGUF tensors ffjax does not know keep their own name, so the converter reports them.
        self._gguf_name_of = {hf_tensor_name(name) or name: name
                              for name in self._tensors if name != ROPE_FREQS_TENSOR}

    def tensor_names(self) -> list[str]:
        return list(self._gguf_name_of)

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 in HF orientation ([out, in] for Linear weights, as GGUF stores them)."""
        gguf_name = self._gguf_name_of[name]
        tensor = self._read_gguf_tensor(gguf_name)
        if self.architecture == "llama":
            if ".attn_q." in gguf_name:
                tensor = unpermute_rotary_rows(tensor, self.hf_config["num_attention_heads"])
            elif ".attn_k." in gguf_name:
                tensor = unpermute_rotary_rows(tensor, self.hf_config["num_key_value_heads"])
        return tensor

    def write_tokenizer(self, out_dir: str) -> None:
        """Writes tokenizer.json and tokenizer_config.json (chat template included) built by transformers from
        the GGUF's tokenizer metadata."""
        from transformers import AutoTokenizer

        # A directory holding only the GGUF: transformers would otherwise merge in any tokenizer files that
        # happen to sit beside it.
        with tempfile.TemporaryDirectory() as alone:
            os.symlink(self.path, os.path.join(alone, "model.gguf"))
            try:
                tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file="model.gguf", local_files_only=True)
            except (ValueError, KeyError, OSError) as e:
                raise CheckpointError(f"{self.path}: cannot build a tokenizer from its GGUF metadata: {e}") from None
        tokenizer.save_pretrained(out_dir, save_jinja_files=False)

    def _read_gguf_tensor(self, gguf_name: str) -> np.ndarray:
        tensor = self._tensors[gguf_name]
        # GGUF lists dimensions fastest-first; numpy wants them slowest-first.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        # Quantized data comes as [rows, bytes per row]; the dequantizer's temporaries are several times its
        # float32 output, so rows go through in chunks (the 152k-row embeddings would otherwise take GBs).
        rows = tensor.data.reshape(-1, tensor.data.shape[-1]) if tensor.data.ndim > 1 else tensor.data[None]
        out = np.empty((rows.shape[0], math.prod(shape) // rows.shape[0]), dtype=np.float32)
        step = max(1, DEQUANTIZE_CHUNK_ELEMENTS // out.shape[1])
        try:
            for start in range(0, rows.shape[0], step):
                out[start:start + step] = dequantize(rows[start:start + step], tensor.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{self.path}: tensor {gguf_name} is stored as {tensor.tensor_type.name}, "
                                  "which the gguf package cannot dequantize") from None
        return out.reshape(shape)

    def _metadata(self, key: str, *, required: bool = True):
        field = self._reader.fields.get(key)
        if field is None:
            if required:
                raise ConfigError(f"{self.path}: GGUF metadata is missing {key!r}")
            return None
        value = field.contents()
        if field.types == [GGUFValueType.FLOAT32]:
            # The shortest decimal that round-trips float32 is the value the converter was given (1e-6, not
            # 9.99999997e-07).
            value = float(str(np.float32(value)))
        return value

    def _arch_int(self, name: str, *, required: bool = True) -> int | None:
        value = self._metadata(f"{self.architecture}.{name}", required=required)
        if value is not None and not isinstance(value, int):
            raise ConfigError(f"{self.path}: GGUF metadata {self.architecture}.{name} is {value!r}; ffjax needs "
                              "one integer (per-layer values are not supported)")
        return value

    def _read_hf_config(self) -> dict:
        arch = self.architecture
        hidden = self._arch_int("embedding_length")
        num_heads = self._arch_int("attention.head_count")
        head_dim = self._arch_int("attention.key_length", required=False) or hidden // num_heads
        rotary_dims = self._arch_int("rope.dimension_count", required=False)
        if rotary_dims is not None and rotary_dims != head_dim:
            raise ConfigError(f"{self.path}: RoPE covers {rotary_dims} of {head_dim} head dimensions; ffjax "
                              "supports full-width RoPE only")
        value_dim = self._arch_int("attention.value_length", required=False)
        if value_dim is not None and value_dim != head_dim:
            raise ConfigError(f"{self.path}: value heads of {value_dim} dims differ from key heads of {head_dim}")
        tokens = self._reader.fields.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ConfigError(f"{self.path}: GGUF metadata is missing 'tokenizer.ggml.tokens'")
        rope_theta = self._metadata(f"{arch}.rope.freq_base", required=False) or LLAMA_CPP_DEFAULT_ROPE_BASE
        eos = self._metadata("tokenizer.ggml.eos_token_id", required=False)
        # Chat models may end a turn with an end-of-turn / end-of-message token distinct from EOS.
        end_ids = [eos] + [self._metadata(f"tokenizer.ggml.{key}_token_id", required=False) for key in ("eot", "eom")]
        hf = {
            "model_type": arch,
            "vocab_size": len(tokens.data),
            "hidden_size": hidden,
            "intermediate_size": self._arch_int("feed_forward_length"),
            "num_hidden_layers": self._arch_int("block_count"),
            "num_attention_heads": num_heads,
            # llama.cpp reads a missing KV head count as plain multi-head attention.
            "num_key_value_heads": self._arch_int("attention.head_count_kv", required=False) or num_heads,
            "head_dim": head_dim,
            "rope_theta": rope_theta,
            "rms_norm_eps": self._metadata(f"{arch}.attention.layer_norm_rms_epsilon"),
            "max_position_embeddings": self._arch_int("context_length"),
            # llama.cpp's converter leaves out output.weight exactly when the LM head is the embedding.
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "bos_token_id": self._metadata("tokenizer.ggml.bos_token_id", required=False),
            "eos_token_id": list(dict.fromkeys(i for i in end_ids if i is not None)),
        }
        rope_scaling = self._read_rope_scaling(head_dim, rope_theta)
        if rope_scaling is not None:
            hf["rope_scaling"] = rope_scaling
        return hf

    def _read_rope_scaling(self, head_dim: int, rope_theta: float) -> dict | None:
        arch = self.architecture
        kind = self._metadata(f"{arch}.rope.scaling.type", required=False)
        factor = self._metadata(f"{arch}.rope.scaling.factor", required=False)
        if kind not in (None, "none") and factor not in (None, 1.0):
            raise ConfigError(f"{self.path}: RoPE scaling {kind!r} (factor {factor}) is not supported; ffjax "
                              "supports Llama-3 scaling only")
        if ROPE_FREQS_TENSOR not in self._tensors:
            return None
        original_context = (self._arch_int("rope.scaling.original_context_length", required=False)
                            or LLAMA3_DEFAULT_ORIGINAL_CONTEXT)
        divisors = self._read_gguf_tensor(ROPE_FREQS_TENSOR)
        try:
            return llama3_rope_scaling(divisors, head_dim, rope_theta, original_context)
        except ConfigError as e:
            raise ConfigError(f"{self.path}: {e}") from None


def llama3_rope_scaling(divisors: np.ndarray, head_dim: int, rope_theta: float,
                        original_context: int) -> dict | None:
    """HF's ``llama3`` rope_scaling that reproduces llama.cpp's per-frequency RoPE divisors.

    The divisors are 1 for high frequencies, ``factor`` for low ones and a blend between. In HF's parameters the
    blend weight is linear in the inverse frequency, 0 at 2π·low_freq_factor/L and 1 at 2π·high_freq_factor/L.
    Two or more blended frequencies fix those two points; with fewer, any points in the gaps between the
    scaled and unscaled frequencies reproduce the divisors, and one is picked. L (the original context) only
    sets the scale of the two factors, so llama.cpp's own default is used when the file does not state it.
    """
    divisors = np.asarray(divisors, dtype=np.float64).reshape(-1)
    inv_freq = rope_theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if divisors.shape != inv_freq.shape:
        raise ConfigError(f"rope_freqs holds {divisors.size} divisors, but heads of {head_dim} dims rotate "
                          f"{inv_freq.size} frequencies")
    if np.allclose(divisors, 1.0, rtol=0, atol=1e-6):
        return None
    factor = float(divisors.max())
    kept = (1 / divisors - 1 / factor) / (1 - 1 / factor)  # 1: unscaled, 0: divided by factor
    tolerance = 1e-5
    blended = (kept > tolerance) & (kept < 1 - tolerance)
    scaled, unscaled = inv_freq[kept <= tolerance], inv_freq[kept >= 1 - tolerance]
    gap_low = scaled.max() if scaled.size else inv_freq.min() / 2
    gap_high = unscaled.min() if unscaled.size else inv_freq.max() * 2
    if blended.sum() >= 2:
        slope, intercept = np.polyfit(inv_freq[blended], kept[blended], 1)
        start, stop = -intercept / slope, (1 - intercept) / slope
    elif blended.sum() == 1:
        x, y = inv_freq[blended][0], kept[blended][0]
        start = max(gap_low, x - (gap_high - x) * y / (1 - y))
        stop = start + (x - start) / y
    else:
        start, stop = gap_low, gap_high
    scaling = {
        "rope_type": "llama3",
        "factor": _round(factor),
        "low_freq_factor": _round(start * original_context / (2 * math.pi)),
        "high_freq_factor": _round(stop * original_context / (2 * math.pi)),
        "original_max_position_embeddings": int(original_context),
    }
    if not (0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]) or not np.allclose(
            llama3_divisors(inv_freq, scaling), divisors, rtol=1e-4, atol=0):
        raise ConfigError("rope_freqs does not follow Llama-3 RoPE scaling, the only kind ffjax supports")
    return scaling


def llama3_divisors(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """What HF's llama3 rope_scaling divides each inverse frequency by (llama.cpp's rope_freqs)."""
    context = scaling["original_max_position_embeddings"]
    kept = (context * inv_freq / (2 * math.pi) - scaling["low_freq_factor"]) / (
        scaling["high_freq_factor"] - scaling["low_freq_factor"])
    kept = np.clip(kept, 0.0, 1.0)
    return 1 / ((1 - kept) / scaling["factor"] + kept)


def _round(x: float) -> float:
    """Drops float32 noise from a fitted parameter (8.0000003 -> 8.0); the fit is re-checked afterwards."""
    return float(f"{x:.6g}")


def _open_reader(path: str) -> GGUFReader:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot open {path}: {e}") from None
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = GGUFReader(path)  # lays out every tensor's data eagerly, so a short file fails here
    except Exception as e:  # numpy's own errors on short reads
        raise CheckpointError(f"{path} is truncated or corrupt: its GGUF header and tensors do not fit in its "
                              f"{os.path.getsize(path)} bytes ({type(e).__name__}: {e})") from None
    if reader.byte_order != "I":
        raise CheckpointError(f"{path} is a big-endian GGUF; ffjax reads little-endian GGUF files only")
    return reader
