"""V-JEPA 2 checkpoint <-> hooked weights.

Reads VJEPA2ForVideoClassification checkpoints (``vjepa2.encoder.*``, ``pooler.*``, ``classifier.*``)
and VJEPA2Model ones (``encoder.*``, no prefix). The hub checkpoints (facebook/vjepa2-*, written by
transformers 4.53) and current transformers (5.x, which has no key renaming for vjepa2 in its
loader) use the same key names, so one mapping reads both; either prefix is accepted. The
predictor (``predictor.*``, the pretraining head classification never runs) is dropped, and not
written back: transformers initialises it afresh when it loads a saved checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from weights_conversion.common import (
    CheckpointError,
    StateDict,
    activation_shapes,
    check_finite,
    check_keys,
    is_hooked_layout,
    shapes_after_conversion,
)

if TYPE_CHECKING:  # the converter reads the config only; it never imports the model
    from hooked_vivit.vjepa2 import HookedVJEPA2Config

_ENC = "encoder."
_POOL = "pooler."


def normalize_hf_keys(state_dict: StateDict) -> StateDict:
    """Either prefix -> keys without ``vjepa2.``; the predictor's keys are dropped."""
    out: StateDict = {}
    for key, value in state_dict.items():
        new = key.removeprefix("vjepa2.")
        if new.startswith("predictor."):
            continue
        if new in out:
            raise CheckpointError(f"checkpoint holds {new!r} twice (with and without the 'vjepa2.' prefix?)")
        out[new] = value
    return out


def _block_shapes(
    p: str, cfg: HookedVJEPA2Config, names: dict[str, str], d_mlp: int, qkv_bias: bool, out_proj: str | None
) -> dict[str, tuple[int, ...]]:
    d = cfg.d_model
    shapes: dict[str, tuple[int, ...]] = {}
    for ln in (names["ln1"], names["ln2"]):
        shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (d,)
    for m in ("q", "k", "v"):
        shapes[f"{p}{names['attn']}.{names[m]}.weight"] = (d, d)
        if qkv_bias:
            shapes[f"{p}{names['attn']}.{names[m]}.bias"] = (d,)
    if out_proj:
        shapes[f"{p}{names['attn']}.{out_proj}.weight"], shapes[f"{p}{names['attn']}.{out_proj}.bias"] = (d, d), (d,)
    shapes[f"{p}mlp.fc1.weight"], shapes[f"{p}mlp.fc1.bias"] = (d_mlp, d), (d_mlp,)
    shapes[f"{p}mlp.fc2.weight"], shapes[f"{p}mlp.fc2.bias"] = (d, d_mlp), (d,)
    for name, shape in activation_shapes(cfg).items():
        shapes[f"{p}mlp.activation.{name}"] = shape
    return shapes


_ENCODER_NAMES = {"ln1": "norm1", "ln2": "norm2", "attn": "attention", "q": "query", "k": "key", "v": "value"}
_POOLER_SELF = {
    "ln1": "layer_norm1",
    "ln2": "layer_norm2",
    "attn": "self_attn",
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
}
_POOLER_CROSS = {
    "ln1": "layer_norm1",
    "ln2": "layer_norm2",
    "attn": "cross_attn",
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
}


def expected_hf_shapes(cfg: HookedVJEPA2Config) -> dict[str, tuple[int, ...]]:
    """Every key (no prefix, no predictor) and its shape for this config."""
    d = cfg.d_model
    t, ph, pw = cfg.tubelet_size
    shapes: dict[str, tuple[int, ...]] = {
        f"{_ENC}embeddings.patch_embeddings.proj.weight": (d, cfg.n_channels, t, ph, pw),
        f"{_ENC}embeddings.patch_embeddings.proj.bias": (d,),
        f"{_ENC}layernorm.weight": (d,),
        f"{_ENC}layernorm.bias": (d,),
    }
    for i in range(cfg.n_layers):
        shapes.update(_block_shapes(f"{_ENC}layer.{i}.", cfg, _ENCODER_NAMES, cfg.d_mlp, cfg.qkv_bias, "proj"))  # type: ignore[arg-type]
    if cfg.n_classes:
        shapes[f"{_POOL}query_tokens"] = (1, 1, d)
        for i in range(cfg.n_pooler_layers):
            shapes.update(
                _block_shapes(
                    f"{_POOL}self_attention_layers.{i}.", cfg, _POOLER_SELF, cfg.pooler_d_mlp, True, "out_proj"
                )
            )
        shapes.update(_block_shapes(f"{_POOL}cross_attention_layer.", cfg, _POOLER_CROSS, cfg.pooler_d_mlp, True, None))
        shapes["classifier.weight"], shapes["classifier.bias"] = (cfg.n_classes, d), (cfg.n_classes,)
    return shapes


def expected_hooked_shapes(cfg: HookedVJEPA2Config) -> dict[str, tuple[int, ...]]:
    return shapes_after_conversion(expected_hf_shapes(cfg), _hf_to_hooked, cfg)


def convert_vjepa2_weights(state_dict: StateDict, cfg: HookedVJEPA2Config) -> StateDict:
    """A V-JEPA 2 state dict (either prefix, or already hooked) -> this library's parameter names."""
    check_finite(state_dict)
    if is_hooked_layout(state_dict):
        check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, expected_hooked_shapes(cfg), "hooked checkpoint")
        return dict(state_dict)
    sd = normalize_hf_keys(state_dict)
    check_keys({k: tuple(v.shape) for k, v in sd.items()}, expected_hf_shapes(cfg), "V-JEPA 2 checkpoint")
    return _hf_to_hooked(sd, cfg)


def _block_to_hooked(
    sd: StateDict, p: str, b: str, cfg: HookedVJEPA2Config, names: dict[str, str], out_proj: str | None
) -> StateDict:
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    W_any = sd[f"{p}mlp.fc1.weight"]
    out: StateDict = {
        f"{b}ln1.w": sd[f"{p}{names['ln1']}.weight"],
        f"{b}ln1.b": sd[f"{p}{names['ln1']}.bias"],
        f"{b}ln2.w": sd[f"{p}{names['ln2']}.weight"],
        f"{b}ln2.b": sd[f"{p}{names['ln2']}.bias"],
        f"{b}mlp.W_in": sd[f"{p}mlp.fc1.weight"].T,
        f"{b}mlp.b_in": sd[f"{p}mlp.fc1.bias"],
        f"{b}mlp.W_out": sd[f"{p}mlp.fc2.weight"].T,
        f"{b}mlp.b_out": sd[f"{p}mlp.fc2.bias"],
    }
    for m in ("Q", "K", "V"):
        key = f"{p}{names['attn']}.{names[m.lower()]}"
        out[f"{b}attn.W_{m}"] = sd[f"{key}.weight"].reshape(H, E, d).transpose(1, 2)  # [(h e), d] -> [h, d, e]
        bias = sd.get(f"{key}.bias")
        out[f"{b}attn.b_{m}"] = (
            bias.reshape(H, E) if bias is not None else torch.zeros(H, E, dtype=W_any.dtype, device=W_any.device)
        )
    if out_proj:
        out[f"{b}attn.W_O"] = sd[f"{p}{names['attn']}.{out_proj}.weight"].T.reshape(H, E, d)
        out[f"{b}attn.b_O"] = sd[f"{p}{names['attn']}.{out_proj}.bias"]
    for name in activation_shapes(cfg):
        out[f"{b}mlp.act.{name}"] = sd[f"{p}mlp.activation.{name}"]
    return out


def _hf_to_hooked(sd: StateDict, cfg: HookedVJEPA2Config) -> StateDict:
    out: StateDict = {
        "embed.W_E": sd[f"{_ENC}embeddings.patch_embeddings.proj.weight"],
        "embed.b_E": sd[f"{_ENC}embeddings.patch_embeddings.proj.bias"],
        "ln_final.w": sd[f"{_ENC}layernorm.weight"],
        "ln_final.b": sd[f"{_ENC}layernorm.bias"],
    }
    for i in range(cfg.n_layers):
        out.update(_block_to_hooked(sd, f"{_ENC}layer.{i}.", f"blocks.{i}.", cfg, _ENCODER_NAMES, "proj"))
    if cfg.n_classes:
        out["pooler.query"] = sd[f"{_POOL}query_tokens"].reshape(-1)
        for i in range(cfg.n_pooler_layers):
            out.update(
                _block_to_hooked(
                    sd, f"{_POOL}self_attention_layers.{i}.", f"pooler.blocks.{i}.", cfg, _POOLER_SELF, "out_proj"
                )
            )
        out.update(_block_to_hooked(sd, f"{_POOL}cross_attention_layer.", "pooler.cross.", cfg, _POOLER_CROSS, None))
        out["unembed.W_U"], out["unembed.b_U"] = sd["classifier.weight"].T, sd["classifier.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def _block_to_hf(
    sd: StateDict, b: str, p: str, cfg: HookedVJEPA2Config, names: dict[str, str], out_proj: str | None, qkv_bias: bool
) -> StateDict:
    H, E, d = cfg.n_heads, cfg.d_head, cfg.d_model
    out: StateDict = {
        f"{p}{names['ln1']}.weight": sd[f"{b}ln1.w"],
        f"{p}{names['ln1']}.bias": sd[f"{b}ln1.b"],
        f"{p}{names['ln2']}.weight": sd[f"{b}ln2.w"],
        f"{p}{names['ln2']}.bias": sd[f"{b}ln2.b"],
        f"{p}mlp.fc1.weight": sd[f"{b}mlp.W_in"].T,
        f"{p}mlp.fc1.bias": sd[f"{b}mlp.b_in"],
        f"{p}mlp.fc2.weight": sd[f"{b}mlp.W_out"].T,
        f"{p}mlp.fc2.bias": sd[f"{b}mlp.b_out"],
    }
    for m in ("Q", "K", "V"):
        key = f"{p}{names['attn']}.{names[m.lower()]}"
        out[f"{key}.weight"] = sd[f"{b}attn.W_{m}"].transpose(1, 2).reshape(H * E, d)
        bias = sd[f"{b}attn.b_{m}"]
        if qkv_bias:
            out[f"{key}.bias"] = bias.reshape(H * E)
        elif bias.abs().max() > 0:
            raise ValueError(f"{b}attn.b_{m} is non-zero but the config says qkv_bias=False, which has no place for it")
    if out_proj:
        out[f"{p}{names['attn']}.{out_proj}.weight"] = sd[f"{b}attn.W_O"].reshape(H * E, d).T
        out[f"{p}{names['attn']}.{out_proj}.bias"] = sd[f"{b}attn.b_O"]
    for name in activation_shapes(cfg):
        out[f"{p}mlp.activation.{name}"] = sd[f"{b}mlp.act.{name}"]
    return out


def hooked_to_hf_weights(
    state_dict: StateDict, cfg: HookedVJEPA2Config, *, layout: str = "transformers", prefix: bool | None = None
) -> StateDict:
    """Hooked weights -> a V-JEPA 2 state dict (no predictor). ``layout`` "transformers" or "hub"
    (the same keys); ``prefix`` (default: when there is a classifier) puts the encoder under
    ``vjepa2.`` as VJEPA2ForVideoClassification has it."""
    if layout not in ("transformers", "hub"):
        raise ValueError(f"layout must be 'transformers' or 'hub', got {layout!r}")
    if cfg.normalization_type != "LN":
        raise ValueError("a V-JEPA 2 with folded LayerNorms has no transformers layout; save with layout='hooked'")
    sd = state_dict
    has_classifier = "unembed.W_U" in sd
    enc = ("vjepa2." if (has_classifier if prefix is None else prefix) else "") + _ENC
    out: StateDict = {
        f"{enc}embeddings.patch_embeddings.proj.weight": sd["embed.W_E"],
        f"{enc}embeddings.patch_embeddings.proj.bias": sd["embed.b_E"],
        f"{enc}layernorm.weight": sd["ln_final.w"],
        f"{enc}layernorm.bias": sd["ln_final.b"],
    }
    for i in range(cfg.n_layers):
        out.update(_block_to_hf(sd, f"blocks.{i}.", f"{enc}layer.{i}.", cfg, _ENCODER_NAMES, "proj", cfg.qkv_bias))
    if has_classifier:
        out[f"{_POOL}query_tokens"] = sd["pooler.query"].reshape(1, 1, -1)
        for i in range(cfg.n_pooler_layers):
            out.update(
                _block_to_hf(
                    sd, f"pooler.blocks.{i}.", f"{_POOL}self_attention_layers.{i}.", cfg, _POOLER_SELF, "out_proj", True
                )
            )
        out.update(_block_to_hf(sd, "pooler.cross.", f"{_POOL}cross_attention_layer.", cfg, _POOLER_CROSS, None, True))
        out["classifier.weight"], out["classifier.bias"] = sd["unembed.W_U"].T, sd["unembed.b_U"]
    return {k: v.contiguous() for k, v in out.items()}
