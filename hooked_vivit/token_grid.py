"""Token index <-> (frame slot, row, col): the layout of ViViT's tokens.

Token 0 is CLS. Patch tokens follow in HF's order (Conv3d output flattened over t, h, w):
``index = 1 + t * (rows * cols) + r * cols + c``. A frame slot ``t`` covers input frames
``[t * tubelet_t, (t + 1) * tubelet_t)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from jaxtyping import Float


def _as_list(x: int | Iterable[int] | slice | None, n: int, what: str) -> list[int]:
    if x is None:
        return list(range(n))
    if isinstance(x, slice):
        return list(range(n))[x]
    items = [int(x)] if isinstance(x, int) else [int(i) for i in x]
    for i in items:
        if not 0 <= i < n:
            raise IndexError(f"{what} {i} out of range [0, {n})")
    return items


@dataclass(frozen=True)
class TokenGrid:
    n_frame_slots: int
    n_rows: int
    n_cols: int
    tubelet_size: tuple[int, int, int] = (2, 16, 16)

    @property
    def n_patches(self) -> int:
        return self.n_frame_slots * self.n_rows * self.n_cols

    @property
    def n_ctx(self) -> int:
        return 1 + self.n_patches

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frame_slots, self.n_rows, self.n_cols)

    def index(self, t: int, r: int, c: int) -> int:
        """Token index of (frame slot, row, col)."""
        for what, v, n in (("frame slot", t, self.n_frame_slots), ("row", r, self.n_rows), ("col", c, self.n_cols)):
            if not 0 <= v < n:
                raise IndexError(f"{what} {v} out of range [0, {n})")
        return 1 + (t * self.n_rows + r) * self.n_cols + c

    def coords(self, index: int) -> tuple[int, int, int] | None:
        """(frame slot, row, col) of a patch token; None for token 0, CLS, which has no place on the grid."""
        if not 0 <= index < self.n_ctx:
            raise IndexError(f"token {index} out of range [0, {self.n_ctx}) (0 is CLS, 1..{self.n_ctx - 1} patches)")
        if index == 0:
            return None
        p = index - 1
        return p // (self.n_rows * self.n_cols), (p // self.n_cols) % self.n_rows, p % self.n_cols

    def label(self, index: int) -> str:
        """``"CLS"`` or ``"t{slot} r{row} c{col}"``: a readable name for a token (plots, circuitsvis)."""
        coords = self.coords(index)
        return "CLS" if coords is None else "t{} r{} c{}".format(*coords)

    def positions(
        self,
        frame_slots: int | Iterable[int] | slice | None = None,
        rows: int | Iterable[int] | slice | None = None,
        cols: int | Iterable[int] | slice | None = None,
    ) -> list[int]:
        """Token indices of a box on the grid (None = all), sorted."""
        ts = _as_list(frame_slots, self.n_frame_slots, "frame slot")
        rs = _as_list(rows, self.n_rows, "row")
        cs = _as_list(cols, self.n_cols, "col")
        return sorted(self.index(t, r, c) for t in ts for r in rs for c in cs)

    def frame_slot_of_frame(self, frame: int) -> int:
        return frame // self.tubelet_size[0]

    def frames_of_slot(self, t: int) -> range:
        return range(t * self.tubelet_size[0], (t + 1) * self.tubelet_size[0])

    def pixel_box(self, index: int) -> tuple[range, slice, slice]:
        """(frames, row pixel slice, col pixel slice) that a patch token sees."""
        coords = self.coords(index)
        if coords is None:
            raise IndexError("token 0 is CLS, which sees no pixel box (it attends to every token)")
        t, r, c = coords
        _, h, w = self.tubelet_size
        return self.frames_of_slot(t), slice(r * h, (r + 1) * h), slice(c * w, (c + 1) * w)

    def unflatten(
        self, x: Float[torch.Tensor, "... n_ctx"], dim: int = -1
    ) -> tuple[torch.Tensor, Float[torch.Tensor, "... slots rows cols"]]:
        """Split a per-token tensor along ``dim`` into (CLS part, [..., slots, rows, cols])."""
        dim = dim % x.ndim
        if x.shape[dim] != self.n_ctx:
            raise ValueError(f"dim {dim} has {x.shape[dim]} entries, expected n_ctx = {self.n_ctx}")
        cls = x.narrow(dim, 0, 1).squeeze(dim)
        patches = x.narrow(dim, 1, self.n_patches)
        return cls, patches.unflatten(dim, self.shape)

    def flatten(self, cls: torch.Tensor, grid: torch.Tensor, dim: int = -3) -> torch.Tensor:
        """Inverse of unflatten: ``grid``'s three dims starting at ``dim`` become tokens 1..n."""
        dim = dim % grid.ndim
        flat = grid.flatten(dim, dim + 2)
        return torch.cat([cls.unsqueeze(dim), flat], dim=dim)

