"""The trainable delta: rank-r LoRA factors on the stacked layer matrices + the mask token's embedding row.

delta = {"lora": {name: {"a": [L, in, r], "b": [L, r, out]}}, "mask_embedding": [D]}, all float32.
``merge`` folds it into a plain params tree (W + a @ b computed in float32, then cast to W's dtype; the mask row
added to ``embed``), so inference code never knows about LoRA, and training runs the same merged weights
inference will (bf16 rounding included). b starts at zero, so a fresh delta merges to the base params exactly.
Stored as float16 safetensors + a JSON manifest (no pickle): half the bytes of float32 and 3 more mantissa bits
than bfloat16; ``stored`` rounds a trained delta the same way, so what is measured is what is shipped.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from ffjax import decoder
from ffjax.config import ModelConfig

DEFAULT_TARGETS = ("qkv", "o", "gate_up", "down")
DELTA_FILE = "delta.safetensors"
MANIFEST_FILE = "manifest.json"
STORAGE_DTYPE = np.float16


def init_delta(config: ModelConfig, params, rng, *, rank: int, targets=DEFAULT_TARGETS):
    """A zero-effect delta for ``targets`` (names of the stacked [L, in, out] matrices in params["layers"])."""
    layers = decoder.stack_layers(params)["layers"]
    lora = {}
    for name, key in zip(targets, jax.random.split(rng, len(targets))):
        num_layers, fan_in, fan_out = layers[name].shape
        lora[name] = {
            # a ~ N(0, 1/in) keeps x @ a at the scale of x; b = 0 makes the initial delta exactly zero.
            "a": jax.random.normal(key, (num_layers, fan_in, rank), jnp.float32) * fan_in ** -0.5,
            "b": jnp.zeros((num_layers, rank, fan_out), jnp.float32),
        }
    return {"lora": lora, "mask_embedding": jnp.zeros((config.hidden_size,), jnp.float32)}


def merge(config: ModelConfig, params, delta):
    """Base params + delta -> params of the same structure, layout and dtypes (usable by every ffjax entry point)."""
    per_layer = decoder.layout_of(params) == decoder.PER_LAYER
    merged = dict(decoder.stack_layers(params))
    layers = dict(merged["layers"])
    for name, f in delta["lora"].items():
        w = layers[name]
        update = jnp.einsum("lir,lro->lio", f["a"], f["b"], preferred_element_type=jnp.float32)
        layers[name] = (w.astype(jnp.float32) + update).astype(w.dtype)
    merged["layers"] = layers
    embed = merged["embed"]
    row = embed[config.mask_token_id].astype(jnp.float32) + delta["mask_embedding"]
    merged["embed"] = embed.at[config.mask_token_id].set(row.astype(embed.dtype))
    return decoder.unstack_layers(merged) if per_layer else merged


def params_sha256(params) -> str:
    """Hash of the base params (stacked layout, names, shapes, dtypes and bytes): pins the base a delta fits."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(decoder.stack_layers(params)):
        value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{value.shape}:{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def delta_bytes(delta) -> int:
    """Size of the delta's arrays as stored (STORAGE_DTYPE)."""
    return int(sum(np.dtype(STORAGE_DTYPE).itemsize * x.size for x in jax.tree_util.tree_leaves(delta)))


def stored(delta):
    """The delta as ``save_delta`` + ``load_delta`` give it back (float32 values rounded through STORAGE_DTYPE)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, STORAGE_DTYPE).astype(jnp.float32), delta)


def _flatten(delta) -> dict[str, np.ndarray]:
    return {".".join(str(k.key) for k in path): np.asarray(leaf, STORAGE_DTYPE)
            for path, leaf in jax.tree_util.tree_leaves_with_path(delta)}


def save_delta(directory: str, delta, manifest: dict) -> str:
    """Writes ``DELTA_FILE`` and ``MANIFEST_FILE`` (manifest + the tensor list and the delta's size)."""
    os.makedirs(directory, exist_ok=True)
    tensors = _flatten(delta)
    save_file(tensors, os.path.join(directory, DELTA_FILE))
    full = {**manifest, "delta_bytes": delta_bytes(delta),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(tensors.items())}}
    with open(os.path.join(directory, MANIFEST_FILE), "w") as f:
        json.dump(full, f, indent=2, sort_keys=True)
    return directory


def load_delta(directory: str):
    """(delta as jnp float32 arrays, manifest dict); checks the tensors against the manifest's list."""
    tensors = load_file(os.path.join(directory, DELTA_FILE))
    with open(os.path.join(directory, MANIFEST_FILE)) as f:
        manifest = json.load(f)
    listed = manifest.get("tensors", {})
    if sorted(listed) != sorted(tensors) or any(list(tensors[k].shape) != listed[k]["shape"] for k in tensors):
        raise ValueError(f"{directory}: {DELTA_FILE} does not match the tensor list in {MANIFEST_FILE}")
    delta = {"lora": {}, "mask_embedding": None}
    for key, value in tensors.items():
        parts = key.split(".")
        if parts == ["mask_embedding"]:
            delta["mask_embedding"] = jnp.asarray(value, jnp.float32)
        elif len(parts) == 3 and parts[0] == "lora" and parts[2] in ("a", "b"):
            delta["lora"].setdefault(parts[1], {})[parts[2]] = jnp.asarray(value, jnp.float32)
        else:
            raise ValueError(f"{directory}: unexpected tensor {key!r} in {DELTA_FILE}")
    if delta["mask_embedding"] is None:
        raise ValueError(f"{directory}: {DELTA_FILE} has no mask_embedding")
    return delta, manifest
