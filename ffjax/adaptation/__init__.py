"""Adapting an autoregressive Qwen2 model into a Fast-dLLM v2 block-diffusion drafter (parameter-efficient).

masking.py   per-block noising, the complementary pair, the [x_t ; x_0] inputs and training mask
objective.py the loss: cross-entropy on masked positions with the token shift
lora.py      the trainable delta (LoRA + mask-token embedding row): init, merge, size, save/load
train.py     TrainConfig, drafter_config, the jitted optax step over the delta only
"""

from ffjax.adaptation.lora import delta_bytes, init_delta, load_delta, merge, params_sha256, save_delta
from ffjax.adaptation.masking import TrainingBatch, complementary_masks, make_batch, noised_pair, training_mask
from ffjax.adaptation.objective import loss_and_metrics, noisy_logits
from ffjax.adaptation.train import TrainConfig, TrainState, drafter_config, init_state, train_step

__all__ = ["TrainConfig", "TrainState", "TrainingBatch", "complementary_masks", "delta_bytes", "drafter_config",
           "init_delta", "init_state", "load_delta", "loss_and_metrics", "make_batch", "merge", "noised_pair",
           "noisy_logits", "params_sha256", "save_delta", "train_step", "training_mask"]
