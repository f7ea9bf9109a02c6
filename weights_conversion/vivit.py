"""ViViT checkpoint <-> hooked weights.

Reads both Hugging Face key layouts, with or without the ``vivit.`` prefix:
- the hub checkpoint's (transformers < 5.9): ``encoder.layer.{i}.attention.attention.query``,
  ``attention.output.dense``, ``intermediate.dense``, ``output.dense``, ``layernorm_before/after``;
- transformers >= 5.9's: ``layers.{i}.attention.q_proj|k_proj|v_proj|o_proj``, ``mlp.fc1|fc2``.
A VivitModel checkpoint (no ``classifier``) converts with ``cfg.n_classes == 0``; its pooler
(dense + tanh, unused by the classifier) is dropped. The reverse writes either layout.

Kept beside tests/test_conversion.py and tests/test_parity.py: any change here is checked there
against transformers itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from weights_conversion.common import (
    CheckpointError,
    StateDict,
    activation_shapes,
    check_finite,
    check_keys,
    is_hooked_layout,
    rename_key,
    shapes_after_conversion,
)

if TYPE_CHECKING:  # annotations only: the converter reads the config, never the model
    from hooked_vivit.config import HookedViViTConfig

# (hub checkpoint, transformers >= 5.9) spellings of the same key part, after the optional "vivit."
# prefix is removed; "^" anchors at the key's start. Applied in this order in either direction
# (".attention.output.dense." must be renamed before the MLP's ".output.dense.").
KEY_PAIRS = [
    ("^encoder.layer.", "layers."),
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".intermediate.intermediate_act_fn.", ".mlp.activation_fn."),
    (".output.dense.", ".mlp.fc2."),
]


def _rules(pairs: list[tuple[str, str]], to_new: bool) -> list[tuple[re.Pattern, str]]:
    out = []
    for hub, new in pairs:
        anchored = hub.startswith("^")
        src, dst = (hub.removeprefix("^"), new) if to_new else (new, hub.removeprefix("^"))
        out.append((re.compile(("^" if anchored else "") + re.escape(src)), dst.replace("\\", "\\\\")))
    return out


_HUB_TO_NEW = _rules(KEY_PAIRS, to_new=True)
_NEW_TO_HUB = _rules(KEY_PAIRS, to_new=False)
_IGNORED = re.compile(r"^(vivit\.)?pooler\.")
_PREFIX = "vivit."


def normalize_hf_keys(state_dict: StateDict) -> StateDict:
    """Either HF layout, with or without ``vivit.`` -> transformers >= 5.9 keys without prefix."""
    return _normalize(state_dict)[0]


def _normalize(state_dict: StateDict) -> tuple[StateDict, dict[str, str]]:
    """(normalised state dict, normalised key -> the checkpoint's own spelling)."""
    out: StateDict = {}
    spelled: dict[str, str] = {}
    for key, value in state_dict.items():
        if _IGNORED.match(key):
            continue
        new = rename_key(key.removeprefix(_PREFIX), _HUB_TO_NEW)
        if new in out:
            raise CheckpointError(f"checkpoint holds {new!r} twice (in both key layouts?)")
        out[new], spelled[new] = value, key
    return out, spelled


def checkpoint_spelling(state_dict: StateDict) -> Callable[[str], str]:
    """Normalised key -> how this checkpoint would spell it (its layout and prefix), so that
    error messages name keys as the user's file does."""
    prefixed = any(k.startswith(_PREFIX) for k in state_dict)
    hub = any(k.removeprefix(_PREFIX).startswith("encoder.layer.") for k in state_dict)

    def spell(key: str) -> str:
        key = rename_key(key, _NEW_TO_HUB) if hub else key
        return _PREFIX + key if prefixed and not key.startswith("classifier.") else key

    return spell


def expected_hf_shapes(cfg: HookedViViTConfig) -> dict[str, tuple[int, ...]]:
    """Every key (transformers >= 5.9 layout, no prefix) and its shape for this config."""
    d, hd = cfg.d_model, cfg.n_heads * cfg.d_head
    act_shapes = activation_shapes(cfg)
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, d),
        "embeddings.position_embeddings": (1, cfg.n_ctx, d),
        "embeddings.patch_embeddings.projection.weight": (d, cfg.n_channels, *cfg.tubelet_size),
        "embeddings.patch_embeddings.projection.bias": (d,),
        "layernorm.weight": (d,),
        "layernorm.bias": (d,),
    }
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for m in "qkv":
            shapes[p + f"attention.{m}_proj.weight"] = (hd, d)
            if cfg.qkv_bias:
                shapes[p + f"attention.{m}_proj.bias"] = (hd,)
        shapes[p + "attention.o_proj.weight"] = (d, hd)
        shapes[p + "attention.o_proj.bias"] = (d,)
        for ln in ("layernorm_before", "layernorm_after"):
            shapes[p + f"{ln}.weight"] = (d,)
            shapes[p + f"{ln}.bias"] = (d,)
        shapes[p + "mlp.fc1.weight"] = (cfg.d_mlp, d)  # type: ignore[assignment]
        shapes[p + "mlp.fc1.bias"] = (cfg.d_mlp,)  # type: ignore[assignment]
        shapes[p + "mlp.fc2.weight"] = (d, cfg.d_mlp)  # type: ignore[assignment]
        shapes[p + "mlp.fc2.bias"] = (d,)
        for name, shape in act_shapes.items():
            shapes[p + f"mlp.activation_fn.{name}"] = shape
    if cfg.n_classes:
        shapes["classifier.weight"] = (cfg.n_classes, d)
        shapes["classifier.bias"] = (cfg.n_classes,)
    return shapes


def expected_hooked_shapes(cfg: HookedViViTConfig) -> dict[str, tuple[int, ...]]:
    """Every hooked parameter and its shape: the conversion of an HF checkpoint of meta tensors
    (from the config alone; the model is never built)."""
    return shapes_after_conversion(expected_hf_shapes(cfg), _hf_to_hooked, cfg)


def convert_vivit_weights(state_dict: StateDict, cfg: HookedViViTConfig) -> StateDict:
    """A ViViT state dict (either HF layout, or already hooked) -> this library's parameter names."""
    check_finite(state_dict)
    if is_hooked_layout(state_dict):
        check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, expected_hooked_shapes(cfg), "hooked checkpoint")
        return dict(state_dict)
    sd, spelled = _normalize(state_dict)
    spell = checkpoint_spelling(state_dict)
    check_keys(
        {k: tuple(v.shape) for k, v in sd.items()},
        expected_hf_shapes(cfg),
        "ViViT checkpoint",
        spell=lambda k: spelled.get(k) or spell(k),
    )
    return _hf_to_hooked(sd, cfg)


def _hf_to_hooked(sd: StateDict, cfg: HookedViViTConfig) -> StateDict:
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    act_names = list(activation_shapes(cfg))
    out: StateDict = {
        "embed.W_E": sd["embeddings.patch_embeddings.projection.weight"],
        "embed.b_E": sd["embeddings.patch_embeddings.projection.bias"],
        "embed.cls_token": sd["embeddings.cls_token"].reshape(d),
        "pos_embed.W_pos": sd["embeddings.position_embeddings"].reshape(cfg.n_ctx, d),
        "ln_final.w": sd["layernorm.weight"],
        "ln_final.b": sd["layernorm.bias"],
    }
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", f"blocks.{i}."
        for m, hf in (("Q", "q"), ("K", "k"), ("V", "v")):
            # nn.Linear weight [(h e), d] -> [h, d, e]
            out[b + f"attn.W_{m}"] = sd[p + f"attention.{hf}_proj.weight"].reshape(H, E, d).transpose(1, 2)
            bias = sd.get(p + f"attention.{hf}_proj.bias")
            out[b + f"attn.b_{m}"] = (
                bias.reshape(H, E)
                if bias is not None
                else torch.zeros(H, E, dtype=out["embed.W_E"].dtype, device=out["embed.W_E"].device)
            )
        out[b + "attn.W_O"] = sd[p + "attention.o_proj.weight"].T.reshape(H, E, d)  # [d, (h e)] -> [h, e, d]
        out[b + "attn.b_O"] = sd[p + "attention.o_proj.bias"]
        out[b + "ln1.w"], out[b + "ln1.b"] = sd[p + "layernorm_before.weight"], sd[p + "layernorm_before.bias"]
        out[b + "ln2.w"], out[b + "ln2.b"] = sd[p + "layernorm_after.weight"], sd[p + "layernorm_after.bias"]
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = sd[p + "mlp.fc1.weight"].T, sd[p + "mlp.fc1.bias"]
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = sd[p + "mlp.fc2.weight"].T, sd[p + "mlp.fc2.bias"]
        for name in act_names:
            out[b + f"mlp.act.{name}"] = sd[p + f"mlp.activation_fn.{name}"]
    if cfg.n_classes:
        out["unembed.W_U"] = sd["classifier.weight"].T
        out["unembed.b_U"] = sd["classifier.bias"]
    if cfg.normalization_type == "LNPre":
        drop_identity_layer_norms(out)
    return {k: v.contiguous() for k, v in out.items()}


def drop_identity_layer_norms(out: StateDict) -> None:
    # A folded model saved in HF layout carries identity LayerNorms; LNPre has no parameters.
    for key in [k for k in out if k.endswith(("ln1.w", "ln2.w", "ln_final.w"))]:
        w, b = out.pop(key), out.pop(key[:-1] + "b")
        if not w.is_meta and not (torch.all(w == 1) and torch.all(b == 0)):
            raise CheckpointError(f"config says the LayerNorms are folded (LNPre) but {key} is not the identity")


def hooked_to_hf_weights(
    state_dict: StateDict, cfg: HookedViViTConfig, *, layout: str = "transformers", prefix: bool | None = None
) -> StateDict:
    """Hooked weights -> an HF state dict. ``layout``: "transformers" (>= 5.9 keys) or "hub".
    ``prefix`` (default: when there is a classifier) adds ``vivit.`` as VivitForVideoClassification."""
    if layout not in ("transformers", "hub"):
        raise ValueError(f"layout must be 'transformers' or 'hub', got {layout!r}")
    sd = state_dict
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    act_names = list(activation_shapes(cfg))
    ref = sd["embed.W_E"]

    def ln(key: str, kind: str) -> torch.Tensor:
        # LNPre (after fold_ln) has no parameters: the identity LayerNorm reproduces it.
        if key in sd:
            return sd[key]
        return torch.ones(d, dtype=ref.dtype) if kind == "w" else torch.zeros(d, dtype=ref.dtype)

    out: StateDict = {
        "embeddings.cls_token": sd["embed.cls_token"].reshape(1, 1, d),
        "embeddings.position_embeddings": sd["pos_embed.W_pos"].reshape(1, cfg.n_ctx, d),
        "embeddings.patch_embeddings.projection.weight": sd["embed.W_E"],
        "embeddings.patch_embeddings.projection.bias": sd["embed.b_E"],
        "layernorm.weight": ln("ln_final.w", "w"),
        "layernorm.bias": ln("ln_final.b", "b"),
    }
    for i in range(cfg.n_layers):
        p, b = f"layers.{i}.", f"blocks.{i}."
        for m, hf in (("Q", "q"), ("K", "k"), ("V", "v")):
            out[p + f"attention.{hf}_proj.weight"] = sd[b + f"attn.W_{m}"].transpose(1, 2).reshape(H * E, d)
            bias = sd[b + f"attn.b_{m}"]
            if cfg.qkv_bias:
                out[p + f"attention.{hf}_proj.bias"] = bias.reshape(H * E)
            elif bias.abs().max() > 0:
                raise ValueError(
                    f"layer {i} has a non-zero b_{m} but the config says qkv_bias=False (processed weights?)"
                )
        out[p + "attention.o_proj.weight"] = sd[b + "attn.W_O"].reshape(H * E, d).T
        out[p + "attention.o_proj.bias"] = sd[b + "attn.b_O"]
        out[p + "layernorm_before.weight"], out[p + "layernorm_before.bias"] = (
            ln(b + "ln1.w", "w"),
            ln(b + "ln1.b", "b"),
        )
        out[p + "layernorm_after.weight"], out[p + "layernorm_after.bias"] = ln(b + "ln2.w", "w"), ln(b + "ln2.b", "b")
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = sd[b + "mlp.W_in"].T, sd[b + "mlp.b_in"]
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = sd[b + "mlp.W_out"].T, sd[b + "mlp.b_out"]
        for name in act_names:
            out[p + f"mlp.activation_fn.{name}"] = sd[b + f"mlp.act.{name}"]
    has_classifier = "unembed.W_U" in sd
    if prefix is None:
        prefix = has_classifier
    result: StateDict = {}
    for key, value in out.items():
        key = rename_key(key, _NEW_TO_HUB) if layout == "hub" else key
        result[("vivit." if prefix else "") + key] = value.contiguous()
    if has_classifier:
        result["classifier.weight"] = sd["unembed.W_U"].T.contiguous()
        result["classifier.bias"] = sd["unembed.b_U"].contiguous()
    return result
