"""Direct logit attribution through the classifier's readout, token by token: how much each (layer,
head, source token) writes to a class logit, and each head's attention as the readout sees it. The
analyses (hooked_vivit.analysis) and the viewer read it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # annotations only: the causal tools take any HookedVideoTransformer (ViViT, VideoMAE, ...)
    from hooked_vivit.model import HookedVideoTransformer

    pass


# ----------------------------------------------------------------- where the classifier reads
# Every "cls" result below is read where the classifier reads the residual stream: the CLS token
# (ViViT, TimeSformer), token 0 (VideoMAE with use_mean_pooling=False), or the token mean (VideoMAE).
# V-JEPA 2 classifies the output of its attentive pooler (self-attention blocks over every token of
# the last layer, then one learned query cross-attending to them): its readout is that pooled vector,
# ``pooler.cross.hook_resid_post`` [batch, 1, d_model], read by running the pooler on the (patched)
# last residual stream. The keys keep the name "cls"; results record the readout ("readout") in words.
POOLER_OUTPUT = "pooler.cross.hook_resid_post"  # V-JEPA 2's pooled vector, the classifier's input
POOLER_LAYER = "pooler"  # the one readout-attention "layer" of an attentive pooler: its query's cross-attention


def is_attentive(model: HookedVideoTransformer) -> bool:
    """Whether the classifier reads an attentive pooler's output (V-JEPA 2), not a token of the residual stream."""
    return model.cfg.pooling == "attentive"


def readout_name(model: HookedVideoTransformer) -> str:
    if is_attentive(model):
        return "pooler output"
    if model.cfg.pooling == "mean":
        return "token mean"
    return "CLS" if model.cfg.grid.n_prefix else "first token"


def readout_positions(model: HookedVideoTransformer) -> int | str:
    """SignalRecovery's positions for the readout: 0, "pooled" (the token mean), or "pooler" (V-JEPA 2:
    position 0 of ``POOLER_OUTPUT``, not of the residual stream: analysis.experiments.RecoveryVariants)."""
    if is_attentive(model):
        return "pooler"
    return "pooled" if model.cfg.pooling == "mean" else 0


def readout_hook(model: HookedVideoTransformer) -> str:
    """The activation the readout is read from: the last block's resid_post, or the pooler's output."""
    return POOLER_OUTPUT if is_attentive(model) else f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def readout(act: torch.Tensor, model: HookedVideoTransformer) -> torch.Tensor:
    """[batch, pos, ...] of readout_hook -> [batch, ...] at the readout (the pooler's output has one position)."""
    return act.mean(1) if model.cfg.pooling == "mean" else act[:, 0]


def layer_readout_name(model: HookedVideoTransformer) -> str:
    """Where per-layer results ("cls" deltas) read each layer's residual stream: the readout, or, when the
    readout is an attentive pooler that only the last layer feeds, the token mean standing in for it."""
    return "token mean" if is_attentive(model) else readout_name(model)


def layer_readout(act: torch.Tensor, model: HookedVideoTransformer) -> torch.Tensor:
    """[batch, pos, ...] of any layer's residual-stream hook -> [batch, ...] at layer_readout_name."""
    return act.mean(1) if is_attentive(model) else readout(act, model)


def readout_layers(model: HookedVideoTransformer) -> list:
    """The layers whose readout attention exists: every block (its CLS / token-0 / mean query row), or
    for an attentive pooler only its query's cross-attention (``POOLER_LAYER``): encoder blocks have no
    query that the classifier reads."""
    return [POOLER_LAYER] if is_attentive(model) else list(range(model.cfg.n_layers))


def _check_readout_layers(model: HookedVideoTransformer, layers: Sequence) -> None:
    if is_attentive(model) and list(layers) != [POOLER_LAYER]:
        raise ValueError(
            f"{type(model).__name__} reads its attentive pooler: the readout attention is the pooler query's "
            f"cross-attention (layers=[{POOLER_LAYER!r}]); its encoder layers have no readout query, got layers={list(layers)}"
        )


def readout_attention(model: HookedVideoTransformer, pixel_values: torch.Tensor, layers: Sequence) -> torch.Tensor:
    """[layers, heads, n_ctx]: each head's weight on every source token as the readout sees it: the
    CLS (token 0) query row, or under mean pooling the mean of every query row (the pooled vector
    is that mean: mean_q sum_src pattern[q, src] v[src]); V-JEPA 2 (layers=["pooler"]): the pooler
    query's cross-attention over the video tokens."""
    if is_attentive(model):
        _check_readout_layers(model, layers)
        query_rows: list[torch.Tensor] = []
        hook = ("pooler.cross.attn.hook_pattern", lambda act, hook: query_rows.append(act[0, :, 0].float()))
        with model.hooks(fwd_hooks=[hook]), torch.inference_mode():
            model(pixel_values[:1])
        return torch.stack(query_rows)
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


def class_direction(model: HookedVideoTransformer, c: int) -> torch.Tensor:
    """The residual direction whose dot product with the final-LN-normalised (centred, divided by
    scale) readout vector gives the class logit (minus a constant): ln_final.w * W_U[:, c]. V-JEPA 2:
    W_U[:, c], the direction of the pooled vector (the classifier reads it with no norm in between)."""
    if is_attentive(model):
        return model.W_U[:, c].detach()
    w = model.ln_final.w if model.ln_final.w is not None else 1.0
    return (w * model.W_U[:, c]).detach()


def cls_row_and_values(model: HookedVideoTransformer, cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def uses_pattern_rows(model: HookedVideoTransformer) -> bool:
    """Whether the readout reads one query row (token 0, on the fused path) rather than every row
    (mean pooling) or rows spread over frames (TimeSformer)."""
    return model.cfg.pooling == "first" and not hasattr(model, "cls_pattern_on_tokens")


def readout_row(model: HookedVideoTransformer, cache: Any, layer: int | str) -> torch.Tensor:
    """[H, n_ctx]: the first clip's readout attention row of ``layer`` from a cache holding that
    layer's ``hook_pattern_rows`` (token 0's row) or its ``hook_pattern`` and ``hook_v``; V-JEPA 2
    (layer "pooler"): the pooler query's row, from ``pooler.cross.attn.hook_pattern``."""
    if is_attentive(model):
        _check_readout_layers(model, [layer])
        return cache["pooler.cross.attn.hook_pattern"][0, :, 0]
    rows = f"blocks.{layer}.attn.hook_pattern_rows"
    if rows in cache.keys():
        return cache[rows][0, :, 0]
    return cls_row_and_values(model, cache, layer)[0]


def token_dla(model: HookedVideoTransformer, pixel_values: torch.Tensor, c: int, *, run: Any = None) -> dict:
    """Direct logit attribution of every (layer, head, source token) to class ``c`` through the
    readout: w[h, src] * (v[src, h] @ W_O[h]), centred and divided by the final LayerNorm's scale at
    the readout (exactly what that LayerNorm does to it), dotted with the class direction; w is the
    CLS (token 0) query row of the pattern, or under mean pooling the mean of every query row (the
    pooled vector is linear in the per-token residuals). Summing over sources gives each head's
    attribution from ActivationCache; heads plus the rest sum to the logit. ``run``: an earlier run
    (``.logits``, ``.cache``) holding v, the final LayerNorm's scale and either the readout's
    ``hook_pattern_rows`` or the full ``hook_pattern`` of every layer (then no forward runs)."""
    if is_attentive(model):
        return pooler_token_dla(model, pixel_values, c, run=run)
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


# The hooks pooler_token_dla reads (analyze's shared runs cache them: hooked_vivit.analysis.experiments.dla_hooks).
POOLER_DLA_HOOKS = (
    "pooler.cross.attn.hook_pattern",
    "pooler.cross.attn.hook_v",
    "pooler.cross.hook_resid_pre",
    "pooler.cross.hook_mlp_out",
)


def pooler_token_dla(model: HookedVideoTransformer, pixel_values: torch.Tensor, c: int, *, run: Any = None) -> dict:
    """Direct logit attribution through V-JEPA 2's attentive pooler: what each (head, source token)
    writes to class ``c`` through the query's cross-attention.

    The classifier is linear in the pooled vector, and the pooled vector is the query stream
    ``query + attn_out + mlp_out`` with ``attn_out = sum_h sum_src pattern[h, src] v[src, h] @ W_O[h]``
    (W_O: the identity, the heads side by side), so ``logit_c = b_U[c] + query . W_U[:, c]
    + sum_{h, src} pattern[h, src] (v[src, h] @ W_O[h]) . W_U[:, c] + mlp_out . W_U[:, c]`` exactly,
    with the run's own attention weights. "terms" [1, heads, tokens] (one "layer": the pooler's
    cross-attention) are the middle sum; "rest" holds the other three terms, which attribute to no
    token (the MLP reads the whole query stream through a LayerNorm and a nonlinearity).

    What a source token's term means: its value vector is computed from the pooler's input at that
    position after the pooler's own self-attention blocks, which mix information across tokens;
    encoder layers and heads are not attributed (the pooler's LayerNorms, self-attention and MLPs
    stand between them and the logit, so no exact per-(layer, head) split exists). ``run``: an
    earlier run (``.logits``, ``.cache``) holding POOLER_DLA_HOOKS (then no forward runs)."""
    if model.pooler is None:
        raise ValueError(
            f"{type(model).__name__} is a backbone (no attentive pooler, no classifier): no logit to attribute"
        )
    if run is None:
        with torch.inference_mode():
            logits, cache = model.run_with_cache(pixel_values[:1], names_filter=list(POOLER_DLA_HOOKS))
    else:
        logits, cache = run.logits, run.cache
    cross = model.pooler.cross
    with torch.inference_mode():
        w_c = class_direction(model, c)
        pattern = cache["pooler.cross.attn.hook_pattern"][0, :, 0]  # [H, P]
        v = cache["pooler.cross.attn.hook_v"][0]  # [P, H, E]
        ov = torch.einsum("phe,hed->hpd", v, cross.attn.W_O)  # [H, P, d]
        terms = (pattern * (ov @ w_c))[None].float()  # [1, H, P]
        rest = {
            "bias": float(model.unembed.b_U[c]),
            "query": float(cache["pooler.cross.hook_resid_pre"][0, 0] @ w_c),
            "mlp": float(cache["pooler.cross.hook_mlp_out"][0, 0] @ w_c),
        }
    _, grid = model.cfg.grid.unflatten(terms.sum((0, 1)))
    return {
        "class": c,
        "readout": readout_name(model),
        "attributed": "the pooler query's cross-attention: pattern[h, src] x (value of src through head h) . W_U[:, c]",
        "layers": [POOLER_LAYER],
        "class_name": model.cfg.id2label.get(c, str(c)),
        "logit": float(logits[0, c]),
        "terms": terms,  # [1 (the pooler's cross-attention), heads, tokens]
        "per_head": terms.sum(-1).tolist(),
        "rest": rest,  # logit = terms.sum() + bias + query + mlp
        "cls_source": None,  # no CLS token
        "heatmap": grid.tolist(),  # [frame slots, rows, cols], summed over heads
    }
