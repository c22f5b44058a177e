"""ffjax: FailFast speculative decoding in JAX (block-diffusion drafter, autoregressive verifier)."""

from ffjax.checkpoint import CheckpointError, Model, load
from ffjax.config import ConfigError, ModelConfig
from ffjax.forward import forward
from ffjax.generate import GenerateResult, GenerateStats, generate

__all__ = ["CheckpointError", "ConfigError", "GenerateResult", "GenerateStats", "Model", "ModelConfig", "forward",
           "generate", "load"]
