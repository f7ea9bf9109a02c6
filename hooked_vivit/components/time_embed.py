"""TimeSformer's embeddings: spatial position embeddings shared by every frame, and time embeddings.

Both return [batch, n_ctx, d_model] in the residual stream's order (CLS, then patch tokens
frame-major), so the model's three writers (hook_embed, hook_pos_embed, hook_time_embed) add up to
the first residual stream.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from jaxtyping import Float

from hooked_vivit.config import HookedViViTConfig


class FramePosEmbed(nn.Module):
    """``W_pos`` [1 + patches, d_model]: row 0 for CLS, row 1 + n for patch n of every frame."""

    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.cfg = cfg
        g = cfg.grid
        self.W_pos: Float[torch.Tensor, "one_plus_patches d_model"] = nn.Parameter(
            torch.zeros(1 + g.n_rows * g.n_cols, cfg.d_model, dtype=cfg.dtype)
        )

    def forward(self, batch: int) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        T = self.cfg.grid.n_frame_slots
        table = torch.cat([self.W_pos[:1], self.W_pos[1:].repeat(T, 1)])
        return table.unsqueeze(0).repeat(batch, 1, 1)  # a copy: hooks may edit it in place


class TimeEmbed(nn.Module):
    """``W_time`` [frames, d_model]: row t added to every patch token of frame t; CLS gets none."""

    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.cfg = cfg
        self.W_time: Float[torch.Tensor, "frames d_model"] = nn.Parameter(
            torch.zeros(cfg.num_frames, cfg.d_model, dtype=cfg.dtype)
        )

    def forward(self, batch: int) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        N = self.cfg.grid.n_rows * self.cfg.grid.n_cols
        table = torch.cat([self.W_time.new_zeros(1, self.cfg.d_model), self.W_time.repeat_interleave(N, dim=0)])
        return table.unsqueeze(0).repeat(batch, 1, 1)
