"""Diagnostic: achieved bandwidth of a batch-1 matvec under different layouts / lowerings."""
import os, sys; sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from benchmarks import common
K, N = int(sys.argv[1]), int(sys.argv[2])
w = jax.random.normal(jax.random.key(0), (K, N), jnp.bfloat16); wt = jnp.asarray(w.T)
for m in (1, 16):
    v = jnp.ones((m, K), jnp.bfloat16)
    variants = {
        "v@w [K,N]": (jax.jit(lambda v, w: v @ w), w),
        "einsum w_t [N,K]": (jax.jit(lambda v, w: jnp.einsum("mk,nk->mn", v, w)), wt),
        "f32-acc w_t": (jax.jit(lambda v, w: jnp.einsum("mk,nk->mn", v, w, preferred_element_type=jnp.float32)), wt),
        "mul-reduce w_t": (jax.jit(lambda v, w: jnp.sum(v[:, None, :].astype(jnp.float32) * w[None].astype(jnp.float32), -1)), wt),
    }
    if m > 1:
        variants.pop("mul-reduce w_t")
    for label, (f, ww) in variants.items():
        t = common.time_fn(lambda: f(v, ww), repeats=50)
        print(f"GEMV m={m} {K}x{N} {label:18s} flags={os.environ.get('XLA_FLAGS','')!r}: {t*1e6:7.1f} us = {ww.nbytes/t/1e12:.2f} TB/s", flush=True)
