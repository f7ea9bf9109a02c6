"""TimeSformer's divided space-time block: temporal attention, then spatial attention, then the MLP.

The residual stream is [batch, 1 + frames * patches, d_model], CLS first, patch tokens frame-major
(token ``1 + t * patches + n``: the TokenGrid order every other model here uses; transformers keeps
them position-major, ``1 + n * frames + t``, which ``HookedTimeSformer.hf_token_order`` maps).

    resid_pre -> + temporal_attn_out -> resid_mid_temporal -> + attn_out -> resid_mid -> + mlp_out -> resid_post

* Temporal: ``ln_temporal`` and ``temporal_attn`` act on the frames of each spatial position,
  [batch * patches, frames, d_model] (CLS excluded). transformers' extra ``temporal_dense`` linear
  is folded into ``temporal_attn.W_O`` / ``b_O`` by the converter, so ``hook_result`` there is
  each head's real write. ``hook_temporal_attn_out`` is [batch, n_ctx, d_model] with a zero CLS row.
* Spatial: ``ln1`` (transformers' layernorm_before) on the residual stream, then ``attn`` over
  each frame's tokens with the CLS token copied into every frame, [batch * frames, 1 + patches,
  d_model]; the CLS outputs of the frames are averaged back into one. ``hook_attn_out`` is
  [batch, n_ctx, d_model].
"""

from __future__ import annotations

import torch
import torch.nn as nn
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components.attention import Attention
from hooked_vivit.components.layer_norm import LayerNorm
from hooked_vivit.components.mlp import MLP
from hooked_vivit.config import HookedViViTConfig


class DividedSpaceTimeBlock(nn.Module):
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: HookedViViTConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.ln_temporal = LayerNorm(cfg)  # [batch * patches, frames, d_model]
        self.temporal_attn = Attention(
            cfg
        )  # q/k/v/z [batch * patches, frames, head, d_head]; pattern [batch * patches, head, frames, frames]
        self.ln1 = LayerNorm(cfg)  # [batch, n_ctx, d_model]
        self.attn = Attention(
            cfg
        )  # q/k/v/z [batch * frames, 1 + patches, head, d_head]; pattern [batch * frames, head, 1 + patches, 1 + patches]
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)

        self.hook_resid_pre = HookPoint()  # [batch, n_ctx, d_model]
        self.hook_temporal_attn_out = HookPoint()  # [batch, n_ctx, d_model], CLS row zero
        self.hook_resid_mid_temporal = HookPoint()  # [batch, n_ctx, d_model]
        self.hook_attn_out = HookPoint()  # [batch, n_ctx, d_model], CLS row = mean over frames
        self.hook_resid_mid = HookPoint()  # [batch, n_ctx, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, n_ctx, d_model], cfg.use_hook_mlp_in
        self.hook_mlp_out = HookPoint()  # [batch, n_ctx, d_model]
        self.hook_resid_post = HookPoint()  # [batch, n_ctx, d_model]

    def forward(self, resid: Float[torch.Tensor, "batch n_ctx d_model"]) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        B, P, d = resid.shape
        T = self.cfg.num_frames
        N = (P - 1) // T
        resid_pre = self.hook_resid_pre(resid)

        # Temporal: each spatial position's frames, [B * N, T, d].
        by_position = resid_pre[:, 1:].view(B, T, N, d).transpose(1, 2).reshape(B * N, T, d)
        x = self.ln_temporal(by_position)
        temporal = self.temporal_attn(x, x, x)  # [B * N, T, d]
        temporal_out = resid_pre.new_zeros(B, P, d)
        temporal_out[:, 1:].view(B, T, N, d).copy_(temporal.view(B, N, T, d).transpose(1, 2))
        temporal_out = self.hook_temporal_attn_out(temporal_out)
        resid_mid_temporal = self.hook_resid_mid_temporal(resid_pre + temporal_out)

        # Spatial: each frame's patches with its own copy of CLS, [B * T, 1 + N, d].
        normed = self.ln1(resid_mid_temporal)
        cls = normed[:, :1].unsqueeze(1).expand(B, T, 1, d)
        x = torch.cat([cls, normed[:, 1:].view(B, T, N, d)], dim=2).view(B * T, 1 + N, d)
        spatial = self.attn(x, x, x).view(B, T, 1 + N, d)
        attn_out = torch.cat([spatial[:, :, 0].mean(1, keepdim=True), spatial[:, :, 1:].reshape(B, T * N, d)], dim=1)
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid_mid_temporal + attn_out)

        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)
