"""Optional weight processing, as TransformerLens names it, for a hooked state dict.

Each step leaves the model's function unchanged; each is checked by a test that the logits stay put.
- fold_ln: LayerNorm weight/bias moved into the weights that read the normalised stream (W_Q/K/V,
  W_in, W_U); reading weights then centred over d_model (exact: LN output has zero mean). The
  LayerNorms become parameter-free (normalization_type "LNPre").
- center_writing_weights: everything that writes to the residual stream (tubelet kernel and bias,
  CLS token, position embeddings, W_O, b_O, W_out, b_out) made zero-mean over d_model; every reader
  is a LayerNorm, which removes the mean anyway.
- fold_value_biases: b_V moved into b_O (patterns sum to 1, so b_V @ W_O is a constant).
"""

from __future__ import annotations

import dataclasses

import torch

from hooked_vivit.config import HookedViViTConfig

StateDict = dict[str, torch.Tensor]


def _fold_ln_into_heads(sd: StateDict, ln: str, prefix: str, mats: str = "QKV") -> None:
    w, b = sd.pop(f"{ln}.w"), sd.pop(f"{ln}.b")
    for m in mats:
        W = sd[f"{prefix}.W_{m}"]  # [n_heads, d_model, d_head]
        sd[f"{prefix}.b_{m}"] = sd[f"{prefix}.b_{m}"] + torch.einsum("d,hde->he", b, W)
        W = W * w[None, :, None]
        sd[f"{prefix}.W_{m}"] = W - W.mean(1, keepdim=True)


def _fold_ln_into_linear(sd: StateDict, ln: str, W_key: str, b_key: str) -> None:
    w, b = sd.pop(f"{ln}.w"), sd.pop(f"{ln}.b")
    W = sd[W_key]  # [d_model, d_out]
    sd[b_key] = sd[b_key] + b @ W
    W = W * w[:, None]
    sd[W_key] = W - W.mean(0, keepdim=True)


def fold_layer_norm(sd: StateDict, cfg: HookedViViTConfig) -> StateDict:
    if cfg.n_classes == 0:
        raise ValueError("fold_ln needs a classifier head to fold the final LayerNorm into (this is a backbone)")
    sd = dict(sd)
    for l in range(cfg.n_layers):
        _fold_ln_into_heads(sd, f"blocks.{l}.ln1", f"blocks.{l}.attn")
        if f"blocks.{l}.ln_temporal.w" in sd:  # TimeSformer's temporal attention
            _fold_ln_into_heads(sd, f"blocks.{l}.ln_temporal", f"blocks.{l}.temporal_attn")
        _fold_ln_into_linear(sd, f"blocks.{l}.ln2", f"blocks.{l}.mlp.W_in", f"blocks.{l}.mlp.b_in")
    if cfg.pooling != "attentive":
        _fold_ln_into_linear(sd, "ln_final", "unembed.W_U", "unembed.b_U")
        return sd
    # V-JEPA 2: ln_final's output is the attentive pooler's residual stream (its blocks add to it), so
    # ln_final keeps its affine part; the pooler's own LayerNorms fold into what reads them.
    for i in range(cfg.n_pooler_layers):  # type: ignore[attr-defined]
        _fold_ln_into_heads(sd, f"pooler.blocks.{i}.ln1", f"pooler.blocks.{i}.attn")
        _fold_ln_into_linear(sd, f"pooler.blocks.{i}.ln2", f"pooler.blocks.{i}.mlp.W_in", f"pooler.blocks.{i}.mlp.b_in")
    _fold_ln_into_heads(sd, "pooler.cross.ln1", "pooler.cross.attn", mats="KV")  # the query is not normalised
    _fold_ln_into_linear(sd, "pooler.cross.ln2", "pooler.cross.mlp.W_in", "pooler.cross.mlp.b_in")
    return sd


def center_writing_weights(sd: StateDict, cfg: HookedViViTConfig) -> StateDict:
    if "pos_embed.W_pos" not in sd:
        raise ValueError(
            "center_writing_weights needs learned position embeddings; this model's are a fixed sinusoidal table "
            f"(pos_embed_type={cfg.pos_embed_type!r}), which cannot be centred in place"
        )
    sd = dict(sd)
    sd["embed.W_E"] = sd["embed.W_E"] - sd["embed.W_E"].mean(0, keepdim=True)  # [d_model, C, t, h, w]
    for key in ("embed.b_E", "embed.cls_token"):
        if key in sd:  # no CLS token without a prefix token
            sd[key] = sd[key] - sd[key].mean()
    for key in ("pos_embed.W_pos", "time_embed.W_time"):  # TimeSformer has time embeddings too
        if key in sd:
            sd[key] = sd[key] - sd[key].mean(-1, keepdim=True)
    for l in range(cfg.n_layers):
        for key in (
            f"blocks.{l}.attn.W_O",
            f"blocks.{l}.attn.b_O",
            f"blocks.{l}.mlp.W_out",
            f"blocks.{l}.mlp.b_out",
            f"blocks.{l}.temporal_attn.W_O",
            f"blocks.{l}.temporal_attn.b_O",
        ):
            if key in sd:
                sd[key] = sd[key] - sd[key].mean(-1, keepdim=True)
    return sd


def fold_value_biases(sd: StateDict, cfg: HookedViViTConfig) -> StateDict:
    sd = dict(sd)
    for l in range(cfg.n_layers):
        for attn in ("attn", "temporal_attn"):
            p = f"blocks.{l}.{attn}"
            if f"{p}.b_V" not in sd:  # only TimeSformer has a temporal attention
                continue
            b_V, W_O = sd[f"{p}.b_V"], sd[f"{p}.W_O"]
            sd[f"{p}.b_O"] = sd[f"{p}.b_O"] + torch.einsum("he,hed->d", b_V, W_O)
            sd[f"{p}.b_V"] = torch.zeros_like(b_V)
    return sd


def process_weights(
    sd: StateDict,
    cfg: HookedViViTConfig,
    *,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    fold_value_biases: bool = False,
) -> tuple[StateDict, HookedViViTConfig]:
    """Apply the chosen steps in TransformerLens's order; returns the new state dict and config."""
    if not (fold_ln or center_writing_weights or fold_value_biases):
        return sd, cfg
    if cfg.pooling == "attentive" and (center_writing_weights or fold_value_biases):
        raise ValueError(
            "center_writing_weights and fold_value_biases are not available for V-JEPA 2: the classifier reads the pooler "
            "query's stream with no LayerNorm in between, and its cross-attention has no output projection or bias "
            "to centre or fold into; fold_ln is (the final LayerNorm keeps its affine part: it feeds the pooler's stream)"
        )
    if (
        cfg.folded_ln
        and fold_ln
        or cfg.centered_writing_weights
        and center_writing_weights
        or cfg.folded_value_biases
        and fold_value_biases
    ):
        raise ValueError("these weights were already processed that way (see the checkpoint's config)")
    dtypes = {k: v.dtype for k, v in sd.items()}
    # Fold in fp32 at least: low-precision folding adds rounding error.
    sd = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in sd.items()}
    changes: dict = {}
    if fold_ln:
        sd = fold_layer_norm(sd, cfg)
        changes.update(folded_ln=True, normalization_type="LNPre")
    if center_writing_weights:
        sd = _center(sd, cfg)
        changes.update(centered_writing_weights=True)
    if fold_value_biases:
        sd = _fold_vb(sd, cfg)
        changes.update(folded_value_biases=True)
    sd = {k: v.to(dtypes.get(k, v.dtype)) for k, v in sd.items()}
    return sd, dataclasses.replace(cfg, **changes)


_center = center_writing_weights
_fold_vb = fold_value_biases
