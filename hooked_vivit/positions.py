"""Position groups: which tokens of a video model a patch, an ablation or an attention-row query
names (a token, a frame slot, a box on the token grid, CLS, every patch token, everything), resolved
to sorted token indices with errors that say what was expected.

Shared by the causal tools (patching, ablation, attribution) and by the model's attention rows, so
it sits below all of them; ``hooked_vivit.causal.patching`` re-exports its public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer


@dataclass(frozen=True)
class Region:
    """A box on the token grid: frame slots x rows x cols (None = all), optionally with CLS."""

    frame_slots: int | Sequence[int] | None = None
    rows: int | Sequence[int] | None = None
    cols: int | Sequence[int] | None = None
    include_cls: bool = False


@dataclass(frozen=True)
class FrameSlot:
    """Every patch token of one tubelet time index."""

    t: int


PositionGroup = Union[None, str, int, Sequence[int], torch.Tensor, Region, FrameSlot]  # noqa: UP007  (a runtime alias, readable in any Python)


def checked_index(v: Any, n: int, what: str) -> int:
    """One index in [0, n): Python/numpy ints and 0-dim integer tensors; floats, bools and negatives raise."""
    if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0:
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {v!r} ({type(v).__name__})")
    v = int(v)
    if v < 0:
        raise ValueError(
            f"{what} {v} is negative; indices count 0..{n - 1} (no wrap-around, so a label never names another token)"
        )
    if v >= n:
        raise ValueError(f"{what} {v} is out of range 0..{n - 1}")
    return v


def _is_mask(x: Any) -> bool:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.dtype in (torch.bool, np.bool_)
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, (bool, np.bool_)) for v in x)


def checked_indices(x: Any, n: int, what: str) -> list[int]:
    """None (all), an index, a sequence or 1-d tensor of indices, a slice, or a bool mask of length n."""
    if x is None:
        return list(range(n))
    if isinstance(x, slice):
        for b in (x.start, x.stop):
            if b is not None:
                checked_index(b, n + 1, f"{what} slice bound")  # no negatives, nothing past the end
        if x.step is not None and checked_index(x.step, n + 1, f"{what} slice step") < 1:
            raise ValueError(f"{what} {x} needs a positive step")
        out = list(range(n))[x]
        if not out:
            raise ValueError(f"{what} {x} selects nothing out of 0..{n - 1}")
        return out
    if _is_mask(x):
        mask = torch.as_tensor(np.asarray(x, dtype=bool) if not isinstance(x, torch.Tensor) else x)
        if mask.shape != (n,):
            raise ValueError(f"a bool mask of {what}s needs shape ({n},), got {tuple(mask.shape)}")
        return mask.nonzero().flatten().tolist()
    array = isinstance(x, (torch.Tensor, np.ndarray))
    if array:
        if x.ndim > 1:
            raise ValueError(
                f"{what}s must be an index or a 1-d list of indices, got an array of shape {tuple(x.shape)}"
            )
        x = list(x) if x.ndim == 1 else [x]
    elif not isinstance(x, (list, tuple, range)):
        x = [x]
    indices = [checked_index(v, n, what) for v in x]
    zero_one = len(indices) == n and set(indices) <= {0, 1}
    if zero_one and (array or len(set(indices)) < n):  # indices [0, 1] of two are what they say
        raise ValueError(
            f"{what}s: an integer array of length {n} holding only 0 and 1 is ambiguous (a mask over the {n} "
            f"{what}s, or the indices 0 and 1?); pass a bool mask (x.bool()) or unique indices"
        )
    if len(set(indices)) < len(indices):
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise ValueError(
            f"{what}s must be unique indices: {repeated} appear{'s' if len(repeated) == 1 else ''} more than once "
            f"in {indices if len(indices) <= 20 else f'{len(indices)} indices'} (a mask? pass a bool mask of length {n})"
        )
    return sorted(indices)


def resolve_positions(model: HookedVideoTransformer, group: PositionGroup) -> tuple[int, ...] | None:
    """A position group -> sorted token indices (None means every token).

    Accepted: None or "all"; "cls"; "patches" (every token but CLS); "pooled" (the tokens the
    classifier reads: CLS, or token 0, with first-token pooling; every patch token with mean pooling); a token index; a sequence or 1-d
    tensor of token indices; a bool mask over tokens ([n_ctx]) or over the grid ([slots, rows, cols]);
    ``FrameSlot(t)``; ``Region(frame_slots, rows, cols, include_cls)`` (each an index, a list, a slice
    or a bool mask). Empty groups, out-of-range or negative indices and non-integers raise.
    """
    cfg = getattr(model, "cfg", model)
    grid = cfg.grid
    if group is None or (isinstance(group, str) and group == "all"):
        return None
    no_cls = f"this model has no CLS token (n_prefix_tokens=0: {type(model).__name__} pools over the patch tokens); use 'pooled', 'patches', 'all', a token index, FrameSlot or Region"
    if (isinstance(group, str) and group == "cls") or (isinstance(group, Region) and group.include_cls):
        if grid.n_prefix == 0:
            raise ValueError(f"position group {group!r}: " + no_cls)
    if isinstance(group, str):
        if group == "cls":
            return (0,)
        if group == "patches":
            return tuple(range(grid.n_prefix, cfg.n_ctx))
        if group == "pooled":  # the tokens the classifier reads: CLS / token 0, or every patch token it averages
            return (0,) if cfg.pooling == "first" else tuple(range(grid.n_prefix, cfg.n_ctx))
        raise ValueError(
            f"unknown position group {group!r}; use 'all', 'cls', 'patches', 'pooled', a token index, a list, a bool mask, FrameSlot or Region"
        )
    if isinstance(group, FrameSlot):
        return tuple(grid.positions(frame_slots=checked_index(group.t, grid.n_frame_slots, "frame slot")))
    if isinstance(group, Region):
        axes = (
            checked_indices(group.frame_slots, grid.n_frame_slots, "frame slot"),
            checked_indices(group.rows, grid.n_rows, "row"),
            checked_indices(group.cols, grid.n_cols, "col"),
        )
        pos = grid.positions(*axes) if all(axes) else []
        if not pos and not group.include_cls:
            raise ValueError(
                f"{group} selects no token (grid of {grid.n_frame_slots} frame slots x {grid.n_rows} rows x {grid.n_cols} cols)"
            )
        return tuple(([0] if group.include_cls else []) + pos)
    if isinstance(group, (torch.Tensor, np.ndarray)) and not _is_mask(group) and tuple(group.shape) == grid.shape:
        raise ValueError(
            f"an integer array of the token grid's shape {grid.shape} (frame slots, rows, cols): a mask over the grid "
            "must be bool (x.bool()); token indices are a 1-d list"
        )
    if _is_mask(group) and isinstance(group, (torch.Tensor, np.ndarray)) and tuple(group.shape) == grid.shape:
        pos = [
            grid.n_prefix + i for i in torch.as_tensor(group).flatten().nonzero().flatten().tolist()
        ]  # a mask over the token grid
    elif isinstance(group, (int, np.integer, torch.Tensor, np.ndarray, list, tuple, range, bool)):
        pos = checked_indices(group, cfg.n_ctx, "token position")
    else:
        raise ValueError(
            f"unknown position group {group!r}; use 'all', 'cls', 'patches', 'pooled', a token index, a list, a bool mask, FrameSlot or Region"
        )
    if not pos:
        raise ValueError(f"the position group {group!r} selects no token")
    return tuple(pos)


__all__ = ["FrameSlot", "PositionGroup", "Region", "checked_index", "checked_indices", "resolve_positions"]
