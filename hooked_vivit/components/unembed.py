"""Classifier head on the CLS token: W_U plays TransformerLens's unembedding."""

from __future__ import annotations

import torch
import torch.nn as nn
from jaxtyping import Float

from hooked_vivit.config import HookedViViTConfig


class Unembed(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.W_U: Float[torch.Tensor, "d_model n_classes"] = nn.Parameter(
            torch.empty(cfg.d_model, cfg.n_classes, dtype=cfg.dtype)
        )
        self.b_U: Float[torch.Tensor, " n_classes"] = nn.Parameter(torch.zeros(cfg.n_classes, dtype=cfg.dtype))

    def forward(self, cls: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch n_classes"]:
        return torch.addmm(self.b_U, cls, self.W_U)
