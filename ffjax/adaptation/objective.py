"""The block-diffusion loss: cross-entropy at the masked positions of x_t, read with the token shift.

The model runs once over [x_t ; x_0] under the training mask; only the noisy half's outputs are scored. The
prediction for position i comes from the output at i - 1 (as the drafter reads it at inference, see
ffjax/drafter.py). Loss = mean over supervised (masked) tokens of -log p(x_0[i]), in float32; the softmax runs
over the full vocabulary, mask token included (the model learns never to predict it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ffjax import decoder
from ffjax.adaptation.masking import TrainingBatch, input_positions, training_mask
from ffjax.config import ModelConfig


def noisy_logits(config: ModelConfig, params, inputs, block_size: int) -> jax.Array:
    """float32 logits [N, L, V] of the noisy half for inputs [N, 2L] = [x_t ; x_0]; output i predicts i + 1."""
    seq_len = inputs.shape[1] // 2
    hidden = decoder.forward_with_mask(config, params, inputs, input_positions(seq_len),
                                       training_mask(seq_len, block_size))
    return decoder.logits(config, params, hidden[:, :seq_len])  # the clean half is context only


def loss_and_metrics(config: ModelConfig, params, batch: TrainingBatch, block_size: int):
    """(mean cross-entropy over supervised tokens, {loss, accuracy, supervised})."""
    logits = noisy_logits(config, params, batch.inputs, block_size)[:, :-1]  # output i-1 ...
    targets = batch.targets[:, 1:]  # ... predicts token i
    weights = batch.supervised[:, 1:].astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    count = jnp.sum(weights)
    loss = jnp.sum(nll * weights) / jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    accuracy = jnp.sum(correct * weights) / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "accuracy": accuracy, "supervised": count}
