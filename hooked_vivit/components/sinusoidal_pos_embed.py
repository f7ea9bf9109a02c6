"""Fixed sinusoidal position embeddings (VideoMAE): a table, not a parameter.

Computed as transformers' ``get_sinusoid_encoding_table`` (float64 angles, then float32), one row
per patch token. A non-persistent buffer: never in a state dict, moved and cast with the model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from jaxtyping import Float

from hooked_vivit.config import HookedViViTConfig


def sinusoid_table(n_position: int, d_model: int) -> Float[torch.Tensor, "n_position d_model"]:
    position = np.arange(n_position, dtype=np.float64)[:, None]
    # transformers: position / 10000 ** (2 * (j // 2) / d_model), same float64 operations.
    angles = position / np.power(10000, 2 * (np.arange(d_model) // 2) / d_model)
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)


class SinusoidalPosEmbed(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        if cfg.n_prefix_tokens:
            raise ValueError("sinusoidal position embeddings cover patch tokens only (no CLS): set n_prefix_tokens=0")
        self.W_pos: Float[torch.Tensor, "n_ctx d_model"]
        self.register_buffer("W_pos", sinusoid_table(cfg.n_ctx, cfg.d_model).to(cfg.dtype), persistent=False)

    def forward(self, batch: int) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        # A copy, not an expanded view, so hooks may edit it in place.
        return self.W_pos.unsqueeze(0).repeat(batch, 1, 1)
