"""Joint space-time multi-head self-attention with TransformerLens's hooks.

Two paths compute the same thing (timm's ``fused_attn`` idea): PyTorch's fused
``scaled_dot_product_attention`` when nothing needs the scores or pattern, and an explicit path
(softmax in fp32, as HF eager) whenever ``hook_attn_scores`` / ``hook_pattern`` carry a hook
(caching counts) or ``cfg.use_sdpa`` is off.

``hook_pattern_rows`` carries only the pattern rows of a few query positions
(``pattern_row_positions``, CLS by default): on the fused path they are recomputed from q and k
exactly as the explicit path computes them, and those queries' z rows from them (so a hook may
edit the rows), which leaves the fused path on and costs O(queries x tokens) per layer
(hooked_vivit.attention_rows sets the query positions).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint

from hooked_vivit.config import HookedViViTConfig

# [batch, pos, d_model] normally; [batch, pos, n_heads, d_model] with split (per-head) inputs.
AttnInput = Float[torch.Tensor, "batch pos *heads d_model"]


class Attention(nn.Module):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__()
        self.cfg = cfg
        H, d, E = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q: Float[torch.Tensor, "n_heads d_model d_head"] = nn.Parameter(torch.empty(H, d, E, dtype=cfg.dtype))
        self.W_K: Float[torch.Tensor, "n_heads d_model d_head"] = nn.Parameter(torch.empty(H, d, E, dtype=cfg.dtype))
        self.W_V: Float[torch.Tensor, "n_heads d_model d_head"] = nn.Parameter(torch.empty(H, d, E, dtype=cfg.dtype))
        self.W_O: Float[torch.Tensor, "n_heads d_head d_model"] = nn.Parameter(torch.empty(H, E, d, dtype=cfg.dtype))
        # Present (as zeros) even when cfg.qkv_bias is False: fold_ln writes into them.
        self.b_Q: Float[torch.Tensor, "n_heads d_head"] = nn.Parameter(torch.zeros(H, E, dtype=cfg.dtype))
        self.b_K: Float[torch.Tensor, "n_heads d_head"] = nn.Parameter(torch.zeros(H, E, dtype=cfg.dtype))
        self.b_V: Float[torch.Tensor, "n_heads d_head"] = nn.Parameter(torch.zeros(H, E, dtype=cfg.dtype))
        self.b_O: Float[torch.Tensor, " d_model"] = nn.Parameter(torch.zeros(d, dtype=cfg.dtype))
        self.attn_scale = math.sqrt(E)
        # Attention-logit soft-capping (TransformerLens's attn_scores_soft_cap; VideoPrism, Gemma 2):
        # scores -> cap * tanh(scores / cap) before hook_attn_scores. The fused kernel cannot cap, so a
        # capped attention always takes the explicit path.
        self.softcap: float | None = float(getattr(cfg, "attn_scores_soft_cap", 0.0) or 0.0) or None

        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], scaled, pre-softmax
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        # [batch, head, n_queries, key_pos]: the rows of hook_pattern at pattern_row_positions.
        self.hook_pattern_rows = HookPoint()
        self.pattern_row_positions: tuple[int, ...] = (0,)
        # ((positions, device), index tensor): made once, not per forward, because building a CUDA
        # tensor from a Python list blocks the host until the GPU has caught up (one stall per layer).
        self._row_tensor_cache: tuple[tuple, torch.Tensor] | None = None
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], with cfg.use_attn_result

    # ------------------------------------------------------------------ helpers
    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def needs_pattern(self) -> bool:
        return (
            self.softcap is not None
            or not self.cfg.use_sdpa
            or self.hook_attn_scores.has_hooks()
            or self.hook_pattern.has_hooks()
        )

    def scores(self, qh: torch.Tensor, kh: torch.Tensor) -> Float[torch.Tensor, "batch head query_pos key_pos"]:
        """q·kᵀ / sqrt(d_head), soft-capped when ``softcap`` is set (what hook_attn_scores sees)."""
        scores = torch.matmul(qh, kh.transpose(-1, -2)) / self.attn_scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores

    def _project(self, x: AttnInput, W: torch.Tensor, b: torch.Tensor) -> Float[torch.Tensor, "batch pos head d_head"]:
        if x.ndim == 4:  # per-head input copies
            return torch.einsum("bphd,hde->bphe", x, W) + b
        flat = torch.addmm(b.flatten(), x.flatten(0, -2), W.permute(1, 0, 2).flatten(1))
        return flat.view(*x.shape[:-1], self.cfg.n_heads, self.cfg.d_head)

    def _qkv(self, q_in: AttnInput, k_in: AttnInput, v_in: AttnInput):
        if q_in is k_in is v_in and q_in.ndim == 3:
            # One matmul for q, k and v.
            W = torch.stack([self.W_Q, self.W_K, self.W_V]).permute(2, 0, 1, 3).flatten(1)
            b = torch.stack([self.b_Q, self.b_K, self.b_V]).flatten()
            qkv = torch.addmm(b, q_in.flatten(0, -2), W).view(*q_in.shape[:-1], 3, self.cfg.n_heads, self.cfg.d_head)
            # Plain views (not unbind's multi-output views), so hooks may edit q, k or v in place.
            return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        return (
            self._project(q_in, self.W_Q, self.b_Q),
            self._project(k_in, self.W_K, self.b_K),
            self._project(v_in, self.W_V, self.b_V),
        )

    def _row_index(self) -> slice | list[int]:
        pos = self.pattern_row_positions
        if list(pos) == list(range(pos[0], pos[0] + len(pos))):
            return slice(pos[0], pos[0] + len(pos))  # a view, no gather
        return list(pos)

    def _row_tensor(self, device: torch.device) -> torch.Tensor:
        key = (tuple(self.pattern_row_positions), torch.device(device))
        if self._row_tensor_cache is None or self._row_tensor_cache[0] != key:
            # A normal tensor even when first made under inference_mode, so a later run with autograd may use it.
            with torch.inference_mode(False):
                index = torch.tensor(key[0], dtype=torch.long, device=device)
            self._row_tensor_cache = (key, index)
        return self._row_tensor_cache[1]

    def _pattern_rows(self, qh: torch.Tensor, kh: torch.Tensor) -> Float[torch.Tensor, "batch head n_queries key_pos"]:
        return self.row_pattern(qh[:, :, self._row_index()], kh)

    def row_pattern(
        self,
        q_rows: Float[torch.Tensor, "batch head n_queries d_head"],
        kh: Float[torch.Tensor, "batch head key_pos d_head"],
    ) -> Float[torch.Tensor, "batch head n_queries key_pos"]:
        """The pattern rows of some queries, with the explicit path's arithmetic (fp32 softmax of
        q·kᵀ / sqrt(d_head)), so equal to those rows of hook_pattern."""
        scores = self.scores(q_rows, kh)
        return F.softmax(scores, dim=-1, dtype=torch.float32).to(q_rows.dtype)

    # ------------------------------------------------------------------ forward
    def position_qk(
        self, q: Float[torch.Tensor, "batch pos head d_head"], k: Float[torch.Tensor, "batch pos head d_head"]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions applied to q and k (absolute positions live in the residual stream: none here;
        a rotary subclass rotates them)."""
        return q, k

    def forward(self, q_in: AttnInput, k_in: AttnInput, v_in: AttnInput) -> Float[torch.Tensor, "batch pos d_model"]:
        q, k, v = self._qkv(q_in, k_in, v_in)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k = self.position_qk(q, k)
        # [batch, head, pos, d_head] views for the matmuls.
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.needs_pattern():
            scores = self.hook_attn_scores(self.scores(qh, kh))
            pattern = self.hook_pattern(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
            if self.hook_pattern_rows.has_hooks():
                # A copy (a cached slice would keep the whole pattern alive); written back out of
                # place, so a hook there may edit the rows as at hook_pattern.
                rows = self.hook_pattern_rows(pattern[:, :, self._row_index()].clone())
                pattern = pattern.index_copy(2, self._row_tensor(pattern.device), rows)
            zh = torch.matmul(pattern, vh)
        else:
            zh = F.scaled_dot_product_attention(qh, kh, vh, scale=1.0 / self.attn_scale)
            if self.hook_pattern_rows.has_hooks():
                # Those queries' z rows from the (possibly edited) rows: O(queries x tokens).
                rows = self.hook_pattern_rows(self._pattern_rows(qh, kh))
                zh = zh.index_copy(2, self._row_tensor(zh.device), torch.matmul(rows, vh))
        z = self.hook_z(zh.transpose(1, 2))
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(-2) + self.b_O
        B, P = z.shape[:2]
        out = torch.addmm(self.b_O, z.reshape(B * P, -1), self.W_O.flatten(0, 1))
        return out.view(B, P, -1)
