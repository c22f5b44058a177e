"""Checkpoint conversion (HF safetensors → orbax) and loading: faithful, bounded, and loud about bad input."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ffjax
from checkpoints_convert import convert
from ffjax.checkpoint import CheckpointError
from ffjax.config import ConfigError
from tests import tiny_models

QWEN = tiny_models.qwen2_config()


def test_sharded_checkpoint_converts_to_the_same_params_as_single_file(hf_dir, tmp_path):
    single, model = hf_dir("qwen-single", QWEN)
    sharded = str(tmp_path / "sharded")
    tiny_models.save(model, sharded, max_shard_size="40KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    convert(single, str(tmp_path / "a"), "float32", progress=False)
    convert(sharded, str(tmp_path / "b"), "float32", progress=False)
    a, b = ffjax.load(str(tmp_path / "a")), ffjax.load(str(tmp_path / "b"))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_orbax_round_trip_preserves_params_and_config(converted, tmp_path):
    model, _ = converted("qwen-roundtrip", QWEN)
    ffjax.checkpoint.save(str(tmp_path), model.config, model.params)
    again = ffjax.load(str(tmp_path))
    assert again.config == model.config
    jax.tree.map(np.testing.assert_array_equal, model.params, again.params)


def test_load_casts_dtype_on_request(converted, tmp_path):
    model, _ = converted("qwen-roundtrip", QWEN)
    ffjax.checkpoint.save(str(tmp_path), model.config, model.params)
    assert ffjax.load(str(tmp_path), dtype=jnp.bfloat16).dtype == jnp.bfloat16
    assert ffjax.load(str(tmp_path)).dtype == jnp.float32


def test_tokenizer_files_travel_with_the_checkpoint(hf_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory, _ = hf_dir("qwen-single", QWEN)
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"[UNK]": 26}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    with_tokenizer = str(tmp_path / "src")
    shutil.copytree(directory, with_tokenizer)
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(with_tokenizer)
    convert(with_tokenizer, str(tmp_path / "out"), progress=False)
    tokenizer = ffjax.load(str(tmp_path / "out")).tokenizer()
    assert tokenizer.decode(tokenizer.encode("abc")).replace(" ", "") == "abc"


def test_command_line_converts_and_reports(hf_dir, tmp_path):
    directory, _ = hf_dir("qwen-single", QWEN)
    out = str(tmp_path / "cli")
    done = subprocess.run([sys.executable, "-m", "checkpoints_convert", directory, out, "--dtype", "bfloat16"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    assert "wrote qwen2" in done.stdout
    assert ffjax.load(out).dtype == jnp.bfloat16


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(QWEN.to_json_string())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="never loads pickles"):
        convert(str(tmp_path), str(tmp_path / "out"), progress=False)


def test_partial_sharded_checkpoint_is_refused(hf_dir, tmp_path):
    _, model = hf_dir("qwen-single", QWEN)
    sharded = str(tmp_path / "sharded")
    tiny_models.save(model, sharded, max_shard_size="40KB")
    shard = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))[-1]
    os.remove(os.path.join(sharded, shard))
    with pytest.raises(CheckpointError, match="partial"):
        convert(sharded, str(tmp_path / "out"), progress=False)


def test_missing_tensor_is_named(hf_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    directory, _ = hf_dir("qwen-single", QWEN)
    broken = str(tmp_path / "broken")
    shutil.copytree(directory, broken)
    tensors = load_file(os.path.join(broken, "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, os.path.join(broken, "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        convert(broken, str(tmp_path / "out"), progress=False)


def test_tensor_shape_that_disagrees_with_config_is_refused(hf_dir, tmp_path):
    directory, _ = hf_dir("qwen-single", QWEN)
    broken = str(tmp_path / "broken")
    shutil.copytree(directory, broken)
    config = json.loads(open(os.path.join(broken, "config.json")).read())
    config["intermediate_size"] = 128
    open(os.path.join(broken, "config.json"), "w").write(json.dumps(config))
    with pytest.raises(CheckpointError, match="mlp.gate_proj.weight has shape"):
        convert(broken, str(tmp_path / "out"), progress=False)


def test_unknown_architecture_is_refused(hf_dir, tmp_path):
    directory, _ = hf_dir("qwen-single", QWEN)
    broken = str(tmp_path / "broken")
    shutil.copytree(directory, broken)
    config = json.loads(open(os.path.join(broken, "config.json")).read())
    config["model_type"] = "mamba"
    open(os.path.join(broken, "config.json"), "w").write(json.dumps(config))
    with pytest.raises(ConfigError, match="unknown architecture"):
        convert(broken, str(tmp_path / "out"), progress=False)


def test_corrupt_orbax_checkpoint_is_reported(converted, tmp_path):
    model, _ = converted("qwen-roundtrip", QWEN)
    ffjax.checkpoint.save(str(tmp_path), model.config, model.params)
    for root, _, files in os.walk(tmp_path / "params"):
        for name in files:
            if name in ("manifest.ocdbt", "_METADATA"):
                open(os.path.join(root, name), "wb").write(b"\0garbage")
    with pytest.raises(CheckpointError, match="corrupt or partial"):
        ffjax.load(str(tmp_path))


def test_directory_without_params_is_not_an_ffjax_checkpoint(hf_dir):
    directory, _ = hf_dir("qwen-single", QWEN)
    with pytest.raises(CheckpointError, match="not an ffjax checkpoint"):
        ffjax.load(directory)


def test_checkpoint_for_a_different_config_is_refused(converted, tmp_path):
    model, _ = converted("qwen-roundtrip", QWEN)
    ffjax.checkpoint.save(str(tmp_path), model.config, model.params)
    config = json.loads(open(tmp_path / "config.json").read())
    config["num_hidden_layers"] = 4
    open(tmp_path / "config.json", "w").write(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        ffjax.load(str(tmp_path))
