"""Reading SAE features on video: top-activating tokens and clips, feature maps over frames,
minimal-pair differences after the divergence frame, and feature-level patching.

Every function runs the model spliced WITH the error term (hooked_vivit.sae.splice), so the
unpatched runs are the model's own and a feature edit is the only change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hooked_vivit.sae.splice import feature_acts, splice

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer


def clip_features(model: HookedVideoTransformer, sae: Any, hook: str, dataset: Any, *, batch: int = 16) -> torch.Tensor:
    """Feature activations [clips, n_ctx, d_sae] of every clip of a SyntheticClips / VideoFolder."""
    out = []
    for i in range(0, len(dataset), batch):
        x = torch.stack([dataset[j][0] for j in range(i, min(i + batch, len(dataset)))])
        out.append(feature_acts(model, sae, hook, x.to(model.W_E.device))[1].float().cpu())
    return torch.cat(out)


def top_tokens(features: torch.Tensor, feature: int, grid: Any, k: int = 10) -> list[dict]:
    """The ``k`` tokens where ``feature`` is largest: clip, token, slot, row, col (None for CLS), activation."""
    values = features[..., feature].flatten()
    top = values.topk(min(k, values.numel()))
    rows = []
    for v, idx in zip(top.values.tolist(), top.indices.tolist()):
        clip, token = divmod(idx, features.shape[1])
        coords = grid.coords(token)
        rows.append(
            {
                "clip": clip,
                "token": token,
                "slot": coords[0] if coords else None,
                "row": coords[1] if coords else None,
                "col": coords[2] if coords else None,
                "activation": v,
            }
        )
    return rows


def top_clips(features: torch.Tensor, feature: int, k: int = 3) -> list[tuple[int, float]]:
    """(clip, max activation) of the ``k`` clips where ``feature`` peaks highest."""
    peak = features[..., feature].amax(1)
    top = peak.topk(min(k, len(peak)))
    return list(zip(top.indices.tolist(), top.values.tolist()))


def feature_map(features: torch.Tensor, feature: int, grid: Any) -> tuple[float, np.ndarray]:
    """(CLS activation, [slots, rows, cols] map) of one feature in one clip ([n_ctx, d_sae] features)."""
    cls, patches = grid.unflatten(features[:, feature], dim=0)
    cls_value = float(cls) if cls.numel() == 1 else float(cls.sum())
    return cls_value, patches.numpy()


def overlay_strip(
    model: HookedVideoTransformer, frames: np.ndarray, slot_maps: np.ndarray, vmax: float | None = None
) -> np.ndarray:
    """One row: the first frame of every frame slot with that slot's map blended on (hooked_vivit.viewer.overlay)."""
    from hooked_vivit.viewer import overlay

    t = model.cfg.tubelet_size[0]
    vmax = float(np.abs(slot_maps).max()) if vmax is None else vmax
    cells = [
        overlay(
            frames[s * t],
            slot_maps[s],
            vmax=vmax or 1.0,
            patch_size=tuple(model.cfg.tubelet_size[1:]),
            image_size=tuple(model.cfg.image_size),
        )
        for s in range(slot_maps.shape[0])
    ]
    return np.concatenate([np.pad(c, ((1, 1), (1, 1), (0, 0)), constant_values=255) for c in cells], axis=1)


# ------------------------------------------------------------------------------------ minimal pairs
def pair_differences(
    model: HookedVideoTransformer,
    sae: Any,
    hook: str,
    positive: torch.Tensor,
    negative: torch.Tensor,
    divergence_frame: int,
) -> dict:
    """Per feature, the summed activation difference (positive - negative) over the patch tokens of
    the frame slots from the divergence frame's slot on, and the features ranked by its size."""
    grid = model.cfg.grid
    _, fp = feature_acts(model, sae, hook, positive)
    _, fn = feature_acts(model, sae, hook, negative)
    slot0 = grid.frame_slot_of_frame(divergence_frame)
    if slot0 is None:
        raise ValueError(f"divergence frame {divergence_frame} lies past the last whole tubelet: no token sees it")
    _, pp = grid.unflatten(fp[0].float().cpu(), dim=0)  # [slots, rows, cols, d_sae]
    _, pn = grid.unflatten(fn[0].float().cpu(), dim=0)
    diff = (pp[slot0:] - pn[slot0:]).sum((0, 1, 2))
    order = diff.abs().argsort(descending=True)
    return {
        "divergence_frame": divergence_frame,
        "from_slot": slot0,
        "difference": diff,
        "order": order,
        "positive": fp[0].float().cpu(),
        "negative": fn[0].float().cpu(),
    }


def feature_patching(
    model: HookedVideoTransformer,
    sae: Any,
    hook: str,
    positive: torch.Tensor,
    negative: torch.Tensor,
    feature_sets: Sequence[Sequence[int]],
    *,
    positions: Sequence[int] | None = None,
) -> dict:
    """Denoising at the feature level: the negative run, spliced with the error term, with the
    features of each set set to their positive-run values (at ``positions``; None = every token),
    measured on the last layer's resid_post in every recovery variant of the analysis
    (hooked_vivit.analysis.experiments.RECOVERY_VARIANTS: 1 = the positive run restored)."""
    from hooked_vivit.analysis.experiments import recovery_variants

    L = model.cfg.n_layers
    last = f"blocks.{L - 1}.hook_resid_post"
    name = f"{hook}.hook_sae_acts_post"
    with torch.inference_mode():
        _, clean = model.run_with_cache(positive, names_filter=[last])
        _, corrupt = model.run_with_cache(negative, names_filter=[last])
    _, pos_feats = feature_acts(model, sae, hook, positive)
    n = len(feature_sets)
    pos = torch.arange(model.cfg.n_ctx) if positions is None else torch.as_tensor(list(positions))
    captured = {}

    def patch(act, hook):
        for row, fs in enumerate(feature_sets):
            fs = torch.as_tensor(list(fs))
            act[row, pos[:, None], fs[None, :]] = pos_feats[0][pos[:, None], fs[None, :]].to(act.dtype)
        return act

    def grab(act, hook):
        captured["a"] = act.detach().clone()

    with splice(model, sae, hook, use_error_term=True), torch.inference_mode():
        model.run_with_hooks(negative.expand(n, *negative.shape[1:]), fwd_hooks=[(name, patch), (last, grab)])
    variants = recovery_variants(captured["a"], clean[last], corrupt[last], last)
    return {"measured_at": last, "feature_sets": [list(map(int, fs)) for fs in feature_sets], "variants": variants}
