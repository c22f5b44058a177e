import os

import jax
import pytest

# Parity tests compare float32 numerics; keep XLA's CPU matmuls at full precision.
jax.config.update("jax_default_matmul_precision", "highest")

from tests import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """Factory: (name, hf_config) -> directory holding a saved tiny HF checkpoint and its torch model."""
    cache = {}

    def make(name, config, seed=0, **save_kwargs):
        if name not in cache:
            model = tiny_models.build(config, seed=seed)
            directory = str(tmp_path_factory.mktemp(name))
            tiny_models.save(model, directory, **save_kwargs)
            cache[name] = (directory, model)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def converted(hf_dir, tmp_path_factory):
    """Factory: (name, hf_config, dtype) -> (ffjax.Model, torch model)."""
    import ffjax
    from checkpoints_convert import convert

    cache = {}

    def make(name, config, dtype="float32", seed=0):
        key = (name, dtype)
        if key not in cache:
            directory, torch_model = hf_dir(name, config, seed)
            out = str(tmp_path_factory.mktemp(f"{name}-ffjax-{dtype}"))
            convert(directory, out, dtype, progress=False)
            cache[key] = (ffjax.load(out), torch_model)
        return cache[key]

    return make
