"""Token index <-> (frame slot, row, col): the layout of ViViT's tokens, and the pixels each sees.

The first ``n_prefix`` tokens carry no place on the grid: 1 for ViViT (token 0 is CLS), 0 for
VideoMAE (patches only). Patch tokens follow in HF's order (Conv3d output flattened over t, h, w):
``index = n_prefix + t * (rows * cols) + r * cols + c``. A frame slot ``t`` covers input frames
``[t * tubelet_t, (t + 1) * tubelet_t)``; token (t, r, c) sees exactly the pixels of its Conv3d
window: those frames, pixel rows ``[r * h, (r + 1) * h)`` and columns ``[c * w, (c + 1) * w)``.

Sizes that are not multiples of the tubelet (transformers accepts them): the Conv3d has stride =
kernel, so ``frame slots = num_frames // t``, ``rows = H // h``, ``cols = W // w`` (floors, as HF
counts its position embeddings), and the trailing ``num_frames % t`` frames, the bottom ``H % h``
pixel rows and the right ``W % w`` pixel columns feed NO token: they cannot change any activation
or logit. ``covered_frames`` / ``covered_rows`` / ``covered_cols`` give the part tokens see;
``token_at`` and ``frame_slot_of_frame`` answer None for pixels / frames outside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    # The input's extent (num_frames, (H, W)), when known: a config's grid carries it, so the pixels
    # past the last whole tubelet can be told apart from pixels outside the clip.
    num_frames: int | None = None
    image_size: tuple[int, int] | None = None
    # Tokens before the patches (CLS): 1 for ViViT, 0 for VideoMAE.
    n_prefix: int = 1

    @property
    def n_patches(self) -> int:
        return self.n_frame_slots * self.n_rows * self.n_cols

    @property
    def n_ctx(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frame_slots, self.n_rows, self.n_cols)

    def index(self, t: int, r: int, c: int) -> int:
        """Token index of (frame slot, row, col)."""
        for what, v, n in (("frame slot", t, self.n_frame_slots), ("row", r, self.n_rows), ("col", c, self.n_cols)):
            if not 0 <= v < n:
                raise IndexError(f"{what} {v} out of range [0, {n})")
        return self.n_prefix + (t * self.n_rows + r) * self.n_cols + c

    def coords(self, index: int) -> tuple[int, int, int] | None:
        """(frame slot, row, col) of a patch token; None for a prefix token (CLS), which has no place on the grid."""
        if not 0 <= index < self.n_ctx:
            layout = (
                f"0 is CLS, 1..{self.n_ctx - 1} patches"
                if self.n_prefix == 1
                else f"{self.n_prefix} prefix tokens, then patches"
            )
            raise IndexError(f"token {index} out of range [0, {self.n_ctx}) ({layout})")
        if index < self.n_prefix:
            return None
        p = index - self.n_prefix
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

    @property
    def covered_frames(self) -> range:
        """Input frames some token sees: all but the trailing ``num_frames % t``."""
        return range(self.n_frame_slots * self.tubelet_size[0])

    @property
    def covered_rows(self) -> slice:
        """Pixel rows some token sees: all but the bottom ``H % h``."""
        return slice(0, self.n_rows * self.tubelet_size[1])

    @property
    def covered_cols(self) -> slice:
        """Pixel columns some token sees: all but the right ``W % w``."""
        return slice(0, self.n_cols * self.tubelet_size[2])

    def _check_inside(self, what: str, v: int, extent: int | None) -> None:
        if v < 0 or (extent is not None and v >= extent):
            raise IndexError(f"{what} {v} is outside the clip [0, {extent if extent is not None else 'inf'})")

    def frame_slot_of_frame(self, frame: int) -> int | None:
        """The frame slot whose tokens see input frame ``frame``; None for a trailing frame that
        fills no whole tubelet (no token sees it)."""
        self._check_inside("frame", frame, self.num_frames)
        slot = frame // self.tubelet_size[0]
        return slot if slot < self.n_frame_slots else None

    def frames_of_slot(self, t: int) -> range:
        if not 0 <= t < self.n_frame_slots:
            raise IndexError(f"frame slot {t} out of range [0, {self.n_frame_slots})")
        return range(t * self.tubelet_size[0], (t + 1) * self.tubelet_size[0])

    def token_at(self, frame: int, row: int, col: int) -> int | None:
        """The patch token whose Conv3d window holds pixel (frame, row, col); None when no token
        sees it (it lies past the last whole tubelet in time, height or width)."""
        H, W = self.image_size if self.image_size is not None else (None, None)
        self._check_inside("frame", frame, self.num_frames)
        self._check_inside("pixel row", row, H)
        self._check_inside("pixel column", col, W)
        t, h, w = self.tubelet_size
        slot, r, c = frame // t, row // h, col // w
        if slot >= self.n_frame_slots or r >= self.n_rows or c >= self.n_cols:
            return None
        return self.index(slot, r, c)

    def pixel_box(self, index: int) -> tuple[range, slice, slice]:
        """(frames, row pixel slice, col pixel slice) that a patch token sees: its Conv3d window."""
        coords = self.coords(index)
        if coords is None:
            raise IndexError(f"token {index} is CLS, which sees no pixel box (it attends to every token)")
        t, r, c = coords
        _, h, w = self.tubelet_size
        return self.frames_of_slot(t), slice(r * h, (r + 1) * h), slice(c * w, (c + 1) * w)

    def unflatten(
        self, x: Float[torch.Tensor, "... n_ctx"], dim: int = -1
    ) -> tuple[torch.Tensor, Float[torch.Tensor, "... slots rows cols"]]:
        """Split a per-token tensor along ``dim`` into (prefix part, [..., slots, rows, cols]). With one
        prefix token (CLS) the prefix part drops ``dim``; otherwise it keeps it ([..., n_prefix, ...])."""
        dim = dim % x.ndim
        if x.shape[dim] != self.n_ctx:
            raise ValueError(f"dim {dim} has {x.shape[dim]} entries, expected n_ctx = {self.n_ctx}")
        cls = x.narrow(dim, 0, self.n_prefix)
        if self.n_prefix == 1:
            cls = cls.squeeze(dim)
        patches = x.narrow(dim, self.n_prefix, self.n_patches)
        return cls, patches.unflatten(dim, self.shape)

    def flatten(self, cls: torch.Tensor, grid: torch.Tensor, dim: int = -3) -> torch.Tensor:
        """Inverse of unflatten: ``grid``'s three dims starting at ``dim`` become the patch tokens."""
        dim = dim % grid.ndim
        flat = grid.flatten(dim, dim + 2)
        return torch.cat([cls.unsqueeze(dim) if self.n_prefix == 1 else cls, flat], dim=dim)
