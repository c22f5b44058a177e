"""Where each HF tensor goes in ffjax's params pytree (and how it is transposed and fused).

ffjax keeps projections as [in, out] matrices, fuses q/k/v into ``qkv`` and gate/up into ``gate_up`` (fewer,
larger matmuls per layer), and stacks layers on a leading axis for ``nn.scan``.
"""

from __future__ import annotations

import dataclasses
import re

from ffjax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Placement:
    path: tuple[str, ...]  # key path in the params pytree
    layer: int | None  # index on the stacked layer axis, None for unstacked params
    columns: tuple[int, int] | None  # [start, stop) on the last axis, for fused tensors
    transpose: bool  # HF stores Linear weights as [out, in]


# HF keys that carry no parameters ffjax needs.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def placements(config: ModelConfig) -> dict[str, Placement]:
    """Every HF tensor name a checkpoint of this config must provide, with its destination."""
    q, kv, ffn = config.q_size, config.kv_size, config.intermediate_size
    per_layer = {
        "input_layernorm.weight": (("layers", "attn_norm", "scale"), None, False),
        "self_attn.q_proj.weight": (("layers", "qkv"), (0, q), True),
        "self_attn.k_proj.weight": (("layers", "qkv"), (q, q + kv), True),
        "self_attn.v_proj.weight": (("layers", "qkv"), (q + kv, q + 2 * kv), True),
        "self_attn.o_proj.weight": (("layers", "o"), None, True),
        "post_attention_layernorm.weight": (("layers", "mlp_norm", "scale"), None, False),
        "mlp.gate_proj.weight": (("layers", "gate_up"), (0, ffn), True),
        "mlp.up_proj.weight": (("layers", "gate_up"), (ffn, 2 * ffn), True),
        "mlp.down_proj.weight": (("layers", "down"), None, True),
    }
    if config.qkv_bias:
        per_layer |= {
            "self_attn.q_proj.bias": (("layers", "qkv_bias"), (0, q), False),
            "self_attn.k_proj.bias": (("layers", "qkv_bias"), (q, q + kv), False),
            "self_attn.v_proj.bias": (("layers", "qkv_bias"), (q + kv, q + 2 * kv), False),
        }
    out = {
        "model.embed_tokens.weight": Placement(("embed",), None, None, False),
        "model.norm.weight": Placement(("final_norm", "scale"), None, None, False),
    }
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = Placement(("lm_head",), None, None, True)
    for layer in range(config.num_layers):
        for suffix, (path, columns, transpose) in per_layer.items():
            out[f"model.layers.{layer}.{suffix}"] = Placement(path, layer, columns, transpose)
    return out


def is_ignorable(name: str, config: ModelConfig) -> bool:
    """Tensors a checkpoint may carry that ffjax drops on purpose."""
    if _IGNORED.match(name):
        return True
    # Tied checkpoints sometimes still store lm_head; ffjax reads the embedding instead.
    return config.tie_word_embeddings and name == "lm_head.weight"
