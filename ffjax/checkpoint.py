"""ffjax's on-disk model format: ``config.json`` + an orbax checkpoint of the params + tokenizer files."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from ffjax import decoder
from ffjax.config import ModelConfig

PARAMS_DIR = "params"
FORMAT_KEY = "ffjax_format_version"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, partial, corrupt or in a format ffjax refuses to read."""


@dataclasses.dataclass(frozen=True)
class Model:
    """A model ffjax can run: its config (static) and its params (a plain pytree)."""

    config: ModelConfig
    params: Any
    path: str | None = None  # directory holding tokenizer files, when loaded from disk

    @property
    def dtype(self):
        return decoder.params_dtype(self.params)

    def tokenizer(self):
        """The HF tokenizer saved beside the checkpoint (local files only)."""
        if self.path is None:
            raise ValueError("this model was not loaded from a directory, so it has no tokenizer files")
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(self.path, local_files_only=True)


jax.tree_util.register_dataclass(Model, data_fields=["params"], meta_fields=["config", "path"])


def save(path: str, config: ModelConfig, params, *, extra_config: dict | None = None) -> None:
    """Writes config.json and the params (numpy, memmap or jax leaves) as an orbax checkpoint."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, PARAMS_DIR), decoder.stack_layers(params), force=True)
    checkpointer.wait_until_finished()
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**config.to_hf(), **(extra_config or {}), FORMAT_KEY: FORMAT_VERSION}, f, indent=2)


def load(path: str, dtype=None, layout: str | None = None) -> Model:
    """Restores a converted checkpoint onto the default device; ``dtype`` casts the weights (default: as saved).

    ``layout`` (default: the platform's, see ffjax/decoder.py) is ``stacked`` or ``per_layer``."""
    path = os.path.abspath(path)
    config = ModelConfig.from_json(path)
    params_path = os.path.join(path, PARAMS_DIR)
    if not os.path.isdir(params_path):
        raise CheckpointError(f"{path} has no {PARAMS_DIR}/ directory: not an ffjax checkpoint "
                              "(convert HF or GGUF weights with `python -m checkpoints_convert`)")
    checkpointer = ocp.StandardCheckpointer()
    try:
        stored = checkpointer.metadata(params_path).item_metadata.tree
    except Exception as e:
        raise CheckpointError(f"checkpoint at {params_path} is corrupt or partial: {e}") from None
    saved_dtype = jax.tree_util.tree_leaves(stored)[0].dtype
    expected = decoder.param_shapes(config, saved_dtype)
    _check_structure(expected, stored, params_path)
    target_dtype = jnp.dtype(dtype) if dtype is not None else saved_dtype
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, target_dtype, sharding=sharding), expected)
    try:
        params = checkpointer.restore(params_path, target)
    except Exception as e:
        raise CheckpointError(f"checkpoint at {params_path} is corrupt or partial: {e}") from None
    if (layout or decoder.default_layout()) == decoder.PER_LAYER:
        params = decoder.unstack_layers(params, free_stacked=True)
    return Model(config, params, path)


def _check_structure(expected, stored, where):
    expected_flat = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    stored_flat = {jax.tree_util.keystr(k): tuple(v.shape)
                   for k, v in jax.tree_util.tree_leaves_with_path(stored)}
    missing = sorted(set(expected_flat) - set(stored_flat))
    unexpected = sorted(set(stored_flat) - set(expected_flat))
    wrong = sorted(k for k in set(expected_flat) & set(stored_flat) if expected_flat[k] != stored_flat[k])
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            missing and f"missing {missing}", unexpected and f"unexpected {unexpected}",
            wrong and "wrong shapes " + ", ".join(f"{k}: {stored_flat[k]} != {expected_flat[k]}" for k in wrong)]))
        raise CheckpointError(f"checkpoint at {where} does not match its config.json: {detail}")
