import sys; sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from benchmarks import common
n = (4 << 30) // 2
x = jnp.ones((n,), jnp.bfloat16)
for label, f in [("flat sum", lambda a: jnp.sum(a, dtype=jnp.float32)),
                 ("rows sum", lambda a: jnp.sum(a.reshape(-1, 8192), axis=1, dtype=jnp.float32)),
                 ("cols sum", lambda a: jnp.sum(a.reshape(-1, 4096), axis=0, dtype=jnp.float32)),
                 ("max", lambda a: jnp.max(a))]:
    g = jax.jit(f); t = common.time_fn(lambda: g(x), repeats=20)
    print(f"BW {label}: {(4<<30)/t/1e12:.2f} TB/s")
w = jnp.ones((18944, 3584), jnp.bfloat16); v = jnp.ones((1, 18944), jnp.bfloat16)
g = jax.jit(lambda v, w: v @ w); t = common.time_fn(lambda: g(v, w), repeats=50)
print(f"GEMV 18944x3584 bf16: {t*1e6:.1f} us = {w.nbytes/t/1e12:.2f} TB/s")
