"""Pre-LN transformer block: resid_pre -> +attn -> resid_mid -> +mlp -> resid_post."""

from __future__ import annotations

from collections.abc import Sequence

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
    # forward(from_resid_mid=..., query_positions=...) runs part of the block: HookedVideoTransformer.forward
    # offers it only for block classes that say so, and checks that no hook sits on work it skips.
    runs_partially = True
    # The submodules and hook points the MLP half (resid_mid -> resid_post) runs.
    mlp_half = ("hook_resid_mid", "hook_mlp_in", "ln2", "mlp", "hook_mlp_out", "hook_resid_post")

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

    def forward(
        self,
        resid: Float[torch.Tensor, "batch pos d_model"],
        *,
        from_resid_mid: bool = False,
        query_positions: Sequence[int] | None = None,
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """resid_pre -> resid_post. ``from_resid_mid``: ``resid`` is this block's resid_mid and only the
        MLP half runs. ``query_positions``: only those rows are computed (attention queries and the
        MLP; keys and values from every token), returning [batch, len(query_positions), d_model]."""
        rows = None if query_positions is None else list(query_positions)
        if from_resid_mid:
            resid_mid = self.hook_resid_mid(resid if rows is None else resid[:, rows])
        else:
            resid_pre = self.hook_resid_pre(resid)
            if self.cfg.use_split_qkv_input:
                q_in = self.ln1(self.hook_q_input(self._per_head(resid_pre)))
                k_in = self.ln1(self.hook_k_input(self._per_head(resid_pre)))
                v_in = self.ln1(self.hook_v_input(self._per_head(resid_pre)))
            else:
                attn_in = self.hook_attn_in(self._per_head(resid_pre)) if self.cfg.use_attn_in else resid_pre
                q_in = k_in = v_in = self.ln1(attn_in)
            if rows is not None:
                q_in, resid_pre = q_in[:, rows], resid_pre[:, rows]
            attn_out = self.hook_attn_out(self.attn(q_in, k_in, v_in))
            resid_mid = self.hook_resid_mid(resid_pre + attn_out)

        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)
