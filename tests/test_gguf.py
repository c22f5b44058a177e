"""GGUF → ffjax: a GGUF written from a tiny HF model the way llama.cpp's converter writes one converts back to it."""

import dataclasses
import json
import math
import os

import gguf
import numpy as np
import pytest
import torch
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

import ffjax
from checkpoints_convert import convert
from checkpoints_convert.gguf_source import GGUFSource
from ffjax import decoder
from ffjax.checkpoint import CheckpointError
from ffjax.config import ConfigError, ModelConfig
from tests import tiny_models

F32 = gguf.GGMLQuantizationType.F32
F16 = gguf.GGMLQuantizationType.F16
Q8_0 = gguf.GGMLQuantizationType.Q8_0
Q5_0 = gguf.GGMLQuantizationType.Q5_0
Q4_0 = gguf.GGMLQuantizationType.Q4_0
FILE_TYPE = {F32: gguf.LlamaFileType.ALL_F32, F16: gguf.LlamaFileType.MOSTLY_F16,
             Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0,
             Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}

# A byte-level BPE vocabulary stored the way llama.cpp stores one: 256 byte tokens, the tokens the merges make,
# control tokens, then "[PADn]" rows up to the embedding size. Each word merges left to right into one token;
# no word's first pair occurs inside another word, so the merges never compete.
VOCAB_SIZE = 320
WORDS = ("hello", "Ġworld", "def", "Ġquick", "sort")
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_bpe_vocab():
    tokens = list(bytes_to_unicode().values())
    merges = []
    for word in WORDS:
        for end in range(2, len(word) + 1):
            merges.append(f"{word[:end - 1]} {word[end - 1]}")
            tokens.append(word[:end])
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(CONTROL_TOKENS)
    tokens += CONTROL_TOKENS
    pads = [f"[PAD{i}]" for i in range(len(tokens), VOCAB_SIZE)]
    return tokens + pads, types + [gguf.TokenType.UNUSED] * len(pads), merges


TOKENS, TOKEN_TYPES, MERGES = tiny_bpe_vocab()

GGUF_LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                    "post_attention_layernorm": "ffn_norm"}
GGUF_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}


def gguf_name(hf_name):
    if hf_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_LAYER_NAMES[module]}.{kind}"


def llama_cpp_permute(rows, num_heads):
    """llama.cpp's converter interleaves the two rotary halves of each llama q/k head."""
    return rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(
        rows.shape)


def stored_type(array, weights):
    """llama.cpp keeps 1-D tensors in F32 and falls back to F16 where rows do not fill whole quant blocks."""
    if array.ndim == 1 or weights in (F32, F16):
        return F32 if array.ndim == 1 else weights
    block, _ = gguf.GGML_QUANT_SIZES[weights]
    return weights if array.shape[-1] % block == 0 else F16


def stored_values(array, weights):
    """What a reader gets back from the file: the array quantized to its stored type and dequantized."""
    qtype = stored_type(array, weights)
    return gguf.quants.dequantize(gguf.quants.quantize(array.astype(np.float32), qtype), qtype).astype(np.float32)


def llama3_rope_divisors(rope):
    """llama.cpp's rope_freqs tensor: what each inverse frequency is divided by under Llama-3 scaling."""
    head_dim = rope["head_dim"]
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    divisors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / head_dim)
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"])
            divisors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(divisors, dtype=np.float32)


def write_gguf(path, config, state_dict, weights=F32, *, arch=None, edit_metadata=None, extra_tensors=None):
    """Writes ``state_dict`` as llama.cpp's convert_hf_to_gguf.py would (``weights``: the --outtype), then any
    ``extra_tensors`` (GGUF name -> F32 array) as they are."""
    arch = arch or config.model_type
    head_dim = config.hidden_size // config.num_attention_heads
    rope = dict(config.rope_parameters, head_dim=head_dim)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(FILE_TYPE[weights])
    if arch == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(TOKENS)
    writer.add_token_types(TOKEN_TYPES)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(TOKENS.index("<|endoftext|>"))
    writer.add_eos_token_id(TOKENS.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    if edit_metadata is not None:
        edit_metadata(writer)
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_divisors(rope))
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a tied checkpoint has no lm_head of its own
        array = tensor.detach().numpy()
        if arch == "llama" and ".q_proj." in name:
            array = llama_cpp_permute(array, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            array = llama_cpp_permute(array, config.num_key_value_heads)
        qtype = stored_type(array, weights)
        writer.add_tensor(gguf_name(name), gguf.quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


MODELS = {
    "qwen2": lambda: tiny_models.build(tiny_models.qwen2_config(vocab_size=VOCAB_SIZE)),
    "qwen2-tied": lambda: tiny_models.build(
        tiny_models.qwen2_config(vocab_size=VOCAB_SIZE, tie_word_embeddings=True), seed=1),
    # Llama-3 RoPE scaling; its 112-wide FFN rows make Q8_0 files fall back to F16 for ffn_down.
    "llama": lambda: tiny_models.build(tiny_models.llama_config(vocab_size=VOCAB_SIZE)),
}
def case_id(value):
    return value.name if isinstance(value, gguf.GGMLQuantizationType) else value


TOKEN_IDS = np.array([[TOKENS.index("hello"), 7, 300, 42, TOKENS.index("<|im_end|>"), 0, 150, 259, 99, 13, 5]])


@pytest.fixture(scope="module")
def hf_model():
    cache = {}

    def make(name):
        if name not in cache:
            cache[name] = MODELS[name]()
        return cache[name]

    return make


@pytest.fixture(scope="module")
def gguf_file(hf_model, tmp_path_factory):
    """Factory: (model name, --outtype) -> path of its GGUF."""
    cache = {}

    def make(name, weights):
        if (name, weights) not in cache:
            model = hf_model(name)
            path = str(tmp_path_factory.mktemp("gguf") / f"{name}-{weights.name}.gguf")
            cache[name, weights] = write_gguf(path, model.config, model.state_dict(), weights)
        return cache[name, weights]

    return make


@pytest.fixture(scope="module")
def converted(gguf_file, tmp_path_factory):
    """Factory: (model name, --outtype) -> (ffjax.Model, its directory), converted in float32."""
    cache = {}

    def make(name, weights):
        if (name, weights) not in cache:
            out = str(tmp_path_factory.mktemp(f"{name}-{weights.name}-ffjax"))
            convert(gguf_file(name, weights), out, "float32", progress=False)
            cache[name, weights] = ffjax.load(out), out
        return cache[name, weights]

    return make


def with_stored_weights(model, weights):
    """A copy of the HF model holding exactly the values its GGUF stores."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict({name: torch.from_numpy(stored_values(t.numpy(), weights))
                          for name, t in model.state_dict().items()})
    return copy


# --- config ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen2", "qwen2-tied", "llama"])
def test_config_is_read_from_gguf_metadata(name, hf_model, gguf_file):
    model = hf_model(name)
    got = ModelConfig.from_hf(GGUFSource(gguf_file(name, F32)).hf_config)
    want = ModelConfig.from_hf(model.config.to_dict())
    # The GGUF's special tokens come from its tokenizer; the tiny HF config's ids are placeholders.
    assert got.bos_token_id == TOKENS.index("<|endoftext|>")
    assert got.eos_token_ids == (TOKENS.index("<|im_end|>"),)
    unrelated = dict(bos_token_id=None, eos_token_ids=(), rope_scaling=None)
    assert dataclasses.replace(got, **unrelated) == dataclasses.replace(want, **unrelated)
    # Llama-3 scaling comes back from the rope_freqs tensor as parameters giving the same frequencies.
    assert (got.rope_scaling is None) == (want.rope_scaling is None)
    np.testing.assert_allclose(decoder.rope_inverse_frequencies(got), decoder.rope_inverse_frequencies(want),
                               rtol=1e-6)


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_config_agrees_with_transformers_reading_of_the_metadata(name, gguf_file):
    path = gguf_file(name, F32)
    ours = GGUFSource(path).hf_config
    theirs = load_gguf_checkpoint(path, return_tensors=False)["config"]
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id"):
        assert ours[key] == theirs[key], key
    assert ours["rope_theta"] == pytest.approx(theirs["rope_theta"])
    assert ours["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"])
    assert ours["eos_token_id"] == [theirs["eos_token_id"]]


def test_llama31_rope_scaling_is_recovered_from_rope_freqs(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = tiny_models.llama_config(vocab_size=VOCAB_SIZE, hidden_size=256, num_attention_heads=2,
                                      rope_parameters=rope)
    source = GGUFSource(write_gguf(str(tmp_path / "llama31.gguf"), config, {}))
    # llama.cpp does not store Llama-3.1's parameters, only their effect; 8192 is its assumed original context.
    assert source.hf_config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8192}


# --- weights -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_f32_gguf_converts_to_the_source_model(name, hf_model, converted):
    model, _ = converted(name, F32)
    want = tiny_models.hf_logits(hf_model(name), TOKEN_IDS)
    np.testing.assert_allclose(np.asarray(ffjax.forward(model, TOKEN_IDS)), want, rtol=0, atol=1e-4)


def test_llama_rotary_permutation_is_undone(hf_model, gguf_file):
    model = hf_model("llama")
    path = gguf_file("llama", F32)
    source = GGUFSource(path)
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    for layer in range(model.config.num_hidden_layers):
        for proj, short in (("q_proj", "attn_q"), ("k_proj", "attn_k")):
            want = model.state_dict()[f"model.layers.{layer}.self_attn.{proj}.weight"].numpy()
            assert not np.array_equal(stored[f"blk.{layer}.{short}.weight"], want)  # the file is permuted
            np.testing.assert_array_equal(source.read(f"model.layers.{layer}.self_attn.{proj}.weight"), want)


@pytest.mark.parametrize("name, weights", [("llama", Q8_0), ("qwen2", F16)], ids=case_id)
def test_tensors_match_transformers_gguf_loader(name, weights, hf_model, gguf_file):
    # transformers' from_pretrained(gguf_file=...) needs `accelerate`; its loader underneath does not.
    path = gguf_file(name, weights)
    source = GGUFSource(path)
    skeleton = transformers.AutoModelForCausalLM.from_config(hf_model(name).config)
    theirs = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    assert sorted(source.tensor_names()) == sorted(theirs)
    for tensor_name in source.tensor_names():
        np.testing.assert_array_equal(source.read(tensor_name), theirs[tensor_name].numpy(), err_msg=tensor_name)


@pytest.mark.parametrize("name, weights", [("qwen2", F16), ("qwen2", Q5_0), ("qwen2", Q4_0), ("llama", Q8_0)],
                         ids=case_id)
def test_quantized_tensors_read_as_their_dequantized_values(name, weights, hf_model, gguf_file):
    source = GGUFSource(gguf_file(name, weights))
    for tensor_name, tensor in hf_model(name).state_dict().items():
        # Quant blocks run along rows, so llama's row permutation does not change what a row dequantizes to.
        np.testing.assert_array_equal(source.read(tensor_name), stored_values(tensor.numpy(), weights),
                                      err_msg=tensor_name)


@pytest.mark.parametrize("name, weights", [("qwen2-tied", Q8_0), ("llama", Q8_0)], ids=case_id)
def test_q8_0_gguf_converts_to_its_dequantized_weights(name, weights, hf_model, converted):
    model, _ = converted(name, weights)
    logits = np.asarray(ffjax.forward(model, TOKEN_IDS))
    exact = tiny_models.hf_logits(with_stored_weights(hf_model(name), weights), TOKEN_IDS)
    np.testing.assert_allclose(logits, exact, rtol=0, atol=1e-4)
    # Against the unquantized model: Q8_0 rounds each weight to 1/254 of its 32-block's largest magnitude, a
    # ~0.5% rms error that compounds to ~1% rms in the logits of these tiny models (Q4_0 gives ~15-20%).
    original = tiny_models.hf_logits(hf_model(name), TOKEN_IDS)
    centered = original - original.mean(-1, keepdims=True)
    assert np.sqrt(np.mean((logits - original) ** 2) / np.mean(centered ** 2)) < 0.03


# --- tokenizer ---------------------------------------------------------------------------------------------------

def test_tokenizer_is_rebuilt_from_gguf_metadata(converted):
    _, out = converted("qwen2", F32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer.encode("hello world<|im_end|>")
    assert ids == [TOKENS.index("hello"), TOKENS.index("Ġworld"), TOKENS.index("<|im_end|>")]
    text = "def quicksort(xs):\n    return 'ünïcode' + xs  # 42"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == "<|endoftext|>"


def test_chat_template_is_kept(converted):
    model, out = converted("qwen2", F32)
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        assert json.load(f)["chat_template"] == CHAT_TEMPLATE
    prompt = model.tokenizer().apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                                   add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


# --- errors ------------------------------------------------------------------------------------------------------

def test_unknown_architecture_is_refused(hf_model, tmp_path):
    model = hf_model("qwen2")
    path = write_gguf(str(tmp_path / "gemma.gguf"), model.config, model.state_dict(), arch="gemma")
    with pytest.raises(CheckpointError, match=r"architecture 'gemma' is not supported.*qwen2, llama"):
        convert(path, str(tmp_path / "out"), "float32", progress=False)


@pytest.mark.parametrize("keep_fraction", [0.9, 0.002], ids=["cut-in-tensor-data", "cut-in-header"])
def test_truncated_file_is_refused(keep_fraction, gguf_file, tmp_path):
    whole = gguf_file("qwen2", F32)
    path = str(tmp_path / "cut.gguf")
    with open(whole, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(int(os.path.getsize(whole) * keep_fraction)))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        GGUFSource(path)


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        GGUFSource(str(path))


def test_missing_metadata_is_named(hf_model, tmp_path):
    model = hf_model("qwen2")

    def drop_block_count(writer):
        del writer.kv_data[0]["qwen2.block_count"]

    path = write_gguf(str(tmp_path / "partial.gguf"), model.config, model.state_dict(),
                      edit_metadata=drop_block_count)
    with pytest.raises(ConfigError, match="missing 'qwen2.block_count'"):
        GGUFSource(path)


def test_unsupported_rope_scaling_is_refused(hf_model, tmp_path):
    model = hf_model("qwen2")

    def add_yarn(writer):
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)

    path = write_gguf(str(tmp_path / "yarn.gguf"), model.config, model.state_dict(), edit_metadata=add_yarn)
    with pytest.raises(ConfigError, match="RoPE scaling 'yarn'"):
        GGUFSource(path)


def test_tensor_outside_the_decoder_layout_is_refused(hf_model, tmp_path):
    model = hf_model("qwen2")
    path = write_gguf(str(tmp_path / "qk-norm.gguf"), model.config, model.state_dict(),
                      extra_tensors={"blk.0.attn_q_norm.weight": np.ones(16)})
    with pytest.raises(CheckpointError, match="blk.0.attn_q_norm.weight"):
        convert(path, str(tmp_path / "out"), "float32", progress=False)
