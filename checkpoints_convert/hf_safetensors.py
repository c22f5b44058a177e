"""Tensor source for a Hugging Face model directory of ``*.safetensors`` files (single or sharded)."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
from safetensors import safe_open

from ffjax.checkpoint import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja",
                   "tokenizer.model")


class SafetensorsSource:
    def __init__(self, directory: str):
        self.directory = directory
        config_path = os.path.join(directory, "config.json")
        if not os.path.exists(config_path):
            raise CheckpointError(f"{directory} has no config.json")
        with open(config_path) as f:
            self.hf_config = json.load(f)
        self._file_of = self._index_tensors()

    def _index_tensors(self) -> dict[str, str]:
        index_path = os.path.join(self.directory, "model.safetensors.index.json")
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            missing = sorted({fn for fn in weight_map.values()
                              if not os.path.exists(os.path.join(self.directory, fn))})
            if missing:
                raise CheckpointError(f"sharded checkpoint {self.directory} is partial: missing {missing}")
            return {name: os.path.join(self.directory, fn) for name, fn in weight_map.items()}
        files = sorted(glob.glob(os.path.join(self.directory, "*.safetensors")))
        if not files:
            pickles = [p for p in ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt")
                       if os.path.exists(os.path.join(self.directory, p))]
            if pickles:
                raise CheckpointError(
                    f"{self.directory} holds only PyTorch pickle weights ({', '.join(pickles)}); ffjax never "
                    "loads pickles. Convert them to safetensors with a tool you trust, then retry.")
            raise CheckpointError(f"{self.directory} has no *.safetensors files")
        file_of = {}
        for path in files:
            try:
                with safe_open(path, framework="numpy") as f:
                    file_of.update({name: path for name in f.keys()})
            except Exception as e:  # safetensors raises its own error types for truncated headers
                raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
        return file_of

    def tensor_names(self) -> list[str]:
        return list(self._file_of)

    def read(self, name: str) -> np.ndarray:
        try:
            with safe_open(self._file_of[name], framework="numpy") as f:
                return f.get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {self._file_of[name]}: {e}") from None

    def write_tokenizer(self, out_dir: str) -> None:
        for name in TOKENIZER_FILES:
            src = os.path.join(self.directory, name)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(out_dir, name))
