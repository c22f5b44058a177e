"""The optax train step: AdamW with gradient clipping over the LoRA delta only (the base params stay frozen).

Precision: the base params keep their dtype (bf16 on GPU), the delta and the optimizer state are float32, the
loss is float32 (see objective.py). One jitted step = noise a complementary pair per clean row, merge, loss,
gradients with respect to the delta, update.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ffjax.adaptation import lora
from ffjax.adaptation.masking import noised_pair
from ffjax.adaptation.objective import loss_and_metrics
from ffjax.config import FAST_DLLM_DEFAULT_MASK_TOKEN_ID, ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    rank: int = 16  # Qwen2.5-0.5B, all four targets, stored float16: 15.5 MB (the repository's limit is 32 MB)
    targets: tuple[str, ...] = lora.DEFAULT_TARGETS
    learning_rate: float = 2e-4
    warmup_steps: int = 20
    steps: int = 300  # length of the cosine schedule
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    eps: float = 1e-3  # t ~ U(eps, 1): no block is ever noised with probability 0
    seed: int = 0

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}


def drafter_config(ar_config: ModelConfig, *, bd_size: int = 32, mask_token_id: int | None = None) -> ModelConfig:
    """The Fast-dLLM v2 config of an AR Qwen2 model: same weights, block size and mask token added."""
    if ar_config.architecture != "qwen2":
        raise ValueError(f"Fast-dLLM v2 drafters are Qwen2 models; got {ar_config.model_type}")
    if mask_token_id is None:
        mask_token_id = FAST_DLLM_DEFAULT_MASK_TOKEN_ID  # Qwen2.5's padded row, as Fast-dLLM v2 uses
    return dataclasses.replace(ar_config, model_type="fast_dllm_qwen", bd_size=bd_size, mask_token_id=mask_token_id)


def optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, max(tc.warmup_steps, 1),
                                                  max(tc.steps, tc.warmup_steps + 1), tc.learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(tc.clip_norm),
                       optax.adamw(schedule, weight_decay=tc.weight_decay))


@struct.dataclass
class TrainState:
    delta: dict
    opt_state: optax.OptState
    step: jax.Array


def init_state(config: ModelConfig, params, tc: TrainConfig, delta=None) -> TrainState:
    """A fresh (or resumed from ``delta``) state; the LoRA init draws from ``tc.seed``."""
    if delta is None:
        delta = lora.init_delta(config, params, jax.random.key(tc.seed), rank=tc.rank, targets=tc.targets)
    return TrainState(delta=delta, opt_state=optimizer(tc).init(delta), step=jnp.zeros((), jnp.int32))


def _train_step(config: ModelConfig, tc: TrainConfig, params, state: TrainState, x0, loss_mask):
    # The noise of step s is a function of (seed, s): runs are reproducible and resumable.
    rng = jax.random.fold_in(jax.random.key(tc.seed + 1), state.step)
    batch = noised_pair(rng, x0, loss_mask, block_size=config.bd_size, mask_token_id=config.mask_token_id,
                        eps=tc.eps)

    def loss_fn(delta):
        return loss_and_metrics(config, lora.merge(config, params, delta), batch, config.bd_size)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.delta)
    updates, opt_state = optimizer(tc).update(grads, state.opt_state, state.delta)
    delta = optax.apply_updates(state.delta, updates)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
    return TrainState(delta=delta, opt_state=opt_state, step=state.step + 1), metrics


@functools.lru_cache(maxsize=None)
def train_step(config: ModelConfig, tc: TrainConfig):
    """Jitted ``(params, state, x0 [B, L] int, loss_mask [B, L] bool) -> (state, metrics)``; each clean row gives
    a complementary pair (2B rows per step). ``config`` must be a drafter config (``drafter_config``)."""
    if not config.is_dllm:
        raise ValueError("train_step needs a drafter config with bd_size and mask_token_id (see drafter_config)")
    return jax.jit(functools.partial(_train_step, config, tc), donate_argnums=(1,))
