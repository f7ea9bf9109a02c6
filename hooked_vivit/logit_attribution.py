"""Direct logit attribution through CLS, token by token: how much each (layer, head, source token)
writes to a class logit. The analyses (hooked_vivit.analysis) and the viewer read it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: the causal tools take any HookedVideoTransformer (ViViT, VideoMAE, ...)
    from hooked_vivit.model import HookedVideoTransformer


def class_direction(model: HookedVideoTransformer, c: int) -> torch.Tensor:
    """The residual direction whose dot product with the final-LN-normalised (centred, divided by
    scale) CLS vector gives the class logit (minus a constant): ln_final.w * W_U[:, c]."""
    w = model.ln_final.w if model.ln_final.w is not None else 1.0
    return (w * model.W_U[:, c]).detach()


def token_dla(model: HookedVideoTransformer, pixel_values: torch.Tensor, c: int) -> dict:
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
