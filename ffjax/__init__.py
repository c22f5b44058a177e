"""ffjax: FailFast speculative decoding in JAX (block-diffusion drafter, autoregressive verifier)."""

from ffjax.checkpoint import CheckpointError, Model, load
from ffjax.config import ConfigError, ModelConfig
from ffjax.compatibility import IncompatibleModelsError
from ffjax.dllm_generate import DllmGenerateResult, DllmGenerateStats, dllm_generate
from ffjax.failfast_config import FailFastConfig
from ffjax.forward import forward
from ffjax.generate import GenerateResult, GenerateStats, generate
from ffjax.speculate import SpeculateResult, SpeculateStats, speculate

__all__ = ["CheckpointError", "ConfigError", "DllmGenerateResult", "DllmGenerateStats", "FailFastConfig",
           "GenerateResult", "GenerateStats", "IncompatibleModelsError", "Model", "ModelConfig", "SpeculateResult",
           "SpeculateStats", "dllm_generate", "forward", "generate", "load", "speculate"]
