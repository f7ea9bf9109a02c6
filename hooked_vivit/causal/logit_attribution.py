"""Direct logit attribution through the classifier's readout, token by token: how much each (layer,
head, source token) writes to a class logit, and each head's attention as the readout sees it. The
analyses (hooked_vivit.analysis) and the viewer read it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # annotations only: the causal tools take any HookedVideoTransformer (ViViT, VideoMAE, ...)
    pass


# ----------------------------------------------------------------- where the classifier reads
# Every "cls" result below is read where the classifier reads the residual stream: the CLS token
# (ViViT), token 0 (VideoMAE with use_mean_pooling=False), or the token mean (VideoMAE). The keys
# keep the name "cls"; results record the readout ("readout") in words.
def readout_name(model: Any) -> str:
    if model.cfg.pooling == "mean":
        return "token mean"
    return "CLS" if model.cfg.grid.n_prefix else "first token"


def readout_positions(model: Any) -> int | str:
    """SignalRecovery's positions for the readout: 0, or "pooled" (the token mean)."""
    return "pooled" if model.cfg.pooling == "mean" else 0


def readout(act: torch.Tensor, model: Any) -> torch.Tensor:
    """[batch, pos, ...] -> [batch, ...] at the readout."""
    return act.mean(1) if model.cfg.pooling == "mean" else act[:, 0]


def readout_attention(model: Any, pixel_values: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """[layers, heads, n_ctx]: each head's weight on every source token as the readout sees it: the
    CLS (token 0) query row, or under mean pooling the mean of every query row (the pooled vector
    is that mean: mean_q sum_src pattern[q, src] v[src])."""
    if hasattr(model, "cls_pattern_on_tokens"):  # TimeSformer: CLS's effective row over every frame's tokens
        names = [f"blocks.{l}.attn.hook_{k}" for l in sorted(set(layers)) for k in ("pattern", "v")]
        with torch.inference_mode():
            _, cache = model.run_with_cache(pixel_values[:1], names_filter=names, stop_at_layer=max(layers) + 1)
        return torch.stack([cls_row_and_values(model, cache, l)[0] for l in layers]).float()
    if model.cfg.pooling == "first":
        # The query row only, beside the fused attention (model.attention_rows): the same numbers as
        # the rows of hook_pattern, without materialising [heads, P, P] per layer.
        return model.attention_rows(pixel_values[:1], queries=0, layers=layers)[0, :, :, 0].float()
    rows: dict[int, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        rows[int(hook.name.split(".")[1])] = act[0].float().mean(1)  # [heads, key_pos]

    hooks = [(f"blocks.{l}.attn.hook_pattern", keep) for l in sorted(set(layers))]
    with model.hooks(fwd_hooks=hooks), torch.inference_mode():
        model(pixel_values[:1], stop_at_layer=max(layers) + 1)
    return torch.stack([rows[l] for l in layers])


def class_direction(model: Any, c: int) -> torch.Tensor:
    """The residual direction whose dot product with the final-LN-normalised (centred, divided by
    scale) readout vector gives the class logit (minus a constant): ln_final.w * W_U[:, c]."""
    w = model.ln_final.w if model.ln_final.w is not None else 1.0
    return (w * model.W_U[:, c]).detach()


def cls_row_and_values(model: Any, cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first clip's readout attention row [H, n_ctx] and values [n_ctx, H, E] of ``layer`` on the token
    grid: the CLS query row, or under mean pooling the mean of every query row. TimeSformer (spatial attention per frame, CLS outputs averaged over frames): CLS's
    effective row and the values of every frame's tokens (hooked_vivit.timesformer)."""
    pattern, v = cache[f"blocks.{layer}.attn.hook_pattern"], cache[f"blocks.{layer}.attn.hook_v"]
    if hasattr(model, "cls_pattern_on_tokens"):
        T = model.cfg.num_frames
        return model.cls_pattern_on_tokens(pattern[:T])[0], model.spatial_to_tokens(v[:T], cls="first")[0]
    if model.cfg.pooling == "mean":  # the pooled vector is the mean of every query row's output
        return pattern[0].mean(1), v[0]
    return pattern[0, :, 0], v[0]


def uses_pattern_rows(model: Any) -> bool:
    """Whether the readout reads one query row (token 0, on the fused path) rather than every row
    (mean pooling) or rows spread over frames (TimeSformer)."""
    return model.cfg.pooling == "first" and not hasattr(model, "cls_pattern_on_tokens")


def readout_row(model: Any, cache: Any, layer: int) -> torch.Tensor:
    """[H, n_ctx]: the first clip's readout attention row of ``layer`` from a cache holding that
    layer's ``hook_pattern_rows`` (token 0's row) or its ``hook_pattern`` and ``hook_v``."""
    rows = f"blocks.{layer}.attn.hook_pattern_rows"
    if rows in cache.keys():
        return cache[rows][0, :, 0]
    return cls_row_and_values(model, cache, layer)[0]


def token_dla(model: Any, pixel_values: torch.Tensor, c: int, *, run: Any = None) -> dict:
    """Direct logit attribution of every (layer, head, source token) to class ``c`` through the
    readout: w[h, src] * (v[src, h] @ W_O[h]), centred and divided by the final LayerNorm's scale at
    the readout (exactly what that LayerNorm does to it), dotted with the class direction; w is the
    CLS (token 0) query row of the pattern, or under mean pooling the mean of every query row (the
    pooled vector is linear in the per-token residuals). Summing over sources gives each head's
    attribution from ActivationCache; heads plus the rest sum to the logit. ``run``: an earlier run
    (``.logits``, ``.cache``) holding v, the final LayerNorm's scale and either the readout's
    ``hook_pattern_rows`` or the full ``hook_pattern`` of every layer (then no forward runs)."""
    cfg = model.cfg
    L = cfg.n_layers
    if run is None:
        names = [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("pattern", "v")] + ["ln_final.hook_scale"]
        with torch.inference_mode():
            logits, cache = model.run_with_cache(pixel_values[:1], names_filter=names)
    else:  # an earlier run's logits and cache (hooked_vivit.analysis.experiments.run_clip: dla_hooks)
        logits, cache = run.logits, run.cache
    with torch.inference_mode():
        direction = class_direction(model, c)
        scale = cache["ln_final.hook_scale"][0].flatten()[0]  # [1] under mean pooling, [P, 1] (read at 0) otherwise
        per = []
        for l in range(L):
            rows = f"blocks.{l}.attn.hook_pattern_rows"
            if rows in cache.keys():  # the readout's query row, computed beside the fused attention
                pattern, v = cache[rows][0, :, 0], cache[f"blocks.{l}.attn.hook_v"][0]
            else:
                pattern, v = cls_row_and_values(model, cache, l)  # [H, P] (readout query), [P, H, E]
            W_O = model.blocks[l].attn.W_O  # [H, E, d]
            ov = torch.einsum("phe,hed->hpd", v, W_O)
            ov = ov - ov.mean(-1, keepdim=True)
            proj = ov @ direction / scale  # [H, P]
            per.append(pattern * proj)
        terms = torch.stack(per).float()  # [L, H, P]
    cls_term, grid = cfg.grid.unflatten(terms.sum((0, 1)))
    return {
        "class": c,
        "readout": readout_name(model),
        "class_name": cfg.id2label.get(c, str(c)),
        "logit": float(logits[0, c]),
        "terms": terms,  # [layers, heads, tokens]
        "per_head": terms.sum(-1).tolist(),
        "cls_source": float(cls_term) if cfg.grid.n_prefix else None,  # no CLS token: no such source
        "heatmap": grid.tolist(),  # [frame slots, rows, cols], summed over layers and heads
    }
