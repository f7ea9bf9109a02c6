"""Self-attention with V-JEPA 2's 3-D rotary position embedding on q and k (no absolute positions).

Each head's first ``3 * rope_dim`` dimensions rotate in three equal blocks, by the token's frame slot,
grid row and grid column (``rope_dim = 2 * ((d_head // 3) // 2)``); the rest pass unrotated. Within a
block the frequencies are ``1 / 10000 ** (i / (rope_dim / 2))`` for i < rope_dim / 2, laid out twice
(``[f, f]``, as transformers' ``emb_sin.repeat(..., 2)``) while the rotated pairs are adjacent
dimensions (2j, 2j + 1): that is transformers' (and the original V-JEPA's) arithmetic, kept as is.
The tables are computed in the activations' dtype with transformers' operations, so the rotation is
the same to the bit.

Hooks as TransformerLens's rotary models: ``hook_q`` / ``hook_k`` before the rotation,
``hook_rot_q`` / ``hook_rot_k`` after it, all [batch, pos, head, d_head]; the rest as Attention (fused
SDPA unless a hook needs the scores or pattern).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components.attention import Attention
from hooked_vivit.config import HookedViViTConfig


def rope_dim(d_head: int) -> int:
    """Dimensions per axis (frame slot, row, column) that rotate; transformers' d_dim = h_dim = w_dim."""
    return int(2 * ((d_head // 3) // 2))


def _axis_table(pos: torch.Tensor, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # transformers' rotate_queries_or_keys, operation for operation (in the activations' dtype).
    omega = torch.arange(dim // 2, dtype=dtype, device=pos.device)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    freq = pos.unsqueeze(-1) * omega
    return freq.cos().repeat(1, 2), freq.sin().repeat(1, 2)


def rope_tables(cfg: HookedViViTConfig, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [n_ctx, 3 * rope_dim]: the rotation of every token's rotated dimensions."""
    grid, dim = cfg.grid, rope_dim(cfg.d_head)
    ids = torch.arange(grid.n_patches, device=device)
    per_frame = grid.n_rows * grid.n_cols
    slot, row, col = ids // per_frame, (ids % per_frame) // grid.n_cols, ids % grid.n_cols
    tables = [_axis_table(axis, dim, dtype) for axis in (slot, row, col)]
    return torch.cat([c for c, _ in tables], -1), torch.cat([s for _, s in tables], -1)


def _pair_swap(x: torch.Tensor) -> torch.Tensor:
    # (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...), transformers' y.
    y1, y2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-y2, y1), dim=-1).flatten(-2)


class RotaryAttention(Attention):
    def __init__(self, cfg: HookedViViTConfig):
        super().__init__(cfg)
        if cfg.n_prefix_tokens:
            raise ValueError("V-JEPA 2's rotary positions cover patch tokens only (no CLS): set n_prefix_tokens=0")
        self.n_rotated = 3 * rope_dim(cfg.d_head)
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head], q after the rotation
        self.hook_rot_k = HookPoint()  # [batch, pos, head, d_head], k after the rotation
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def rotate(self, x: Float[torch.Tensor, "batch pos head d_head"]) -> Float[torch.Tensor, "batch pos head d_head"]:
        """Apply the 3-D rotary embedding to q or k [batch, pos, head, d_head]."""
        key = (x.dtype, x.device)
        if key not in self._tables:
            # Built outside inference mode: an inference tensor could not join a later autograd run.
            with torch.inference_mode(False), torch.no_grad():
                self._tables[key] = tuple(t[:, None, :] for t in rope_tables(self.cfg, x.dtype, x.device))  # type: ignore[assignment]
        cos, sin = self._tables[key]
        r = self.n_rotated
        head = x[..., :r]
        rotated = head * cos + _pair_swap(head) * sin
        return rotated if r == x.shape[-1] else torch.cat([rotated, x[..., r:]], dim=-1)

    def position_qk(
        self, q: Float[torch.Tensor, "batch pos head d_head"], k: Float[torch.Tensor, "batch pos head d_head"]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k rotated, each hooked after the rotation (TransformerLens's hook_rot_q / hook_rot_k)."""
        return self.hook_rot_q(self.rotate(q)), self.hook_rot_k(self.rotate(k))
