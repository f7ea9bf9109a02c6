"""Looking at a clip: per-layer/head CLS attention (the mean query row on a model without CLS) or
token-level logit attribution over the frames.

- ``token_maps(model, pixel_values)``: the maps, [layers, heads, frame slots, rows, cols]
  (TimeSformer also ``kind="frame_attention"``: the attention each patch receives over time).
- ``overlay(frame, grid_map)``: one frame with a map blended on top (uint8 RGB).
- ``save_grid_png`` / ``save_animation``: the same outside notebooks (PNG grid, GIF or MP4).
- ``interactive(...)``: an ipywidgets viewer (``pip install hooked-vivit[widgets]``): sliders for
  frame, layer and head, a toggle between CLS attention and attribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import torch

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

MapKind = Literal["cls_attention", "attribution", "frame_attention", "query_attention"]


def token_maps(
    model: HookedVideoTransformer,
    pixel_values: torch.Tensor,
    kind: MapKind = "cls_attention",
    class_index: int | None = None,
) -> np.ndarray:
    """[layers, heads, frame slots, rows, cols] maps for the first clip of the batch ("query_attention":
    V-JEPA 2's pooler query, one "layer")."""
    from hooked_vivit.causal.logit_attribution import readout_attention, readout_layers, token_dla

    grid = model.cfg.grid
    if kind == "cls_attention":
        # The readout's attention: the CLS (token 0) rows on the fused attention path, or under mean
        # pooling (VideoMAE, no CLS) the mean query row; V-JEPA 2 the pooler query's (readout_attention).
        with torch.inference_mode():
            rows = readout_attention(model, pixel_values[:1], readout_layers(model))  # [L, H, P]
        return grid.unflatten(rows.float())[1].numpy()
    if kind == "attribution":
        with torch.inference_mode():
            c = int(model(pixel_values[:1]).argmax()) if class_index is None else class_index
        terms = token_dla(model, pixel_values[:1], c)["terms"]  # [L, H, P]
        return grid.unflatten(terms)[1].numpy()
    if kind == "frame_attention":
        # TimeSformer's temporal attention: at (frame t, row, col), the attention that patch receives
        # from the same position's frames (the temporal pattern's column t, averaged over query frames).
        if not hasattr(model, "temporal_maps"):
            raise ValueError(
                f"kind 'frame_attention' needs a model with temporal attention (TimeSformer), not a {type(model).__name__}"
            )
        names = [f"blocks.{l}.temporal_attn.hook_pattern" for l in range(model.cfg.n_layers)]
        with torch.inference_mode():
            _, cache = model.run_with_cache(pixel_values[:1], names_filter=names)
        maps = torch.stack(
            [model.temporal_maps(cache, l).mean(1) for l in range(model.cfg.n_layers)]
        )  # [L, H, T, rows, cols]
        return maps.float().numpy()
    if kind == "query_attention":  # V-JEPA 2's pooler query over the tokens: [1, heads, slots, rows, cols]
        if not hasattr(model, "query_attention_maps"):
            raise ValueError(
                f"kind 'query_attention' needs a model with an attentive pooler (HookedVJEPA2), not a {type(model).__name__}"
            )
        return model.query_attention_maps(pixel_values)
    raise ValueError(
        f"kind must be 'cls_attention', 'attribution', 'frame_attention' or 'query_attention', got {kind!r}"
    )


def _colorize(values: np.ndarray, signed: bool, vmax: float | None = None) -> np.ndarray:
    vmax = float(np.abs(values).max()) if vmax is None else vmax
    vmax = vmax or 1.0
    if signed:
        u = np.clip((values / vmax + 1) / 2 * 255, 0, 255).astype(np.uint8)
        return cv2.cvtColor(cv2.applyColorMap(u, cv2.COLORMAP_COOL), cv2.COLOR_BGR2RGB)
    u = np.clip(values / vmax * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def overlay(
    frame: np.ndarray,
    grid_map: np.ndarray,
    *,
    alpha: float = 0.5,
    signed: bool = False,
    vmax: float | None = None,
    patch_size: tuple[int, int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Blend a [rows, cols] token map onto a uint8 RGB frame.

    With ``patch_size`` (the tubelet's pixel height and width; the renderers below pass the
    model's) cell (r, c) lands exactly on its token's pixels, rows [r*h, (r+1)*h) and columns
    [c*w, (c+1)*w) of the model's input (``image_size``, default the frame's size; a frame of
    another size gets the same picture scaled), and the pixels no token sees (the bottom H % h rows
    and right W % w columns) are left as they are. Without ``patch_size`` the map is stretched over
    the whole frame (nearest neighbour): the same thing when the frame is a whole number of tubelets."""
    H, W = frame.shape[:2]
    colors = _colorize(grid_map, signed, vmax)
    if patch_size is None:
        heat = cv2.resize(colors, (W, H), interpolation=cv2.INTER_NEAREST)
        return cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)
    h, w = patch_size
    Hm, Wm = image_size if image_size is not None else (H, W)
    rows, cols = grid_map.shape
    if rows * h > Hm or cols * w > Wm:
        raise ValueError(
            f"a {rows}x{cols} map of {h}x{w}-pixel tokens needs an input of at least {rows * h}x{cols * w}, got {Hm}x{Wm}"
        )
    heat = np.zeros((Hm, Wm, 3), np.uint8)
    seen = np.zeros((Hm, Wm), np.uint8)  # 1 where some token sees the pixel
    heat[: rows * h, : cols * w] = np.repeat(np.repeat(colors, h, axis=0), w, axis=1)
    seen[: rows * h, : cols * w] = 1
    if (Hm, Wm) != (H, W):
        heat = cv2.resize(heat, (W, H), interpolation=cv2.INTER_NEAREST)
        seen = cv2.resize(seen, (W, H), interpolation=cv2.INTER_NEAREST)
    blended = cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)
    return np.where(seen[..., None].astype(bool), blended, frame)


def _frames_for(frames: np.ndarray, model: HookedVideoTransformer) -> tuple[np.ndarray, int]:
    t = model.cfg.tubelet_size[0]
    if frames.shape[0] != model.cfg.num_frames:
        raise ValueError(f"expected {model.cfg.num_frames} frames (the clip the maps come from), got {frames.shape[0]}")
    return frames, t


def _geometry(model: HookedVideoTransformer) -> dict:
    return {"patch_size": tuple(model.cfg.tubelet_size[1:]), "image_size": tuple(model.cfg.image_size)}


def _overlay_frame(
    model: HookedVideoTransformer, frame: np.ndarray, index: int, slot_maps: np.ndarray, **kwargs: Any
) -> np.ndarray:
    """Frame ``index`` with its frame slot's map; a trailing frame that no token sees stays bare."""
    slot = model.cfg.grid.frame_slot_of_frame(index)
    if slot is None:
        return frame.copy()
    return overlay(frame, slot_maps[slot], **_geometry(model), **kwargs)


def render_frames(
    model: HookedVideoTransformer,
    frames: np.ndarray,
    maps: np.ndarray,
    layer: int,
    head: int | None,
    *,
    signed: bool = False,
) -> np.ndarray:
    """Every frame with its frame slot's map (one head, or the sum over heads) -> [T, H, W, 3]."""
    frames, _ = _frames_for(frames, model)
    m = maps[layer].sum(0) if head is None else maps[layer, head]
    vmax = float(np.abs(m).max())
    return np.stack([_overlay_frame(model, frames[i], i, m, signed=signed, vmax=vmax) for i in range(len(frames))])


def save_grid_png(
    model: HookedVideoTransformer,
    frames: np.ndarray,
    maps: np.ndarray,
    path: str | Path,
    *,
    layers: list[int] | None = None,
    signed: bool = False,
) -> Path:
    """A PNG grid: one row per (layer, head), one column per frame slot."""
    frames, t = _frames_for(frames, model)
    layers = list(range(maps.shape[0])) if layers is None else layers
    rows = []
    for l in layers:
        for h in range(maps.shape[1]):
            vmax = float(np.abs(maps[l, h]).max())
            cells = [
                overlay(frames[s * t], maps[l, h, s], signed=signed, vmax=vmax, **_geometry(model))
                for s in range(maps.shape[2])
            ]
            row = np.concatenate([np.pad(c, ((1, 1), (1, 1), (0, 0)), constant_values=255) for c in cells], axis=1)
            cv2.putText(row, f"L{l}H{h}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(row)
    path = Path(path)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def save_animation(
    model: HookedVideoTransformer,
    frames: np.ndarray,
    maps: np.ndarray,
    path: str | Path,
    *,
    layer: int = -1,
    head: int | None = None,
    signed: bool = False,
    fps: float = 8.0,
) -> Path:
    """The clip with one layer's map (a head, or all heads summed) as a GIF or MP4."""
    from PIL import Image

    from hooked_vivit.video import write_video

    path = Path(path)
    video = render_frames(model, frames, maps, layer % maps.shape[0], head, signed=signed)
    if path.suffix.lower() == ".gif":
        imgs = [Image.fromarray(f) for f in video]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
        return path
    if path.suffix.lower() == ".mp4":
        return write_video(video, path, fps=fps)
    raise ValueError(f"{path}: write .gif or .mp4")


def interactive(
    model: HookedVideoTransformer, pixel_values: torch.Tensor, frames: np.ndarray, *, class_index: int | None = None
):
    """An ipywidgets viewer: frame, layer and head sliders (head -1 = all heads summed) and a map toggle."""
    try:
        import ipywidgets as widgets
    except ImportError as e:
        raise ImportError("the interactive viewer needs ipywidgets: pip install 'hooked-vivit[widgets]'") from e
    maps = {
        "cls_attention": token_maps(model, pixel_values, "cls_attention"),
        "attribution": token_maps(model, pixel_values, "attribution", class_index),
    }
    frame = widgets.IntSlider(0, 0, len(frames) - 1, description="frame")
    layer = widgets.IntSlider(model.cfg.n_layers - 1, 0, model.cfg.n_layers - 1, description="layer")
    head = widgets.IntSlider(-1, -1, model.cfg.n_heads - 1, description="head (-1 all)")
    kind = widgets.ToggleButtons(options=list(maps), description="map")
    image = widgets.Image(format="png")

    def update(*_):
        m = maps[kind.value][layer.value]
        m = m.sum(0) if head.value < 0 else m[head.value]
        shown = _overlay_frame(
            model, frames[frame.value], frame.value, m, signed=kind.value == "attribution", vmax=float(np.abs(m).max())
        )
        scale = max(1, 256 // shown.shape[0])
        shown = cv2.resize(shown, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        image.value = cv2.imencode(".png", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))[1].tobytes()

    for w in (frame, layer, head, kind):
        w.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([frame, layer, head]), kind, image])
    box.update = update  # for tests and scripted use
    return box
