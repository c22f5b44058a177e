"""Model configuration: one frozen dataclass read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

# Fast-dLLM v2 reuses Qwen2.5's padded embedding row 151665 as ``|<MASK>|``.
FAST_DLLM_DEFAULT_MASK_TOKEN_ID = 151665

_ARCHITECTURE_BY_MODEL_TYPE = {
    "qwen2": "qwen2",
    "llama": "llama",
    "fast_dllm_qwen": "qwen2",  # Qwen2 weights, block-diffusion attention mask
}


class ConfigError(ValueError):
    """A checkpoint configuration ffjax cannot serve."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str  # as in config.json, lower-cased: qwen2 | llama | fast_dllm_qwen
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    rope_scaling: RopeScaling | None = None
    # Block-diffusion drafter (Fast-dLLM v2) fields; None for autoregressive models.
    bd_size: int | None = None
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})")
        if self.bd_size is not None:
            if self.bd_size <= 0:
                raise ConfigError(f"bd_size must be positive, got {self.bd_size}")
            if self.mask_token_id is None or not 0 <= self.mask_token_id < self.vocab_size:
                raise ConfigError(
                    f"mask_token_id {self.mask_token_id} is not a row of the {self.vocab_size}-token embedding")

    @property
    def architecture(self) -> str:
        """The weight layout: ``qwen2`` or ``llama``."""
        return _ARCHITECTURE_BY_MODEL_TYPE[self.model_type]

    @property
    def is_dllm(self) -> bool:
        """True for a block-diffusion drafter (block-causal attention)."""
        return self.bd_size is not None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from the dict of an HF ``config.json``; raises ConfigError on anything unknown."""
        model_type = str(hf.get("model_type", "")).lower()
        if model_type not in _ARCHITECTURE_BY_MODEL_TYPE:
            raise ConfigError(
                f"unknown architecture model_type={hf.get('model_type')!r} "
                f"(architectures={hf.get('architectures')}); ffjax supports "
                f"{sorted(_ARCHITECTURE_BY_MODEL_TYPE)}")

        def need(key):
            if hf.get(key) is None:
                raise ConfigError(f"config.json for {model_type!r} is missing the field {key!r}")
            return hf[key]

        num_heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        if hf.get("use_sliding_window"):
            raise ConfigError("sliding-window attention (use_sliding_window=true) is not supported")
        if model_type == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
            raise ConfigError("llama checkpoints with attention_bias/mlp_bias are not supported")
        rope_scaling = _parse_rope_scaling(hf.get("rope_scaling") or hf.get("rope_parameters"))
        rope_theta = hf.get("rope_theta")
        if rope_theta is None and isinstance(hf.get("rope_parameters"), Mapping):
            rope_theta = hf["rope_parameters"].get("rope_theta")
        if rope_theta is None:
            raise ConfigError(f"config.json for {model_type!r} is missing the field 'rope_theta'")
        eos = hf.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
        is_dllm = model_type == "fast_dllm_qwen"
        bd_size = int(hf.get("bd_size") or 32) if is_dllm else None
        mask_id = hf.get("mask_token_id", FAST_DLLM_DEFAULT_MASK_TOKEN_ID) if is_dllm else None
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hidden // num_heads),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(need("rms_norm_eps")),
            max_position_embeddings=int(need("max_position_embeddings")),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=model_type != "llama",
            rope_scaling=rope_scaling,
            bd_size=bd_size,
            mask_token_id=None if mask_id is None else int(mask_id),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path) as f:
                hf = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf(hf)

    def to_hf(self) -> dict[str, Any]:
        """The HF-style dict ffjax writes next to a converted checkpoint (round-trips through from_hf)."""
        hf = {
            "model_type": {"fast_dllm_qwen": "Fast_dLLM_Qwen"}.get(self.model_type, self.model_type),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
        }
        if self.rope_scaling is not None:
            hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        if self.is_dllm:
            hf["bd_size"] = self.bd_size
            hf["mask_token_id"] = self.mask_token_id
        return hf


def _parse_rope_scaling(rs: Mapping[str, Any] | None) -> RopeScaling | None:
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ConfigError(f"unsupported rope_scaling type {kind!r} (ffjax supports 'llama3')")
    try:
        return RopeScaling(float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"]),
                           int(rs["original_max_position_embeddings"]))
    except KeyError as e:
        raise ConfigError(f"llama3 rope_scaling is missing {e.args[0]!r}") from None
