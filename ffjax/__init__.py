"""ffjax: FailFast speculative decoding in JAX (block-diffusion drafter, autoregressive verifier)."""

from ffjax.checkpoint import CheckpointError, Model, load
from ffjax.config import ConfigError, ModelConfig
from ffjax.dllm_generate import DllmGenerateResult, DllmGenerateStats, dllm_generate
from ffjax.forward import forward
from ffjax.generate import GenerateResult, GenerateStats, generate

__all__ = ["CheckpointError", "ConfigError", "DllmGenerateResult", "DllmGenerateStats", "GenerateResult",
           "GenerateStats", "Model", "ModelConfig", "dllm_generate", "forward", "generate", "load"]
