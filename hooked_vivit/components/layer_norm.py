"""LayerNorm with TransformerLens's hooks: hook_scale (the divisor) and hook_normalized (the output).

With ``cfg.normalization_type == "LNPre"`` (after fold_ln) the affine part lives in the next
layer's weights and this module has no parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.config import HookedViViTConfig


class LayerNorm(nn.Module):
    def __init__(self, cfg: HookedViViTConfig, eps: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.eps = cfg.eps if eps is None else eps
        if cfg.normalization_type == "LN":
            self.w: Float[torch.Tensor, " d_model"] | None = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
            self.b: Float[torch.Tensor, " d_model"] | None = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        elif cfg.normalization_type == "LNPre":
            self.w = self.b = None
        else:
            raise ValueError(f"normalization_type must be 'LN' or 'LNPre', got {cfg.normalization_type!r}")
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if not self.hook_scale.has_hooks():
            # Fused kernel when nobody reads or edits the scale.
            return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps))
        # Explicit path, in fp32 for low-precision inputs (as torch's fused kernel accumulates).
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = x / scale
        if self.w is not None:
            x = x * self.w + self.b
        return self.hook_normalized(x.to(dtype))
