"""Diagnostic: where does a decode step lose bandwidth? (HLO op census + timing of layer-scan variants)."""
import functools, os, sys, re, time
sys.path.insert(0, ".")
import jax, jax.numpy as jnp, numpy as np
from benchmarks import common
from ffjax import decoder, shapes
from ffjax.kv_cache import KVCache

name = sys.argv[1]; unroll = int(sys.argv[2]) if len(sys.argv) > 2 else 1
if unroll != 1:
    import flax.linen as nn
    orig = nn.scan
    decoder.nn.scan = lambda *a, **k: orig(*a, **{**k, "unroll": unroll})
config = common.shape_config(name)
params = jax.jit(functools.partial(decoder.init_params, config, dtype=jnp.bfloat16))(jax.random.key(0))
cache = KVCache.create(config, 1, 1152, jnp.bfloat16).with_length(1024)

@jax.jit
def step(params, tokens, cache):
    hidden, cache = decoder.decode(config, params, tokens, cache)
    return jnp.argmax(decoder.logits(config, params, hidden), -1), cache

tokens = jnp.ones((1, 1), jnp.int32)
compiled = step.lower(params, tokens, cache).compile()
hlo = compiled.as_text()
ops = {k: len(re.findall(k, hlo)) for k in ["custom-call", "__cublas", "dynamic-slice", "dynamic-update-slice", " copy\\(", "scatter", "while", "triton_gemm", "fusion"]}
t = common.time_fn(lambda: compiled(params, tokens, cache)[0], repeats=30, warmup=3)
flags = os.environ.get("XLA_FLAGS", "")
print(f"RESULT {name} unroll={unroll} flags={flags!r}: k=1 forward {t*1e3:.3f} ms; ops {ops}", flush=True)
if os.environ.get("OUT") and unroll == 1 and not flags:
    open(os.path.join(os.environ["OUT"], f"hlo_{name}.txt"), "w").write(hlo)
