"""V-JEPA 2's attentive pooler: self-attention blocks over the video tokens, then one learned query
that cross-attends to them; its output is the classifier's input.

- ``blocks``: pre-LN blocks as the encoder's (TransformerBlock: q/k/v/o with biases, no rotary
  positions), hooked the same way, their residual stream [batch, n_ctx, d_model] starting from the
  encoder's final LayerNorm output.
- ``cross``: the query's own residual stream [batch, 1, d_model]: ``hook_resid_pre`` (the learned
  query, unnormalised: transformers feeds it to q_proj as is) ``+ hook_attn_out`` (the heads'
  outputs side by side: this attention has no output projection) ``= hook_resid_mid``,
  ``+ hook_mlp_out = hook_resid_post``. ``ln1`` normalises the video tokens that give keys and
  values ([batch, n_ctx, ...]); ``ln2`` the query stream.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components.layer_norm import LayerNorm
from hooked_vivit.components.mlp import MLP
from hooked_vivit.components.transformer_block import TransformerBlock
from hooked_vivit.config import HookedViViTConfig


class CrossAttention(nn.Module):
    """The query's attention over the video tokens: q from the query stream, k and v from the tokens.
    No output projection: ``W_O`` is a fixed identity (a buffer, [n_heads, d_head, d_model]) so that
    ``hook_result`` and ``OV`` read as for any other attention."""

    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.cfg = cfg
        H, d, E = cfg.n_heads, cfg.d_model, cfg.d_head
        if H * E != d:
            raise ValueError(
                f"the pooler's cross-attention writes its heads side by side: n_heads x d_head ({H}x{E}) must equal d_model {d}"
            )
        self.W_Q: Float[torch.Tensor, "n_heads d_model d_head"] = nn.Parameter(torch.empty(H, d, E, dtype=cfg.dtype))
        self.W_K: Float[torch.Tensor, "n_heads d_model d_head"] = nn.Parameter(torch.empty(H, d, E, dtype=cfg.dtype))
        self.W_V: Float[torch.Tensor, "n_heads d_model d_head"] = nn.Parameter(torch.empty(H, d, E, dtype=cfg.dtype))
        self.b_Q: Float[torch.Tensor, "n_heads d_head"] = nn.Parameter(torch.zeros(H, E, dtype=cfg.dtype))
        self.b_K: Float[torch.Tensor, "n_heads d_head"] = nn.Parameter(torch.zeros(H, E, dtype=cfg.dtype))
        self.b_V: Float[torch.Tensor, "n_heads d_head"] = nn.Parameter(torch.zeros(H, E, dtype=cfg.dtype))
        self.W_O: Float[torch.Tensor, "n_heads d_head d_model"]
        self.register_buffer("W_O", torch.eye(d, dtype=cfg.dtype).view(H, E, d), persistent=False)
        self.attn_scale = math.sqrt(E)
        self.hook_q = HookPoint()  # [batch, 1, head, d_head]
        self.hook_k = HookPoint()  # [batch, n_ctx, head, d_head]
        self.hook_v = HookPoint()  # [batch, n_ctx, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, 1, n_ctx], scaled, pre-softmax
        self.hook_pattern = HookPoint()  # [batch, head, 1, n_ctx]: the query's attention over the video tokens
        self.hook_z = HookPoint()  # [batch, 1, head, d_head]
        self.hook_result = HookPoint()  # [batch, 1, head, d_model], with cfg.use_attn_result

    def needs_pattern(self) -> bool:
        return not self.cfg.use_sdpa or self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def _project(
        self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor
    ) -> Float[torch.Tensor, "batch pos head d_head"]:
        flat = torch.addmm(b.flatten(), x.flatten(0, -2), W.permute(1, 0, 2).flatten(1))
        return flat.view(*x.shape[:-1], self.cfg.n_heads, self.cfg.d_head)

    def forward(
        self, query: Float[torch.Tensor, "batch 1 d_model"], tokens: Float[torch.Tensor, "batch n_ctx d_model"]
    ) -> Float[torch.Tensor, "batch 1 d_model"]:
        q = self.hook_q(self._project(query, self.W_Q, self.b_Q))
        k = self.hook_k(self._project(tokens, self.W_K, self.b_K))
        v = self.hook_v(self._project(tokens, self.W_V, self.b_V))
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.needs_pattern():  # [heads x 1 x tokens]: cheap, but still only when asked for
            scores = self.hook_attn_scores(torch.matmul(qh, kh.transpose(-1, -2)) / self.attn_scale)
            pattern = self.hook_pattern(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
            zh = torch.matmul(pattern, vh)
        else:
            zh = F.scaled_dot_product_attention(qh, kh, vh, scale=1.0 / self.attn_scale)
        z = self.hook_z(zh.transpose(1, 2))
        if self.cfg.use_attn_result:
            return self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O)).sum(-2)
        return z.flatten(-2)


class CrossAttentionBlock(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = LayerNorm(cfg)  # on the video tokens (keys and values)
        self.attn = CrossAttention(cfg)
        self.ln2 = LayerNorm(cfg)  # on the query stream
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, 1, d_model]: the learned query
        self.hook_attn_out = HookPoint()  # [batch, 1, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, 1, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, 1, d_model]
        self.hook_resid_post = HookPoint()  # [batch, 1, d_model]: the pooled vector the classifier reads

    def forward(
        self, query: Float[torch.Tensor, "batch 1 d_model"], tokens: Float[torch.Tensor, "batch n_ctx d_model"]
    ) -> Float[torch.Tensor, "batch 1 d_model"]:
        resid_pre = self.hook_resid_pre(query)
        attn_out = self.hook_attn_out(self.attn(resid_pre, self.ln1(tokens)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class AttentivePooler(nn.Module):
    def __init__(self, cfg: HookedViViTConfig, n_layers: int, d_mlp: int):
        super().__init__()
        self.cfg = cfg
        self.query: Float[torch.Tensor, " d_model"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(n_layers)])
        self.cross = CrossAttentionBlock(cfg)
        # transformers builds the pooler's MLPs with its default ratio 4 whatever config.mlp_ratio says.
        # MLP keeps no reference to the config, so a copy with the pooler's width only sizes them.
        mlp_cfg = copy.copy(cfg)
        mlp_cfg.d_mlp = d_mlp
        for block in [*self.blocks, self.cross]:
            block.mlp = MLP(mlp_cfg)

    def forward(self, tokens: Float[torch.Tensor, "batch n_ctx d_model"]) -> Float[torch.Tensor, "batch d_model"]:
        for block in self.blocks:
            tokens = block(tokens)
        # A copy per clip, not an expanded view, so hooks may edit it in place.
        query = self.query.view(1, 1, -1).repeat(tokens.shape[0], 1, 1)
        return self.cross(query, tokens)[:, 0]
