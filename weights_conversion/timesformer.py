"""TimeSformer checkpoint <-> hooked weights.

The hub checkpoints (facebook/timesformer-*) were written by transformers' conversion script with
the module names current transformers still uses, so one key layout covers both (with or without
the ``timesformer.`` prefix; ``layout="hub"`` writes the same keys). Each attention's ``qkv`` is one
[3 * d_model, d_model] matrix (q, k, v stacked). transformers' ``temporal_dense`` linear, applied
after the temporal attention's output projection, is folded into that projection
(``W_O <- W_O @ temporal_dense.weight.T``, ``b_O <- temporal_dense(b_O)``, in float64), so each
temporal head's ``hook_result`` is what it writes to the residual stream; written back, the
projection carries the product and ``temporal_dense`` is the identity (the same function).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from weights_conversion.common import (
    CheckpointError,
    StateDict,
    bert_mlp_shapes,
    bert_mlp_to_hf,
    bert_mlp_to_hooked,
    check_finite,
    check_keys,
    classifier_shapes,
    is_hooked_layout,
    shapes_after_conversion,
)

if TYPE_CHECKING:  # the converter reads the config only; it never imports the model
    from hooked_vivit.config import HookedViViTConfig

_PREFIX = "timesformer."
_ATTENTIONS = (("attention", "attn"), ("temporal_attention", "temporal_attn"))
_NORMS = (("layernorm_before", "ln1"), ("layernorm_after", "ln2"), ("temporal_layernorm", "ln_temporal"))


def normalize_hf_keys(state_dict: StateDict) -> StateDict:
    """With or without ``timesformer.`` -> keys without the prefix."""
    out: StateDict = {}
    for key, value in state_dict.items():
        new = key.removeprefix(_PREFIX)
        if new in out:
            raise CheckpointError(f"checkpoint holds {new!r} twice (with and without the 'timesformer.' prefix?)")
        out[new] = value
    return out


def expected_hf_shapes(cfg: HookedViViTConfig) -> dict[str, tuple[int, ...]]:
    """Every key (no prefix) and its shape for this config."""
    d, g = cfg.d_model, cfg.grid
    _, ph, pw = cfg.tubelet_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, 1 + g.n_rows * g.n_cols, d),
        "embeddings.time_embeddings": (1, cfg.num_frames, d),
        "embeddings.patch_embeddings.projection.weight": (d, cfg.n_channels, ph, pw),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    for i in range(cfg.n_layers):
        p = f"encoder.layer.{i}."
        for hf, _ in _ATTENTIONS:
            shapes[p + f"{hf}.attention.qkv.weight"] = (3 * d, d)
            if cfg.qkv_bias:
                shapes[p + f"{hf}.attention.qkv.bias"] = (3 * d,)
            shapes[p + f"{hf}.output.dense.weight"], shapes[p + f"{hf}.output.dense.bias"] = (d, d), (d,)
        shapes[p + "temporal_dense.weight"], shapes[p + "temporal_dense.bias"] = (d, d), (d,)
        for hf, _ in _NORMS:
            shapes[p + f"{hf}.weight"] = shapes[p + f"{hf}.bias"] = (d,)
        shapes.update(bert_mlp_shapes(cfg, p))
    shapes.update(classifier_shapes(cfg))
    return shapes


def expected_hooked_shapes(cfg: HookedViViTConfig) -> dict[str, tuple[int, ...]]:
    return shapes_after_conversion(expected_hf_shapes(cfg), _hf_to_hooked, cfg)


def convert_timesformer_weights(state_dict: StateDict, cfg: HookedViViTConfig) -> StateDict:
    """A TimeSformer state dict (with or without prefix, or already hooked) -> this library's names."""
    check_finite(state_dict)
    if is_hooked_layout(state_dict):
        check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, expected_hooked_shapes(cfg), "hooked checkpoint")
        return dict(state_dict)
    sd = normalize_hf_keys(state_dict)
    check_keys({k: tuple(v.shape) for k, v in sd.items()}, expected_hf_shapes(cfg), "TimeSformer checkpoint")
    return _hf_to_hooked(sd, cfg)


def _split_qkv(sd: StateDict, key: str, cfg: HookedViViTConfig) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    W = sd[key + ".weight"].reshape(3, H, E, d).transpose(2, 3)  # [(3 h e), d] -> [3, h, d, e]
    b = sd.get(key + ".bias")
    biases = list(b.reshape(3, H, E)) if b is not None else [None, None, None]
    return list(W), biases


def _hf_to_hooked(sd: StateDict, cfg: HookedViViTConfig) -> StateDict:
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    W_E = sd["embeddings.patch_embeddings.projection.weight"]
    zeros = torch.zeros(H, E, dtype=W_E.dtype, device=W_E.device)
    out: StateDict = {
        "embed.W_E": W_E.unsqueeze(2),  # Conv2d [d, C, h, w] -> the (1, h, w) Conv3d kernel
        "embed.b_E": sd["embeddings.patch_embeddings.projection.bias"],
        "embed.cls_token": sd["embeddings.cls_token"].reshape(d),
        "pos_embed.W_pos": sd["embeddings.position_embeddings"][0],
        "time_embed.W_time": sd["embeddings.time_embeddings"][0],
        "ln_final.w": sd["layernorm.weight"],
        "ln_final.b": sd["layernorm.bias"],
    }
    for i in range(cfg.n_layers):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for hf, ours in _ATTENTIONS:
            Ws, bs = _split_qkv(sd, p + f"{hf}.attention.qkv", cfg)
            for m, W, bias in zip("QKV", Ws, bs):
                out[b + f"{ours}.W_{m}"] = W
                out[b + f"{ours}.b_{m}"] = bias if bias is not None else zeros
            W_O, b_O = sd[p + f"{hf}.output.dense.weight"].T, sd[p + f"{hf}.output.dense.bias"]  # [(h e), d], [d]
            if ours == "temporal_attn":  # fold temporal_dense: x -> x @ W_dense.T + b_dense
                W_dense, b_dense = sd[p + "temporal_dense.weight"].double(), sd[p + "temporal_dense.bias"].double()
                W_O, b_O = (W_O.double() @ W_dense.T).to(W_O.dtype), (b_O.double() @ W_dense.T + b_dense).to(b_O.dtype)
            out[b + f"{ours}.W_O"], out[b + f"{ours}.b_O"] = W_O.reshape(H, E, d), b_O
        for hf, ours in _NORMS:
            out[b + f"{ours}.w"], out[b + f"{ours}.b"] = sd[p + f"{hf}.weight"], sd[p + f"{hf}.bias"]
        out.update(bert_mlp_to_hooked(sd, cfg, p, b))
    if cfg.n_classes:
        out["unembed.W_U"], out["unembed.b_U"] = sd["classifier.weight"].T, sd["classifier.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def hooked_to_hf_weights(
    state_dict: StateDict, cfg: HookedViViTConfig, *, layout: str = "transformers", prefix: bool | None = None
) -> StateDict:
    """Hooked weights -> a TimeSformer state dict (``layout`` "transformers" or "hub": the same keys).
    ``prefix`` (default: when there is a classifier) adds ``timesformer.`` as
    TimesformerForVideoClassification has it (the classifier stays unprefixed). temporal_dense is
    written as the identity, its product already in the temporal output projection."""
    if layout not in ("transformers", "hub"):
        raise ValueError(f"layout must be 'transformers' or 'hub', got {layout!r}")
    if cfg.normalization_type != "LN":
        raise ValueError(
            "a TimeSformer with folded LayerNorms (LNPre) has no transformers layout; save with layout='hooked'"
        )
    sd, H, E, d = state_dict, cfg.n_heads, cfg.d_head, cfg.d_model
    has_classifier = "unembed.W_U" in sd
    prefix = has_classifier if prefix is None else prefix
    pre = _PREFIX if prefix else ""
    W_E = sd["embed.W_E"]
    out: StateDict = {
        pre + "embeddings.cls_token": sd["embed.cls_token"].reshape(1, 1, d),
        pre + "embeddings.position_embeddings": sd["pos_embed.W_pos"].unsqueeze(0),
        pre + "embeddings.time_embeddings": sd["time_embed.W_time"].unsqueeze(0),
        pre + "embeddings.patch_embeddings.projection.weight": W_E.squeeze(2),
        pre + "embeddings.patch_embeddings.projection.bias": sd["embed.b_E"],
        pre + "layernorm.weight": sd["ln_final.w"],
        pre + "layernorm.bias": sd["ln_final.b"],
    }
    for i in range(cfg.n_layers):
        p, b = f"{pre}encoder.layer.{i}.", f"blocks.{i}."
        for hf, ours in _ATTENTIONS:
            out[p + f"{hf}.attention.qkv.weight"] = torch.cat(
                [sd[b + f"{ours}.W_{m}"].transpose(1, 2).reshape(H * E, d) for m in "QKV"]
            )
            biases = torch.cat([sd[b + f"{ours}.b_{m}"].reshape(H * E) for m in "QKV"])
            if cfg.qkv_bias:
                out[p + f"{hf}.attention.qkv.bias"] = biases
            elif biases.abs().max() > 0:
                raise ValueError(
                    f"layer {i} {ours} has non-zero q/k/v biases but the config says qkv_bias=False (processed weights?)"
                )
            out[p + f"{hf}.output.dense.weight"] = sd[b + f"{ours}.W_O"].reshape(H * E, d).T
            out[p + f"{hf}.output.dense.bias"] = sd[b + f"{ours}.b_O"]
        out[p + "temporal_dense.weight"] = torch.eye(d, dtype=W_E.dtype, device=W_E.device)
        out[p + "temporal_dense.bias"] = torch.zeros(d, dtype=W_E.dtype, device=W_E.device)
        for hf, ours in _NORMS:
            out[p + f"{hf}.weight"], out[p + f"{hf}.bias"] = sd[b + f"{ours}.w"], sd[b + f"{ours}.b"]
        out.update(bert_mlp_to_hf(sd, cfg, b, p))
    if has_classifier:
        out["classifier.weight"], out["classifier.bias"] = sd["unembed.W_U"].T, sd["unembed.b_U"]
    return {k: v.contiguous() for k, v in out.items()}
