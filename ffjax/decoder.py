"""The transformer decoder shared by the verifier and the drafter (Qwen2 / Llama / Fast-dLLM v2 weights).

Flax modules define the parameters and the computation; they are only ever used through the pure functions
at the bottom (``decode``, ``logits``, ``init_params``), so params and caches stay plain pytrees that pass
through ``jax.jit`` and ``lax.while_loop``. The verifier and the drafter differ only in ``block_size`` (causal vs
block-causal mask).

Two layer layouts, one ``DecoderLayer``:
* ``stacked`` (checkpoints, CPU, TPU): one [L, ...] array per weight and per cache, run with ``nn.scan``, so
  tracing and compile time do not grow with depth.
* ``per_layer`` (GPU): one array per layer, run by a Python loop. XLA:GPU copies each layer's weights out of a
  stacked array before the cuBLAS GEMMs that read them, inside a scan and inside a decode ``while_loop`` alike
  (measured on H200, Qwen2.5-7B shape, one-token forward: 11.6 ms scanned vs 4.7 ms per-layer). Separate
  buffers leave nothing to copy. Compiling the loop costs seconds (3.5 s at 7B), once.
  Its projection weights are stored [out, in] (stacked: [in, out]), so a decoding row's matrix-vector kernel
  (``pallas_kernels.decode_matvec``) reads each output feature's weights contiguously: at batch-1 decoding a
  layer is six kernels (norm + qkv, attention, the merge of its KV splits, o, norm + gate_up + SwiGLU, down).
  Larger models keep XLA's GEMMs, except where ``pallas_kernels.skinny_gemm`` has a tensor-core config measured
  faster on Hopper (the 7B down projection).
The layout is read from the params' structure; ``load`` and ``init_params`` pick the platform's default.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ffjax.attention import append_and_attend, attend, resolve_impl
from ffjax.config import ModelConfig
from ffjax.kv_cache import PER_LAYER, STACKED, KVCache, default_layout
from pallas_kernels import skinny_gemm
from pallas_kernels.decode_matvec import matvec, swiglu_product
from pallas_kernels.reference import split_heads
from pallas_kernels.residual_rms_norm import residual_rms_norm

Params = Any  # nested dict of arrays, as produced by Flax

# The projection weights: [in, out] in the stacked layout, [out, in] in the per-layer one.
PROJECTIONS = ("qkv", "o", "gate_up", "down")

# Whether a decoding row's projections run as ``decode_matvec`` kernels: "auto", "on", "off", or the ones named
# ("qkv,o": kernels for those, XLA's dots on the [out, in] weights for the MLP).
MATVEC_ENV = "FFJAX_MATVEC"
# "auto" turns them on up to this hidden size. Measured on an H200 (BENCHMARKS.md, issue 2): at the Qwen2.5-1.5B
# shape (1536) the decode step took 1.434 ms/token with them and 1.501 without. At 7B (3584) XLA's GEMMs stream the
# large weights at 4.0-4.2 TB/s, and no matvec design swept there beat 3.4-3.8 TB/s: kernels tuned per projection
# ran the step at 4.34-4.51 ms/token, against 4.06-4.11 ms with XLA's GEMMs.
MATVEC_MAX_HIDDEN = 2048


def matvec_projections(config: ModelConfig) -> tuple[str, ...]:
    """The projections (of ``PROJECTIONS``) a decoding row runs as ``decode_matvec`` kernels, per $FFJAX_MATVEC:
    auto, on, off, or a comma-separated list of projections."""
    mode = os.environ.get(MATVEC_ENV, "auto")
    if mode in ("auto", "on", "off"):
        on = mode == "on" or (mode == "auto" and config.hidden_size <= MATVEC_MAX_HIDDEN)
        chosen = PROJECTIONS if on else ()
    else:
        chosen = tuple(mode.split(","))
        if not set(chosen) <= set(PROJECTIONS):
            raise ValueError(f"{MATVEC_ENV} must be auto, on, off or a comma-separated list of {PROJECTIONS}, "
                             f"not {mode!r}")
    return chosen


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """HF's inverse frequencies (float32), with Llama-3 scaling when the config asks for it."""
    exponents = np.arange(0, config.head_dim, 2, dtype=np.float32) / config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    rs = config.rope_scaling
    if rs is not None:
        wavelen = 2 * np.pi / inv_freq
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * inv_freq / rs.factor + smooth * inv_freq
        inv_freq = np.where(wavelen > low_wavelen, inv_freq / rs.factor,
                            np.where(wavelen < high_wavelen, inv_freq, smoothed))
    return inv_freq.astype(np.float32)


def rope_tables(config: ModelConfig, positions):
    """cos, sin [B, T, head_dim // 2] in float32 for integer positions [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inverse_frequencies(config))
    return jnp.cos(angles), jnp.sin(angles)


class RMSNorm(nn.Module):
    """RMSNorm of the residual stream, fused with the residual add before it (one kernel on GPU)."""

    eps: float
    dtype: Any
    impl: str = "auto"  # "reference": the jnp version (differentiable; training uses it)

    @nn.compact
    def __call__(self, x, delta=None, rows=None, *, then_project=None, swiglu=False):
        """(x + delta, RMSNorm(x + delta)); delta None adds nothing. ``rows``: pad the normed output with zero
        rows to that many (see ``gemm_rows``).

        ``then_project`` (a weight [out, in]; one row [1, 1, D] only): returns (x + delta, the normed row times
        that weight, with its SwiGLU if ``swiglu``) instead, in one ``decode_matvec`` kernel on GPUs."""
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        if then_project is not None:
            # delta may carry GEMM padding rows past the real one (``gemm_rows``): the kernel reads row 0 only.
            total, y = matvec(x.reshape(1, -1), then_project, norm_scale=scale, eps=self.eps, swiglu=swiglu,
                              residual=None if delta is None else delta.reshape(-1, x.shape[-1]))
            return total.reshape(x.shape), y.reshape(*x.shape[:-1], -1)
        return residual_rms_norm(x, delta, scale, eps=self.eps, rows=rows,
                                 backend="reference" if self.impl == "reference" else None)


def _dense_init(fan_in):
    return nn.initializers.normal(stddev=fan_in ** -0.5)


def gemm_rows(batch: int, num_tokens: int) -> int | None:
    """Rows the projections multiply: 2 for a lone row (batch-1 decoding) on GPU, else None (the tokens).

    XLA:GPU rewrites a vector-matrix product with a weight under ~10M elements (every projection of a 1.5B
    model but the MLP's) into multiply + reduce, and then writes the whole [K, N] product to HBM before reducing
    it (JAX 0.11, H100: 4 such kernels per layer, about a fifth of the 1.5B decode step). A zero second row keeps
    it one GEMM that reads the weight once; the producers write it (``RMSNorm``'s ``rows``, ``pad_rows``)."""
    return 2 if batch * num_tokens == 1 and jax.default_backend() == "gpu" else None


def pad_rows(x, rows: int | None):
    """x [B, T, K] with zero rows appended up to ``rows`` (None: unchanged)."""
    return x if rows is None else jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, 0)))


def nothing_to_add(x, tokens):
    """The MLP output the first layer's norm adds, where a scan's carry needs an array: zeros in the rows the
    layers' outputs have (``gemm_rows``)."""
    batch, num_tokens = tokens.shape
    return jnp.zeros((batch, gemm_rows(batch, num_tokens) or num_tokens, x.shape[2]), x.dtype)


def project(h, weight, out_in: bool, *, kernels: bool = False):
    """h [B, T', K] times weight ([K, N], or [N, K] when ``out_in``) -> [B, T', N]. Padding rows (``gemm_rows``)
    are kept, not sliced off: the kernels that consume projections (``append_attention``,
    ``residual_rms_norm``) read only the real rows, and a slice would be one more copy kernel per projection.

    ``kernels``: the [N, K] product may run as ``skinny_gemm``'s tensor-core kernel where its plan has a config
    measured faster than XLA's GEMM (on Hopper GPUs, a few rows; see ``skinny_gemm_config``)."""
    config = skinny_gemm_config(h, weight) if kernels and out_in else None
    if config is not None:
        batch, rows, width = h.shape
        return skinny_gemm.gpu_skinny_gemm(h.reshape(batch * rows, width), weight, config).reshape(batch, rows, -1)
    return jax.lax.dot_general(h, weight, (((2,), (1 if out_in else 0,)), ((), ())))


def skinny_gemm_config(h, weight) -> skinny_gemm.SkinnyConfig | None:
    """The ``skinny_gemm`` config for h [B, T', K] times an [N, K] weight, or None for XLA's GEMM: none unless
    the device is a Hopper GPU, $FFJAX_SKINNY_GEMM allows it and the plan has a measured config for the shape."""
    batch, rows, width = h.shape
    if not (skinny_gemm.enabled() and h.dtype == weight.dtype == jnp.bfloat16 and skinny_gemm.hopper_gpu()):
        return None
    return skinny_gemm.plan(batch * rows, weight.shape[0], width)


class DecoderLayer(nn.Module):
    """One pre-norm transformer block; reads and writes its slice of the layer-stacked KV cache.

    With ``mask`` ([B, T, T] bool) it runs cache-free instead (training): the tokens attend to each other as the
    mask says and the cache arrays in ``carry`` (None) are passed through untouched."""

    config: ModelConfig
    dtype: Any
    block_size: int | None
    attention_impl: str
    out_in: bool = False  # projection weights stored [out, in] (the per-layer layout)

    def _weight(self, name, fan_in, fan_out):
        shape = (fan_out, fan_in) if self.out_in else (fan_in, fan_out)
        return self.param(name, _dense_init(fan_in), shape, self.dtype)

    @property
    def _kernels(self) -> bool:
        """Whether projections may run as GPU kernels (``project``): not when the reference is forced."""
        return self.attention_impl != "reference"

    def _matvec(self, x) -> tuple[str, ...]:
        """The projections that run as ``decode_matvec`` kernels: some, at batch-1 decoding in the per-layer
        layout (see ``matvec_projections``); none otherwise."""
        if self.out_in and x.shape[0] * x.shape[1] == 1 and self.attention_impl != "reference":
            return matvec_projections(self.config)
        return ()

    @nn.compact
    def __call__(self, carry, layer_index, rope_cos, rope_sin, write_positions, q_start, kv_len, mask=None):
        """carry: (residual stream x, the previous layer's MLP output not yet added to it, K cache, V cache)."""
        c = self.config
        x, delta, cache_k, cache_v = carry
        batch, num_tokens, _ = x.shape

        attn_norm = RMSNorm(c.rms_norm_eps, self.dtype, self.attention_impl, name="attn_norm")
        qkv_width = c.q_size + 2 * c.kv_size
        qkv_weight = self._weight("qkv", c.hidden_size, qkv_width)
        if "qkv" in self._matvec(x) and mask is None:
            x, qkv = attn_norm(x, delta, then_project=qkv_weight)
        else:
            x, h = attn_norm(x, delta, gemm_rows(batch, num_tokens))
            qkv = project(h, qkv_weight, self.out_in, kernels=self._kernels)
        bias = self.param("qkv_bias", nn.initializers.normal(0.02), (qkv_width,), self.dtype) if c.qkv_bias else None
        qkv = qkv.reshape(batch, qkv.shape[1], c.num_heads + 2 * c.num_kv_heads, c.head_dim)
        if layer_index is None and mask is None:  # per-layer cache: one fused call adds the bias, rotates, appends
            # The output projection's GEMM padding rows come from the attention's split merge, not a pad kernel.
            o_rows = None if "o" in self._matvec(x) else gemm_rows(batch, num_tokens)
            attn, cache_k, cache_v = append_and_attend(qkv, rope_cos, rope_sin, cache_k, cache_v, q_start, kv_len,
                                                       num_q_heads=c.num_heads, qkv_bias=bias,
                                                       block_size=self.block_size, impl=self.attention_impl,
                                                       out_rows=o_rows)
            return self._rest(x, attn, cache_k, cache_v)

        q, k, v = split_heads(qkv, rope_cos, rope_sin, num_q_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                              qkv_bias=bias)
        if mask is not None:  # training: no cache, an arbitrary dense mask (grouped K/V heads are shared)
            attn = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
            return self._rest(x, attn, cache_k, cache_v)
        # Stacked cache: write only the new positions of layer `layer_index`, then attend over that layer.
        rows = jnp.arange(batch)[:, None]
        cache_k = cache_k.at[layer_index, rows, write_positions].set(k.astype(cache_k.dtype), mode="drop")
        cache_v = cache_v.at[layer_index, rows, write_positions].set(v.astype(cache_v.dtype), mode="drop")
        attn = attend(q, cache_k[layer_index], cache_v[layer_index], q_start, kv_len, block_size=self.block_size,
                      impl=self.attention_impl)
        return self._rest(x, attn, cache_k, cache_v)

    def _rest(self, x, attn, cache_k, cache_v):
        """Output projection and MLP: everything after attention. The MLP's output is returned unadded: the
        next norm (the next layer's, or the final one) adds it in the same kernel."""
        c = self.config
        batch, num_tokens, _ = x.shape
        o = self._weight("o", c.q_size, c.hidden_size)
        mlp_norm = RMSNorm(c.rms_norm_eps, self.dtype, self.attention_impl, name="mlp_norm")
        gate_up = self._weight("gate_up", c.hidden_size, 2 * c.intermediate_size)
        down = self._weight("down", c.intermediate_size, c.hidden_size)
        matvec_kernels, rows = self._matvec(x), gemm_rows(batch, num_tokens)
        attn = attn.reshape(batch, attn.shape[1], c.q_size)  # may carry the GEMM's padding rows already
        if "o" in matvec_kernels:
            attn_out = matvec(attn.reshape(1, c.q_size), o).reshape(x.shape)
        else:
            attn_out = project(pad_rows(attn, rows), o, self.out_in, kernels=self._kernels)
        if "gate_up" in matvec_kernels:
            x, activation = mlp_norm(x, attn_out, then_project=gate_up, swiglu=True)
        else:
            x, h = mlp_norm(x, attn_out, rows)
            gate_up_out = project(h, gate_up, self.out_in, kernels=self._kernels)
            gate, up = jnp.split(gate_up_out, 2, axis=-1)  # padding rows: silu(0) * 0 = 0
            activation = swiglu_product(gate, up)
        # row 0: the activation may carry a GEMM padding row (FFJAX_MATVEC without gate_up)
        if "down" in matvec_kernels:
            mlp_out = matvec(activation[:, 0], down).reshape(x.shape)
        else:
            mlp_out = project(pad_rows(activation, rows), down, self.out_in, kernels=self._kernels)
        return (x, mlp_out, cache_k, cache_v), None


class Decoder(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.bfloat16
    block_size: int | None = None  # None: causal (AR); an int: block-causal (block diffusion)
    attention_impl: str = "auto"
    layout: str = STACKED

    def setup(self):
        c = self.config
        self.embed = self.param("embed", nn.initializers.normal(1.0), (c.vocab_size, c.hidden_size), self.dtype)
        if self.layout == STACKED:
            ScannedLayers = nn.scan(
                DecoderLayer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers,
            )
            self.layers = ScannedLayers(c, self.dtype, self.block_size, self.attention_impl)
        else:  # params "layer_0", "layer_1", ...
            self.layer = [DecoderLayer(c, self.dtype, self.block_size, self.attention_impl, out_in=True)
                          for _ in range(c.num_layers)]
        self.final_norm = RMSNorm(c.rms_norm_eps, self.dtype, self.attention_impl)
        if not c.tie_word_embeddings:
            self.lm_head = self.param("lm_head", _dense_init(c.hidden_size), (c.hidden_size, c.vocab_size),
                                      self.dtype)

    def __call__(self, tokens, cache: KVCache):
        """Runs tokens [B, T] placed at positions cache.length + [0, T); returns final hidden [B, T, D], cache.

        The block's K/V are written into the cache; ``cache.length`` is left for the caller to advance (a
        drafter step re-reads the same block, a verifier keeps only the accepted prefix).
        """
        num_tokens = tokens.shape[1]
        positions = cache.length[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)[None, :]
        cos, sin = rope_tables(self.config, positions)
        if num_tokens > cache.max_len:
            raise ValueError(f"a block of {num_tokens} tokens cannot fit a KV cache of {cache.max_len} positions")
        # Clip, not fill: an id past this table (a drafter fed a larger verifier vocabulary's token) must not
        # turn into a NaN embedding that poisons the cache; such drafts are simply wrong, never accepted.
        x = jnp.take(self.embed, tokens, axis=0, mode="clip")
        kv_len = cache.length + num_tokens
        if (self.layout == PER_LAYER) != isinstance(cache.k, (tuple, list)):
            raise ValueError(f"the KV cache layout does not match the params layout ({self.layout}); create the "
                             f"cache with KVCache.create(..., layout='{self.layout}')")
        if self.layout == STACKED:
            (x, delta, k, v), _ = self.layers((x, nothing_to_add(x, tokens), cache.k, cache.v),
                                              jnp.arange(self.config.num_layers), cos, sin, positions, cache.length,
                                              kv_len, None)
        else:
            k, v, delta = list(cache.k), list(cache.v), None
            for i, layer in enumerate(self.layer):
                (x, delta, k[i], v[i]), _ = layer((x, delta, k[i], v[i]), None, cos, sin, positions, cache.length,
                                                  kv_len)
            k, v = tuple(k), tuple(v)
        return self.final_norm(x, delta)[1], cache.replace(k=k, v=v)

    def masked(self, tokens, positions, mask):
        """Cache-free forward for training: tokens [B, T] at RoPE positions [B, T], query i seeing key j where
        mask [B, T, T] is True. Returns final hidden [B, T, D]. Same layers as ``__call__``; only the mask
        differs."""
        cos, sin = rope_tables(self.config, positions)
        x = jnp.take(self.embed, tokens, axis=0, mode="clip")
        if self.layout == STACKED:
            (x, delta, _, _), _ = self.layers((x, nothing_to_add(x, tokens), None, None),
                                              jnp.arange(self.config.num_layers), cos, sin, None, None, None, mask)
        else:
            delta = None
            for layer in self.layer:
                (x, delta, _, _), _ = layer((x, delta, None, None), None, cos, sin, None, None, None, mask)
        return self.final_norm(x, delta)[1]

    def logits(self, hidden):
        """float32 logits [..., V] from final hidden states."""
        head = self.embed.T if self.config.tie_word_embeddings else self.lm_head
        return jnp.matmul(hidden, head, preferred_element_type=jnp.float32)


@functools.lru_cache(maxsize=None)
def _module(config: ModelConfig, dtype, block_size, attention_impl, layout=STACKED) -> Decoder:
    return Decoder(config, dtype=dtype, block_size=block_size, attention_impl=attention_impl, layout=layout)


def layout_of(params: Params) -> str:
    return STACKED if "layers" in params else PER_LAYER


def _flip_projection(keys, leaf):
    """A projection weight between [in, out] (stacked) and [out, in] (per layer); other leaves unchanged."""
    return leaf.T if keys[-1] in PROJECTIONS else leaf


def unstack_layers(params: Params, *, free_stacked: bool = False) -> Params:
    """Stacked → per-layer params (projection weights transposed to [out, in]). ``free_stacked`` deletes each
    stacked array once split (peak memory: one extra weight, not a second model)."""
    if layout_of(params) == PER_LAYER:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(params["layers"])
    num_layers = paths_and_leaves[0][1].shape[0]
    per_layer = [{} for _ in range(num_layers)]
    for path, leaf in paths_and_leaves:
        keys = [p.key for p in path]
        for i in range(num_layers):
            node = per_layer[i]
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = _flip_projection(keys, leaf[i])
        if free_stacked and isinstance(leaf, jax.Array):
            leaf.delete()
    out.update({f"layer_{i}": p for i, p in enumerate(per_layer)})
    return out


def stack_layers(params: Params) -> Params:
    """Per-layer → stacked params (the checkpoint layout)."""
    if layout_of(params) == STACKED:
        return params
    names = sorted((k for k in params if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
    out = {k: v for k, v in params.items() if not k.startswith("layer_")}
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in names])
    out["layers"] = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.swapaxes(leaf, 1, 2) if path[-1].key in PROJECTIONS else leaf, stacked)
    return out


def params_dtype(params: Params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def default_block_size(config: ModelConfig) -> int | None:
    """The mask a model was trained with: causal for AR models, block-causal for block diffusion."""
    return config.bd_size if config.is_dllm else None


def decode(config: ModelConfig, params: Params, tokens, cache: KVCache, *, block_size="default",
           attention_impl: str | None = None):
    """Pure forward: (final hidden [B, T, D], cache with the block's K/V written; length unchanged).

    ``attention_impl``: "auto" (the platform's kernels), "reference", or on GPUs "gpu_triton" / "gpu_mosaic" (see
    ``ffjax.attention``); default from $FFJAX_ATTENTION, else auto."""
    block_size = default_block_size(config) if block_size == "default" else block_size
    attention_impl = resolve_impl(attention_impl)
    module = _module(config, params_dtype(params), block_size, attention_impl, layout_of(params))
    return module.apply({"params": params}, tokens, cache)


def forward_with_mask(config: ModelConfig, params: Params, tokens, positions, mask):
    """Pure, differentiable, cache-free forward (training): final hidden [B, T, D] for tokens [B, T] at explicit
    RoPE positions [B, T] ([T] broadcasts), attention allowed where mask [B, T, T] ([T, T] broadcasts) is True.
    Every query must see at least one key."""
    tokens = jnp.asarray(tokens)
    batch, num_tokens = tokens.shape
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (batch, num_tokens))
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), (batch, num_tokens, num_tokens))
    module = _module(config, params_dtype(params), None, "reference", layout_of(params))
    return module.apply({"params": params}, tokens, positions, mask, method=Decoder.masked)


def logits(config: ModelConfig, params: Params, hidden):
    module = _module(config, params_dtype(params), None, "auto", layout_of(params))
    return module.apply({"params": params}, hidden, method=Decoder.logits)


def new_cache(config: ModelConfig, params: Params, batch: int, max_len: int) -> KVCache:
    """An empty KV cache in the params' layout and dtype."""
    return KVCache.create(config, batch, max_len, params_dtype(params), layout=layout_of(params))


def init_params(config: ModelConfig, rng, dtype=jnp.bfloat16, layout: str | None = None) -> Params:
    """Random parameters (for tests and benchmarks at real shapes), in the platform's layout by default."""
    layout = layout or default_layout()
    module = _module(config, dtype, None, "reference", layout)
    cache = KVCache.create(config, 1, 1, dtype, layout=layout)
    return module.init(rng, jnp.zeros((1, 1), jnp.int32), cache)["params"]


def param_shapes(config: ModelConfig, dtype=jnp.bfloat16, layout: str = STACKED) -> Params:
    """The params pytree as ShapeDtypeStructs (the checkpoint layout by default), without allocating anything."""
    return jax.eval_shape(functools.partial(init_params, config, dtype=dtype, layout=layout), jax.random.key(0))
