"""Pre-LN transformer block: resid_pre -> +attn -> resid_mid -> +mlp -> resid_post."""

from __future__ import annotations

import torch
import torch.nn as nn
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components.attention import Attention
from hooked_vivit.components.layer_norm import LayerNorm
from hooked_vivit.components.mlp import MLP
from hooked_vivit.config import HookedViViTConfig


class TransformerBlock(nn.Module):
    # hook_resid_post is the one residual stream the next block (or ln_final) reads; TransformerLens's
    # logit lens checks this flag before reading it.
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: HookedViViTConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)

        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        # Optional split inputs (TransformerLens names): per-head copies of the residual stream.
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model], cfg.use_split_qkv_input
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_attn_in = HookPoint()  # [batch, pos, head, d_model], cfg.use_attn_in
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], cfg.use_hook_mlp_in

    def _per_head(self, x: torch.Tensor) -> torch.Tensor:
        # A real copy, so an in-place edit of one head's input leaves the others alone.
        return x.unsqueeze(2).repeat(1, 1, self.cfg.n_heads, 1)

    def forward(self, resid: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid)

        if self.cfg.use_split_qkv_input:
            q_in = self.ln1(self.hook_q_input(self._per_head(resid_pre)))
            k_in = self.ln1(self.hook_k_input(self._per_head(resid_pre)))
            v_in = self.ln1(self.hook_v_input(self._per_head(resid_pre)))
        else:
            attn_in = self.hook_attn_in(self._per_head(resid_pre)) if self.cfg.use_attn_in else resid_pre
            q_in = k_in = v_in = self.ln1(attn_in)
        attn_out = self.hook_attn_out(self.attn(q_in, k_in, v_in))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)

        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)
