"""Ablation: remove information and watch the output.

- Activation ablation on any hook and position group: ``zero``, ``mean`` (over the positions of
  the run itself, or over a reference set of videos), ``resample`` (from another video's run).
- Input-space region ablation: zero, blacken, mean-fill or blur a spatio-temporal box of pixels
  (the reference paper's Table 1 zeroes the ball-pin region).
- Token-space region ablation: the tubelet embeddings of a box of tokens.
- ``topk_table``: the top-k classes before and after, with names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import torch

from hooked_vivit.components import hook_layout
from hooked_vivit.labels import top_k
from hooked_vivit.positions import PositionGroup, resolve_positions

if TYPE_CHECKING:  # annotations only: the causal tools take any HookedVideoTransformer (ViViT, VideoMAE, ...)
    from hooked_vivit.model import HookedVideoTransformer

Mode = Literal["zero", "mean", "resample"]


def ablation_hook(
    model: HookedVideoTransformer,
    hook_name: str,
    positions: PositionGroup = None,
    *,
    mode: Mode = "zero",
    reference: torch.Tensor | None = None,
) -> Callable:
    """A forward hook that ablates ``hook_name`` at ``positions``.

    ``mode="mean"`` without ``reference`` replaces each ablated position with the mean over the
    ablated positions of the same run; with ``reference`` ([n, ...] activations of a reference set,
    e.g. ``cache[hook_name]`` of several videos) with their mean over videos at the same positions.
    ``mode="resample"`` takes ``reference`` ([1, ...] or the batch's size: another video's
    activation) at those positions.
    """
    model.check_hook_names([hook_name])
    pos = resolve_positions(model, positions)
    pos_axis = hook_layout.pos_axis(hook_name, model.cfg)  # an attention map's query axis
    if pos is not None and pos_axis is None:
        raise ValueError(
            f"{hook_name} has no token axis (it fires on the pooled vector); ablate it with positions=None"
        )
    if mode in ("resample",) and reference is None:
        raise ValueError("resample ablation needs reference activations (another video's cache entry)")
    if mode not in ("zero", "mean", "resample"):
        raise ValueError(f"mode must be 'zero', 'mean' or 'resample', got {mode!r}")
    ref = None
    if reference is not None:
        ref = reference.mean(0, keepdim=True) if mode == "mean" else reference

    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        index = [slice(None)] * act.ndim
        if pos is not None:
            index[pos_axis] = list(pos)
        index_t = tuple(index)
        if mode == "zero":
            act[index_t] = 0.0
        elif mode == "mean" and ref is None:
            if pos is None:
                raise ValueError("mean ablation over positions needs a position group, or a reference set")
            act[index_t] = act[index_t].mean(pos_axis, keepdim=True).expand_as(act[index_t])
        else:
            assert ref is not None
            if ref.shape[1:] != act.shape[1:]:
                raise ValueError(
                    f"reference activation for {hook_name} has shape {tuple(ref.shape)}, the run {tuple(act.shape)}"
                )
            act[index_t] = ref.to(act.device, act.dtype).expand(act.shape[0], *act.shape[1:])[index_t]
        return act

    return hook


def ablate(
    model: HookedVideoTransformer,
    pixel_values: torch.Tensor,
    hook_name: str,
    positions: PositionGroup = None,
    *,
    mode: Mode = "zero",
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits with ``hook_name`` ablated at ``positions`` (see ``ablation_hook``)."""
    hook = ablation_hook(model, hook_name, positions, mode=mode, reference=reference)
    with torch.inference_mode():
        return model.run_with_hooks(pixel_values, fwd_hooks=[(hook_name, hook)])


def token_region_ablation(
    model: HookedVideoTransformer,
    pixel_values: torch.Tensor,
    region: PositionGroup,
    *,
    mode: Mode = "zero",
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ablate the tubelet embeddings (``hook_embed``) of a token region."""
    return ablate(model, pixel_values, "hook_embed", region, mode=mode, reference=reference)


@dataclass(frozen=True)
class PixelBox:
    """A spatio-temporal box of pixels: frames [t0, t1), rows [y0, y1), cols [x0, x1)."""

    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def from_tokens(cls, grid: Any, positions: Sequence[int]) -> PixelBox:
        """The pixel box covering a set of patch tokens."""
        boxes = [
            grid.pixel_box(p) for p in positions if grid.coords(p) is not None
        ]  # a CLS token has no pixels; VideoMAE's token 0 does
        if not boxes:
            raise ValueError("no patch tokens given (CLS has no pixels)")
        return cls(
            min(b[0].start for b in boxes),
            max(b[0].stop for b in boxes),
            min(b[1].start for b in boxes),
            max(b[1].stop for b in boxes),
            min(b[2].start for b in boxes),
            max(b[2].stop for b in boxes),
        )

    @classmethod
    def from_mask(cls, mask: np.ndarray, margin: int = 0) -> PixelBox:
        """The bounding box of a boolean mask [T, H, W] (e.g. a synthetic pair's ball and pins)."""
        t, y, x = np.nonzero(mask)
        if len(t) == 0:
            raise ValueError("the mask is empty")
        T, H, W = mask.shape
        return cls(
            int(t.min()),
            int(t.max()) + 1,
            max(0, int(y.min()) - margin),
            min(H, int(y.max()) + 1 + margin),
            max(0, int(x.min()) - margin),
            min(W, int(x.max()) + 1 + margin),
        )


def ablate_pixels(
    pixel_values: torch.Tensor, box: PixelBox, *, mode: str = "zero", blur_sigma: float = 8.0, config: Any = None
) -> torch.Tensor:
    """A copy of pixel values [B, T, C, H, W] with the box ablated.

    ``zero``: 0 in normalised units (what zeroing the model's input means); ``black``: the value of
    a black pixel (ViViT's -3; ``config``, a model or its config, gives its own: VideoMAE's
    -mean / std per channel); ``mean``: the box's mean colour; ``blur``: a Gaussian blur of each frame,
    pasted into the box.
    """
    if pixel_values.ndim != 5:
        raise ValueError(f"pixel values must be [batch, frames, C, H, W], got {tuple(pixel_values.shape)}")
    B, T, C, H, W = pixel_values.shape
    if not (0 <= box.t0 < box.t1 <= T and 0 <= box.y0 < box.y1 <= H and 0 <= box.x0 < box.x1 <= W):
        raise ValueError(f"{box} does not fit inside clips of {T} frames of {H}x{W}")
    out = pixel_values.clone()
    sel = (slice(None), slice(box.t0, box.t1), slice(None), slice(box.y0, box.y1), slice(box.x0, box.x1))
    if mode == "zero":
        out[sel] = 0.0
    elif mode == "black":
        if config is None:
            out[sel] = -3.0  # VivitImageProcessor maps uint8 0 to -3
        else:
            from hooked_vivit.video import normalize

            black = normalize(torch.zeros(1, 1, 1, 3, dtype=torch.uint8), config=config)  # [1, 3, 1, 1]
            out[sel] = black.to(out.device, out.dtype)
    elif mode == "mean":
        out[sel] = out[sel].mean(dim=(1, 3, 4), keepdim=True).expand_as(out[sel])
    elif mode == "blur":
        frames = pixel_values[:, box.t0 : box.t1].permute(0, 1, 3, 4, 2).cpu().float().numpy()
        blurred = np.stack([[cv2.GaussianBlur(f, (0, 0), blur_sigma) for f in clip] for clip in frames])
        blurred_t = torch.from_numpy(blurred).permute(0, 1, 4, 2, 3).to(out.device, out.dtype)
        out[sel] = blurred_t[:, :, :, box.y0 : box.y1, box.x0 : box.x1]
    else:
        raise ValueError(f"mode must be 'zero', 'black', 'mean' or 'blur', got {mode!r}")
    return out


def ablate_pixel_mask(
    pixel_values: torch.Tensor, mask: np.ndarray | torch.Tensor, *, mode: str = "zero", config: Any = None
) -> torch.Tensor:
    """A copy of pixel values [B, T, C, H, W] with the pixels of a boolean ``mask`` ([T, H, W], or
    [B, T, H, W]: one mask per row) set to 0 (``zero``, normalised units) or black (``black``: ViViT's
    -3, or with ``config``, a model or its config, that model's own black pixel per channel)."""
    if pixel_values.ndim != 5:
        raise ValueError(f"pixel values must be [batch, frames, C, H, W], got {tuple(pixel_values.shape)}")
    m = torch.as_tensor(np.asarray(mask), dtype=torch.bool, device=pixel_values.device)
    B, T, C, H, W = pixel_values.shape
    if m.shape not in ((T, H, W), (B, T, H, W)):
        raise ValueError(f"mask must be [T, H, W] = {(T, H, W)} or [B, T, H, W], got {tuple(m.shape)}")
    if mode not in ("zero", "black"):
        raise ValueError(f"mode must be 'zero' or 'black', got {mode!r}")
    m = m.expand(B, T, H, W)[:, :, None].expand(B, T, C, H, W)
    if mode == "black" and config is not None:
        from hooked_vivit.video import normalize

        black = normalize(torch.zeros(1, 1, 1, 3, dtype=torch.uint8), config=config)  # [1, 3, 1, 1]
        return torch.where(m, black.to(pixel_values.device, pixel_values.dtype), pixel_values)
    return pixel_values.masked_fill(m, 0.0 if mode == "zero" else -3.0)


def token_pixel_mask(grid: Any, positions: Sequence[int], frames: int, height: int, width: int) -> np.ndarray:
    """Boolean [T, H, W] mask of exactly the pixels the given patch tokens see (CLS has none)."""
    mask = np.zeros((frames, height, width), dtype=bool)
    for p in positions:
        if grid.coords(p) is None:  # CLS (not VideoMAE's token 0, a patch)
            continue
        fr, rows, cols = grid.pixel_box(p)
        mask[fr.start : fr.stop, rows, cols] = True
    return mask


def random_boxes_like(mask: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random control regions [n, T, H, W] the size of ``mask`` [T, H, W]: in every frame where the
    mask has A pixels, a square of side round(sqrt(A)) (so about A pixels), the same random centre in
    all frames of one control (a static box), shifted inside the frame where it would stick out."""
    mask = np.asarray(mask, dtype=bool)
    T, H, W = mask.shape
    areas = mask.reshape(T, -1).sum(1)
    if areas.sum() == 0:
        raise ValueError("the mask is empty: no region to match")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, T, H, W), dtype=bool)
    for i in range(n):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        for t in np.nonzero(areas)[0]:
            side = int(min(max(1, round(float(np.sqrt(areas[t])))), H, W))
            y0 = int(np.clip(round(cy - side / 2), 0, H - side))
            x0 = int(np.clip(round(cx - side / 2), 0, W - side))
            out[i, t, y0 : y0 + side, x0 : x0 + side] = True
    return out


def topk_table(before: torch.Tensor, after: torch.Tensor, id2label: Mapping[int, str], k: int = 6) -> list[dict]:
    """The top-k classes of the ``before`` run (first batch row), with their logits after."""
    before, after = before.detach().float(), after.detach().float()
    if before.ndim == 2:
        before, after = before[0], after[0]
    rows = []
    for entry in top_k(before, id2label, k)[0]:
        rows.append(
            {
                "class": entry.index,
                "name": entry.label,
                "before": entry.logit,
                "after": float(after[entry.index]),
                "delta": float(after[entry.index]) - entry.logit,
            }
        )
    return rows


def format_topk_table(rows: list[dict]) -> str:
    lines = [f"{'class':>5}  {'name':<28} {'before':>9} {'after':>9} {'delta':>8}"]
    lines += [
        f"{r['class']:>5}  {r['name']:<28} {r['before']:>9.4f} {r['after']:>9.4f} {r['delta']:>+8.4f}" for r in rows
    ]
    return "\n".join(lines)
