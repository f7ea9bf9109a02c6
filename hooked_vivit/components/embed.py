"""Tubelet embedding: pixels [batch, frames, C, H, W] -> tokens [batch, n_ctx, d_model], CLS first
(when the config has one: cfg.n_prefix_tokens).

Their hooks (hook_embed, hook_pos_embed) sit on the model, at TransformerLens's top-level names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float

from hooked_vivit.config import HookedViViTConfig


class TubeletEmbed(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.cfg = cfg
        t, h, w = cfg.tubelet_size
        # Conv3d kernel kept in HF's shape so conversion is a copy, not a reshape.
        self.W_E: Float[torch.Tensor, "d_model channels t h w"] = nn.Parameter(
            torch.empty(cfg.d_model, cfg.n_channels, t, h, w, dtype=cfg.dtype)
        )
        self.b_E: Float[torch.Tensor, " d_model"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        if cfg.n_prefix_tokens:
            self.cls_token: Float[torch.Tensor, " d_model"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))

    def forward(
        self, pixel_values: Float[torch.Tensor, "batch frames channels height width"]
    ) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        # Conv3d wants [batch, channels, frames, H, W]; output flattens over (t, h, w) in HF's order.
        patches = F.conv3d(pixel_values.transpose(1, 2), self.W_E, self.b_E, stride=self.cfg.tubelet_size)
        patches = patches.flatten(2).transpose(1, 2)
        if not self.cfg.n_prefix_tokens:
            return patches
        cls = self.cls_token.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1)


class PosEmbed(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.W_pos: Float[torch.Tensor, "n_ctx d_model"] = nn.Parameter(
            torch.zeros(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype)
        )

    def forward(self, batch: int) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        # A copy, not an expanded view, so hooks may edit it in place.
        return self.W_pos.unsqueeze(0).repeat(batch, 1, 1)
