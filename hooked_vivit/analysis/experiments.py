"""The reference paper's experiments, one function each, returning plain data (figures are drawn
from it in hooked_vivit.analysis.report).

positive = the clip with the outcome of interest (strike), negative = its minimal-pair twin
(gutter). "clean" is the positive run, "corrupted" the negative run, as in the paper's denoising.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from hooked_vivit import patching
from hooked_vivit.ablation import PixelBox, ablate_pixels, topk_table
from hooked_vivit.labels import top_k
from hooked_vivit.metrics import SignalRecovery
from hooked_vivit.probes import probe_accuracy

KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def _names(n_layers: int, kinds: Sequence[str] = KINDS) -> list[str]:
    return [f"blocks.{l}.hook_{k}" for k in kinds for l in range(n_layers)]


# ---------------------------------------------------------------------------------------- (a)
def activation_deltas(model: Any, positive: torch.Tensor, negative: torch.Tensor) -> dict:
    """L2 norm of (positive - negative) per layer, for resid_pre/post, attn_out and mlp_out: at the
    CLS token, and averaged over all tokens (the mean of per-token norms)."""
    L = model.cfg.n_layers
    names = _names(L)
    with torch.inference_mode():
        _, cp = model.run_with_cache(positive, names_filter=names)
        _, cn = model.run_with_cache(negative, names_filter=names)
    out: dict = {"layers": list(range(L)), "cls": {}, "tokens": {}}
    for kind in KINDS:
        deltas = torch.stack([(cp[f"blocks.{l}.hook_{kind}"] - cn[f"blocks.{l}.hook_{kind}"])[0].float() for l in range(L)])
        norms = deltas.norm(dim=-1)  # [L, n_ctx]
        out["cls"][kind] = norms[:, 0].tolist()
        out["tokens"][kind] = norms.mean(1).tolist()
    return out


# ---------------------------------------------------------------------------------------- (b)
def component_recovery(model: Any, positive: torch.Tensor, negative: torch.Tensor, *, positions: Any = 0) -> dict:
    """Denoising, one component at a time (each layer's attention block and MLP block output, all
    tokens): the share of the last layer's resid_post difference (at ``positions``; 0 = CLS,
    None = all tokens) recovered. Both the projection and the norm-ratio variant."""
    L = model.cfg.n_layers
    last = f"blocks.{L - 1}.hook_resid_post"
    names = _names(L, ("attn_out", "mlp_out")) + [last]
    with torch.inference_mode():
        _, clean = model.run_with_cache(positive, names_filter=names)
        _, corrupt = model.run_with_cache(negative, names_filter=[last])
    out: dict = {"layers": list(range(L)), "measured_at": last, "positions": "CLS" if positions == 0 else str(positions)}
    for kind in ("projection", "norm"):
        metric = SignalRecovery(last, clean[last], corrupt[last], positions=positions, kind=kind)
        sweep = patching.denoise(model, patching.component_patches(model), clean_cache=clean, corrupted=negative, metric=metric, progress=False)
        values = sweep.values.view(L, 2)
        out[kind] = {"attn": values[:, 0].tolist(), "mlp": values[:, 1].tolist()}
    return out


# ---------------------------------------------------------------------------------------- (c)
def class_direction(model: Any, c: int) -> torch.Tensor:
    """The residual direction whose dot product with the final-LN-normalised (centred, divided by
    scale) CLS vector gives the class logit (minus a constant): ln_final.w * W_U[:, c]."""
    w = model.ln_final.w if model.ln_final.w is not None else 1.0
    return (w * model.W_U[:, c]).detach()


def token_dla(model: Any, pixel_values: torch.Tensor, c: int) -> dict:
    """Direct logit attribution of every (layer, head, source token) to class ``c`` through CLS:
    pattern[h, CLS, src] * (v[src, h] @ W_O[h]), centred and divided by the final LayerNorm's scale
    at CLS (exactly what that LayerNorm does to it), dotted with the class direction. Summing over
    sources gives each head's attribution from ActivationCache; heads plus the rest sum to the logit."""
    cfg = model.cfg
    L = cfg.n_layers
    names = [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("pattern", "v")] + ["ln_final.hook_scale"]
    with torch.inference_mode():
        logits, cache = model.run_with_cache(pixel_values[:1], names_filter=names)
        direction = class_direction(model, c)
        scale = cache["ln_final.hook_scale"][0, 0, 0]
        per = []
        for l in range(L):
            v = cache[f"blocks.{l}.attn.hook_v"][0]  # [P, H, E]
            W_O = model.blocks[l].attn.W_O  # [H, E, d]
            ov = torch.einsum("phe,hed->hpd", v, W_O)
            ov = ov - ov.mean(-1, keepdim=True)
            proj = ov @ direction / scale  # [H, P]
            pattern = cache[f"blocks.{l}.attn.hook_pattern"][0, :, 0]  # [H, P], CLS query
            per.append(pattern * proj)
        terms = torch.stack(per).float()  # [L, H, P]
    cls_term, grid = cfg.grid.unflatten(terms.sum((0, 1)))
    return {
        "class": c,
        "class_name": cfg.id2label.get(c, str(c)),
        "logit": float(logits[0, c]),
        "terms": terms,  # [layers, heads, tokens]
        "per_head": terms.sum(-1).tolist(),
        "cls_source": float(cls_term),
        "heatmap": grid.tolist(),  # [frame slots, rows, cols], summed over layers and heads
    }


# ---------------------------------------------------------------------------------------- (d)
def token_masks(model: Any, masks: np.ndarray) -> torch.Tensor:
    """Per-token share of pixels inside an object mask [T, H, W] -> [n_ctx] (CLS gets 0)."""
    t, h, w = model.cfg.tubelet_size
    grid = model.cfg.grid
    m = torch.from_numpy(np.asarray(masks, dtype=np.float32))
    # Only the pixels some token sees (sizes need not be tubelet multiples).
    m = m[grid.covered_frames.start : grid.covered_frames.stop, grid.covered_rows, grid.covered_cols]
    pooled = m.reshape(grid.n_frame_slots, t, grid.n_rows, h, grid.n_cols, w).mean(dim=(1, 3, 5))
    return torch.cat([torch.zeros(1), pooled.flatten()])


def cls_attention(model: Any, pixel_values: torch.Tensor, layers: Sequence[int] | None = None, masks: dict[str, np.ndarray] | None = None) -> dict:
    """CLS attention of every head of the chosen layers on the token grid, and with object masks
    the share of each head's attention to patch tokens that lands on each object's tokens."""
    cfg = model.cfg
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    with torch.inference_mode():
        _, cache = model.run_with_cache(pixel_values[:1], names_filter=names)
    maps = torch.stack([cache[n][0, :, 0] for n in names]).float()  # [layers, heads, P]
    out: dict = {"layers": layers, "attention_to_cls": maps[..., 0].tolist(), "grid": cfg.grid.unflatten(maps)[1].tolist()}
    if masks:
        patch_attn = maps[..., 1:]
        total = patch_attn.sum(-1)
        shares = {}
        for name, mask in masks.items():
            tm = (token_masks(model, mask)[1:] > 0).float()
            shares[name] = ((patch_attn * tm).sum(-1) / total).tolist()
            shares[f"{name} (token share of the grid)"] = float(tm.mean())
        out["object_share"] = shares
    return out


# ---------------------------------------------------------------------------------------- (e)
def region_ablation(model: Any, pixel_values: torch.Tensor, dla: dict, *, n_tokens: int = 8, k: int = 6, mode: str = "zero") -> dict:
    """Top-k classes before and after ablating (zeroing, by default) the pixel box around the
    tokens of greatest absolute direct logit attribution (the paper's Table 1)."""
    scores = dla["terms"].sum((0, 1))[1:].abs()
    top = (scores.topk(min(n_tokens, len(scores))).indices + 1).tolist()
    box = PixelBox.from_tokens(model.cfg.grid, top)
    ablated = ablate_pixels(pixel_values[:1], box, mode=mode)
    with torch.inference_mode():
        before, after = model(pixel_values[:1]), model(ablated)
    return {
        "tokens": top,
        "box": box.__dict__,
        "mode": mode,
        "table": topk_table(before, after, model.cfg.id2label, k),
        "top1_before": top_k(before, model.cfg.id2label, 1)[0][0].label,
        "top1_after": top_k(after, model.cfg.id2label, 1)[0][0].label,
    }


# ---------------------------------------------------------------------------------------- (f)
def probe_features(model: Any, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """CLS and mean-token residual stream per layer (resid_pre 0..L-1 and the last resid_post),
    plus a pixel-space baseline (the clip averaged within each tubelet) and the predicted class, for
    every clip of every pair."""
    L = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    t, h, w = model.cfg.tubelet_size
    cls, mean, pix, labels, groups, preds = [], [], [], [], [], []
    for i, (pos, neg) in enumerate(pairs):
        x = torch.cat([pos, neg])
        with torch.inference_mode():
            logits, cache = model.run_with_cache(x, names_filter=names)
        preds.append(logits.argmax(-1).cpu())
        stack = torch.stack([cache[n] for n in names]).float()  # [L+1, 2, P, d]
        cls.append(stack[:, :, 0])
        mean.append(stack[:, :, 1:].mean(2))
        g = model.cfg.grid
        seen = x[:, : g.covered_frames.stop, :, g.covered_rows, g.covered_cols].float()  # pixels some token sees
        B, C = x.shape[0], x.shape[2]
        pix.append(seen.reshape(B, g.n_frame_slots, t, C, g.n_rows, h, g.n_cols, w).mean(dim=(2, 5, 7)).flatten(1))
        labels += [1, 0]
        groups += [i, i]
    return {"cls": torch.cat(cls, 1), "mean": torch.cat(mean, 1), "pixels": torch.cat(pix), "labels": np.array(labels),
            "groups": np.array(groups), "predictions": torch.cat(preds).numpy()}


def layer_probes(model: Any, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], *, seed: int = 0) -> dict:
    """Outcome probes per layer on CLS and on mean-pooled tokens, held out by pair, with a
    shuffled-label control and selectivity, and a pixel-space baseline probe."""
    f = probe_features(model, pairs)
    L = model.cfg.n_layers
    out: dict = {"layers": [f"resid_pre {l}" for l in range(L)] + [f"resid_post {L - 1}"], "pairs": len(pairs)}
    for kind in ("cls", "mean"):
        out[kind] = [probe_accuracy(feat, f["labels"], f["groups"], seed=seed).to_dict() for feat in f[kind]]
    out["pixels"] = probe_accuracy(f["pixels"], f["labels"], f["groups"], seed=seed).to_dict()
    return out
