"""Convert HF safetensors and GGUF checkpoints into ffjax checkpoints (orbax params + config + tokenizer)."""

from checkpoints_convert.convert import convert

__all__ = ["convert"]
