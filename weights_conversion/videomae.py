"""VideoMAE checkpoint <-> hooked weights.

Reads both key layouts, with or without the ``videomae.`` prefix: the hub checkpoint's
(``attention.attention.q_bias`` / ``v_bias``, no key bias) and the one current transformers writes
(``attention.attention.query.bias`` / ``value.bias``). The key projection has no bias: b_K is zero,
except for checkpoints of transformers releases that gave it one (read into b_K; the softmax ignores it).
The sinusoidal position table is not a parameter (transformers keeps it as a plain tensor); a
checkpoint that carries it anyway has it dropped. With ``use_mean_pooling`` the classifier reads
``fc_norm`` (hooked ``ln_final``) of the token mean; without it, ``videomae.layernorm`` of token 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
from weights_conversion.vivit import drop_identity_layer_norms

if TYPE_CHECKING:  # the converter reads the config only; it never imports the model
    from hooked_vivit.config import HookedViViTConfig

_HUB_BIAS = re.compile(r"\.attention\.attention\.(q|v)_bias$")
_IGNORED = re.compile(r"^(videomae\.)?embeddings\.position_embeddings$")
_ATTN = "attention.attention."


_PREFIX = "videomae."
_UNPREFIXED = ("fc_norm.", "classifier.")  # VideoMAEForVideoClassification keeps these outside videomae.


def normalize_hf_keys(state_dict: StateDict) -> StateDict:
    """Either layout, with or without ``videomae.`` -> current transformers keys without prefix."""
    return _normalize(state_dict)[0]


def _normalize(state_dict: StateDict) -> tuple[StateDict, dict[str, str]]:
    """(normalised state dict, normalised key -> the checkpoint's own spelling)."""
    out: StateDict = {}
    spelled: dict[str, str] = {}
    for key, value in state_dict.items():
        if _IGNORED.match(key):
            continue
        new = _HUB_BIAS.sub(
            lambda m: f".attention.attention.{'query' if m[1] == 'q' else 'value'}.bias", key.removeprefix(_PREFIX)
        )
        if new in out:
            raise CheckpointError(f"checkpoint holds {new!r} twice (in both key layouts?)")
        out[new], spelled[new] = value, key
    return out, spelled


def checkpoint_spelling(state_dict: StateDict) -> Callable[[str], str]:
    """Normalised key -> how this checkpoint would spell it (its bias layout and prefix)."""
    prefixed = any(k.startswith(_PREFIX) for k in state_dict)
    hub = any(_HUB_BIAS.search(k) for k in state_dict)

    def spell(key: str) -> str:
        if hub:
            key = re.sub(
                r"\.attention\.attention\.(query|value)\.bias$", lambda m: f".attention.attention.{m[1][0]}_bias", key
            )
        return _PREFIX + key if prefixed and not key.startswith(_UNPREFIXED) else key

    return spell


def _final_norm_key(cfg: HookedViViTConfig) -> str:
    return "fc_norm" if cfg.pooling == "mean" else "layernorm"


def expected_hf_shapes(cfg: HookedViViTConfig) -> dict[str, tuple[int, ...]]:
    """Every key (current layout, no prefix) and its shape for this config."""
    d, hd = cfg.d_model, cfg.n_heads * cfg.d_head
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.patch_embeddings.projection.weight": (d, cfg.n_channels, *cfg.tubelet_size),
        "embeddings.patch_embeddings.projection.bias": (d,),
    }
    if cfg.final_norm:  # VideoMAEModel with mean pooling has none
        shapes[f"{_final_norm_key(cfg)}.weight"] = shapes[f"{_final_norm_key(cfg)}.bias"] = (d,)
    for i in range(cfg.n_layers):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            shapes[p + _ATTN + f"{m}.weight"] = (hd, d)
        if cfg.qkv_bias:
            shapes[p + _ATTN + "query.bias"] = shapes[p + _ATTN + "value.bias"] = (hd,)
        shapes[p + "attention.output.dense.weight"], shapes[p + "attention.output.dense.bias"] = (d, hd), (d,)
        for ln in ("layernorm_before", "layernorm_after"):
            shapes[p + f"{ln}.weight"] = shapes[p + f"{ln}.bias"] = (d,)
        shapes.update(bert_mlp_shapes(cfg, p))
    shapes.update(classifier_shapes(cfg))
    return shapes


def expected_hooked_shapes(cfg: HookedViViTConfig) -> dict[str, tuple[int, ...]]:
    return shapes_after_conversion(expected_hf_shapes(cfg), _hf_to_hooked, cfg)


def convert_videomae_weights(state_dict: StateDict, cfg: HookedViViTConfig) -> StateDict:
    """A VideoMAE state dict (either layout, or already hooked) -> this library's parameter names."""
    check_finite(state_dict)
    if is_hooked_layout(state_dict):
        check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, expected_hooked_shapes(cfg), "hooked checkpoint")
        return dict(state_dict)
    sd, spelled = _normalize(state_dict)
    spell = checkpoint_spelling(state_dict)
    expected = expected_hf_shapes(cfg)
    if cfg.qkv_bias:
        # Some transformers 5.x releases (5.17, for one) gave the key projection a learned bias too;
        # it becomes b_K. It adds q . b_K to every score of a query row, which the softmax ignores.
        for i in range(cfg.n_layers):
            key_bias = f"encoder.layer.{i}.{_ATTN}key.bias"
            if key_bias in sd:
                expected[key_bias] = (cfg.n_heads * cfg.d_head,)
    check_keys(
        {k: tuple(v.shape) for k, v in sd.items()},
        expected,
        "VideoMAE checkpoint",
        spell=lambda k: spelled.get(k) or spell(k),
    )
    return _hf_to_hooked(sd, cfg)


def _hf_to_hooked(sd: StateDict, cfg: HookedViViTConfig) -> StateDict:
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    W_E = sd["embeddings.patch_embeddings.projection.weight"]
    zeros = torch.zeros(H, E, dtype=W_E.dtype, device=W_E.device)
    norm = _final_norm_key(cfg)
    out: StateDict = {
        "embed.W_E": W_E,
        "embed.b_E": sd["embeddings.patch_embeddings.projection.bias"],
    }
    if cfg.final_norm:
        out["ln_final.w"], out["ln_final.b"] = sd[f"{norm}.weight"], sd[f"{norm}.bias"]
    for i in range(cfg.n_layers):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for m, hf in (("Q", "query"), ("K", "key"), ("V", "value")):
            out[b + f"attn.W_{m}"] = (
                sd[p + _ATTN + f"{hf}.weight"].reshape(H, E, d).transpose(1, 2)
            )  # [(h e), d] -> [h, d, e]
            bias = sd.get(p + _ATTN + f"{hf}.bias")
            out[b + f"attn.b_{m}"] = bias.reshape(H, E) if bias is not None else zeros
        out[b + "attn.W_O"] = sd[p + "attention.output.dense.weight"].T.reshape(H, E, d)
        out[b + "attn.b_O"] = sd[p + "attention.output.dense.bias"]
        out[b + "ln1.w"], out[b + "ln1.b"] = sd[p + "layernorm_before.weight"], sd[p + "layernorm_before.bias"]
        out[b + "ln2.w"], out[b + "ln2.b"] = sd[p + "layernorm_after.weight"], sd[p + "layernorm_after.bias"]
        out.update(bert_mlp_to_hooked(sd, cfg, p, b))
    if cfg.n_classes:
        out["unembed.W_U"], out["unembed.b_U"] = sd["classifier.weight"].T, sd["classifier.bias"]
    if cfg.normalization_type == "LNPre":
        drop_identity_layer_norms(out)
    return {k: v.contiguous() for k, v in out.items()}


def hooked_to_hf_weights(
    state_dict: StateDict, cfg: HookedViViTConfig, *, layout: str = "transformers", prefix: bool | None = None
) -> StateDict:
    """Hooked weights -> a VideoMAE state dict: ``layout`` "transformers" (query.bias / value.bias)
    or "hub" (q_bias / v_bias); ``prefix`` (default: when there is a classifier) adds ``videomae.``
    as VideoMAEForVideoClassification has it (fc_norm and classifier stay unprefixed)."""
    if layout not in ("transformers", "hub"):
        raise ValueError(f"layout must be 'transformers' or 'hub', got {layout!r}")
    if cfg.normalization_type != "LN":
        raise ValueError(
            "a VideoMAE with folded LayerNorms (LNPre) has no transformers layout yet; save with layout='hooked'"
        )
    sd, H, E, d = state_dict, cfg.n_heads, cfg.d_head, cfg.d_model
    has_classifier = "unembed.W_U" in sd
    prefix = has_classifier if prefix is None else prefix
    pre = "videomae." if prefix else ""
    out: StateDict = {
        pre + "embeddings.patch_embeddings.projection.weight": sd["embed.W_E"],
        pre + "embeddings.patch_embeddings.projection.bias": sd["embed.b_E"],
    }
    norm = "fc_norm" if cfg.pooling == "mean" else pre + "layernorm"
    if cfg.final_norm:
        out[f"{norm}.weight"], out[f"{norm}.bias"] = sd["ln_final.w"], sd["ln_final.b"]
    for i in range(cfg.n_layers):
        p, b = f"{pre}encoder.layer.{i}.", f"blocks.{i}."
        for m, hf in (("Q", "query"), ("K", "key"), ("V", "value")):
            out[p + _ATTN + f"{hf}.weight"] = sd[b + f"attn.W_{m}"].transpose(1, 2).reshape(H * E, d)
        if sd[b + "attn.b_K"].abs().max() > 0:
            raise ValueError(f"layer {i} has a non-zero b_K, which VideoMAE cannot hold (processed weights?)")
        for m, hf in (("Q", "q"), ("V", "v")):
            bias = sd[b + f"attn.b_{m}"]
            if cfg.qkv_bias:
                out[p + _ATTN + (f"{hf}_bias" if layout == "hub" else f"{'query' if hf == 'q' else 'value'}.bias")] = (
                    bias.reshape(H * E)
                )
            elif bias.abs().max() > 0:
                raise ValueError(
                    f"layer {i} has a non-zero b_{m} but the config says qv_bias=False (processed weights?)"
                )
        out[p + "attention.output.dense.weight"] = sd[b + "attn.W_O"].reshape(H * E, d).T
        out[p + "attention.output.dense.bias"] = sd[b + "attn.b_O"]
        out[p + "layernorm_before.weight"], out[p + "layernorm_before.bias"] = sd[b + "ln1.w"], sd[b + "ln1.b"]
        out[p + "layernorm_after.weight"], out[p + "layernorm_after.bias"] = sd[b + "ln2.w"], sd[b + "ln2.b"]
        out.update(bert_mlp_to_hf(sd, cfg, b, p))
    if has_classifier:
        out["classifier.weight"], out["classifier.bias"] = sd["unembed.W_U"].T, sd["unembed.b_U"]
    return {k: v.contiguous() for k, v in out.items()}
