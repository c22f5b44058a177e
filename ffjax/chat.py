"""Chat-formatted prompts: one user turn in the model's own chat template, as token ids."""

from __future__ import annotations

import numpy as np


def chat_ids(tokenizer, user_text: str) -> np.ndarray:
    """``user_text`` as one user turn, ready for the assistant's reply, as int32 ids.

    Templated as text, then encoded without extra special tokens: ``apply_chat_template(tokenize=True)`` returns a
    dict-like encoding in recent transformers, and the template already holds every special token it needs."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                         tokenize=False)
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)
