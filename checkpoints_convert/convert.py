"""HF safetensors / GGUF → ffjax checkpoint, one tensor at a time (memory stays bounded)."""

from __future__ import annotations

import os
import shutil

import jax
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from checkpoints_convert.hf_safetensors import SafetensorsSource
from checkpoints_convert.layout import is_ignorable, placements
from ffjax import checkpoint, decoder
from ffjax.checkpoint import CheckpointError
from ffjax.config import ModelConfig

DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
STAGING_DIR = ".staging"


def open_source(src: str):
    """The tensor source for an HF directory or a .gguf file."""
    if os.path.isdir(src):
        return SafetensorsSource(src)
    if src.endswith(".gguf") and os.path.isfile(src):
        from checkpoints_convert.gguf_source import GGUFSource
        return GGUFSource(src)
    raise CheckpointError(f"{src} is neither an HF model directory nor a .gguf file")


def convert(src: str, out: str, dtype: str = "bfloat16", *, progress: bool = True) -> ModelConfig:
    """Converts ``src`` into an ffjax checkpoint at ``out``; returns the model config."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    source = open_source(src)
    config = ModelConfig.from_hf(source.hf_config)
    np_dtype = np.dtype(DTYPES[dtype])
    os.makedirs(out, exist_ok=True)
    staging = os.path.join(out, STAGING_DIR)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        params = _stage_params(source, config, np_dtype, staging, progress)
        checkpoint.save(out, config, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    source.write_tokenizer(out)
    return config


def _stage_params(source, config: ModelConfig, np_dtype, staging: str, progress: bool):
    """Fills disk-backed arrays shaped like the params pytree, tensor by tensor."""
    shapes = decoder.param_shapes(config)
    staged = {}

    def allocate(path, shape):
        name = ".".join(str(getattr(p, "key", p)) for p in path)
        staged[tuple(getattr(p, "key", p) for p in path)] = np.lib.format.open_memmap(
            os.path.join(staging, name + ".npy"), mode="w+", dtype=np_dtype, shape=shape.shape)
        return staged[tuple(getattr(p, "key", p) for p in path)]

    params = jax.tree_util.tree_map_with_path(allocate, shapes)
    wanted = placements(config)
    names = source.tensor_names()
    unknown = sorted(n for n in names if n not in wanted and not is_ignorable(n, config))
    if unknown:
        raise CheckpointError(f"checkpoint has tensors ffjax does not know for {config.model_type}: "
                              f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    missing = sorted(set(wanted) - set(names))
    if missing:
        raise CheckpointError(f"checkpoint is partial: missing {len(missing)} tensors, e.g. {missing[:8]}")
    for name in tqdm(list(wanted), desc="converting", unit="tensor", disable=not progress):
        where = wanted[name]
        tensor = np.asarray(source.read(name))
        if where.transpose:
            tensor = tensor.T
        target = staged[where.path]
        if where.layer is not None:
            target = target[where.layer]
        if where.columns is not None:
            target = target[..., where.columns[0]:where.columns[1]]
        if tensor.shape != target.shape:
            raise CheckpointError(f"tensor {name} has shape {tensor.shape[::-1] if where.transpose else tensor.shape}"
                                  f", but the config implies {target.shape[::-1] if where.transpose else target.shape}")
        target[...] = tensor.astype(np.float32).astype(np_dtype)
    for array in staged.values():
        array.flush()
    return params
