"""VideoPrism checkpoint <-> hooked weights.

Reads what transformers 5.x writes (``save_pretrained``), which is also the hub checkpoints' key
layout (VideoPrism entered transformers in 5.x; its loader renames no keys, so "hub" and
"transformers" are one layout):
- VideoPrismForVideoClassification: ``vision_model.*``, ``head.*``, ``head_layernorm.*``, ``classifier.*``;
- VideoPrismVideoModel (the CLIP video tower): ``vision_model.*``, ``auxiliary_layers.*``, ``head.*``,
  ``head_layernorm.*``;
- VideoPrismClipModel: the same under ``video_model.``; the text tower (``text_model.*``) is dropped;
- VideoPrismVisionModel: the vision model's keys with no prefix.

transformers' LayerNorms scale by ``weight + 1``: the hooked ``w`` is that sum (and ``weight = w - 1``
on the way back). The pooling head's query ``pooling_attention_query`` [1, 1, d] is ``head.query``
[d]; its projections split into heads of ``intermediate_size // num_attention_heads``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    from hooked_vivit.videoprism import HookedVideoPrismConfig

_VM = "vision_model."
_VISION_ROOTS = (
    "spatial_embeddings.",
    "temporal_embeddings.",
    "spatial_layers.",
    "temporal_layers.",
    "layernorm1.",
    "layernorm2.",
)


def normalize_hf_keys(state_dict: StateDict) -> StateDict:
    """Any of the four layouts -> keys as VideoPrismForVideoClassification / VideoPrismVideoModel name
    them (``vision_model.*`` ...); the CLIP model's text tower is dropped."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith("text_model."):
            continue
        new = key.removeprefix("video_model.")
        if new.startswith(_VISION_ROOTS):
            new = _VM + new
        if new in out:
            raise CheckpointError(f"checkpoint holds {new!r} twice (under two prefixes?)")
        out[new] = value
    return out


def _block_shapes(p: str, cfg: HookedVideoPrismConfig) -> dict[str, tuple[int, ...]]:
    d, M = cfg.d_model, cfg.d_mlp
    shapes: dict[str, tuple[int, ...]] = {}
    for ln in ("layernorm_before", "layernorm_after"):
        shapes[f"{p}{ln}.weight"] = shapes[f"{p}{ln}.bias"] = (d,)
    for m in ("q", "k", "v"):
        shapes[f"{p}attention.{m}_proj.weight"] = (d, d)
        if cfg.qkv_bias:
            shapes[f"{p}attention.{m}_proj.bias"] = (d,)
    shapes[f"{p}attention.o_proj.weight"], shapes[f"{p}attention.o_proj.bias"] = (d, d), (d,)
    shapes[f"{p}mlp.fc1.weight"], shapes[f"{p}mlp.fc1.bias"] = (M, d), (M,)  # type: ignore[assignment]
    shapes[f"{p}mlp.fc2.weight"], shapes[f"{p}mlp.fc2.bias"] = (d, M), (d,)  # type: ignore[assignment]
    for name, shape in activation_shapes(cfg).items():
        shapes[f"{p}mlp.activation_fn.{name}"] = shape
    return shapes


def expected_hf_shapes(cfg: HookedVideoPrismConfig) -> dict[str, tuple[int, ...]]:
    """Every key (normalised: ``vision_model.*``, no CLIP prefix, no text tower) and its shape."""
    d, M = cfg.d_model, cfg.d_mlp
    _, ph, pw = cfg.tubelet_size
    shapes: dict[str, tuple[int, ...]] = {
        f"{_VM}spatial_embeddings.patch_embeddings.projection.weight": (d, cfg.n_channels, 1, ph, pw),
        f"{_VM}spatial_embeddings.patch_embeddings.projection.bias": (d,),
        f"{_VM}spatial_embeddings.position_embeddings": (1, cfg.n_patches, d),
        f"{_VM}temporal_embeddings.position_embeddings": (1, cfg.num_frames, d),
    }
    for ln in ("layernorm1", "layernorm2"):
        shapes[f"{_VM}{ln}.weight"] = shapes[f"{_VM}{ln}.bias"] = (d,)
    for i in range(cfg.n_spatial_layers):
        shapes.update(_block_shapes(f"{_VM}spatial_layers.{i}.", cfg))
    for i in range(cfg.n_temporal_layers):
        shapes.update(_block_shapes(f"{_VM}temporal_layers.{i}.", cfg))
    for i in range(cfg.n_aux_layers):
        shapes.update(_block_shapes(f"auxiliary_layers.{i}.", cfg))
    if cfg.readout != "none":
        shapes["head.per_dim_scale"] = (cfg.d_head_pool,)
        shapes["head.pooling_attention_query"] = (1, 1, d)
        for m in ("q", "k", "v"):
            shapes[f"head.{m}_proj.weight"] = (M, d)  # type: ignore[assignment]
            if cfg.qkv_bias:
                shapes[f"head.{m}_proj.bias"] = (M,)  # type: ignore[assignment]
        shapes["head.o_proj.weight"], shapes["head.o_proj.bias"] = (d, M), (d,)  # type: ignore[assignment]
        shapes["head_layernorm.weight"] = shapes["head_layernorm.bias"] = (d,)
    if cfg.readout == "classifier":
        shapes["classifier.weight"], shapes["classifier.bias"] = (cfg.n_classes, d), (cfg.n_classes,)
    return shapes


def expected_hooked_shapes(cfg: HookedVideoPrismConfig) -> dict[str, tuple[int, ...]]:
    return shapes_after_conversion(expected_hf_shapes(cfg), _hf_to_hooked, cfg)


def convert_videoprism_weights(state_dict: StateDict, cfg: HookedVideoPrismConfig) -> StateDict:
    """A VideoPrism state dict (any layout above, or already hooked) -> this library's parameter names."""
    check_finite(state_dict)
    if is_hooked_layout(state_dict) or any(k.startswith("spatial_blocks.") for k in state_dict):
        check_keys({k: tuple(v.shape) for k, v in state_dict.items()}, expected_hooked_shapes(cfg), "hooked checkpoint")
        return dict(state_dict)
    sd = normalize_hf_keys(state_dict)
    check_keys({k: tuple(v.shape) for k, v in sd.items()}, expected_hf_shapes(cfg), "VideoPrism checkpoint")
    return _hf_to_hooked(sd, cfg)


def _ln(sd: StateDict, hf: str, ours: str) -> StateDict:
    return {f"{ours}.w": sd[f"{hf}.weight"] + 1.0, f"{ours}.b": sd[f"{hf}.bias"]}


def _attn_to_hooked(sd: StateDict, p: str, b: str, H: int, E: int, d: int) -> StateDict:
    out: StateDict = {}
    for m in ("q", "k", "v"):
        w = sd[f"{p}{m}_proj.weight"]
        out[f"{b}W_{m.upper()}"] = w.reshape(H, E, d).transpose(1, 2)  # [(h e), d] -> [h, d, e]
        bias = sd.get(f"{p}{m}_proj.bias")
        out[f"{b}b_{m.upper()}"] = bias.reshape(H, E) if bias is not None else w.new_zeros(H, E)
    out[f"{b}W_O"] = sd[f"{p}o_proj.weight"].T.reshape(H, E, d)
    out[f"{b}b_O"] = sd[f"{p}o_proj.bias"]
    return out


def _block_to_hooked(sd: StateDict, p: str, b: str, cfg: HookedVideoPrismConfig) -> StateDict:
    out = {**_ln(sd, f"{p}layernorm_before", f"{b}ln1"), **_ln(sd, f"{p}layernorm_after", f"{b}ln2")}
    out.update(_attn_to_hooked(sd, f"{p}attention.", f"{b}attn.", cfg.n_heads, cfg.d_head, cfg.d_model))
    out.update(
        {
            f"{b}mlp.W_in": sd[f"{p}mlp.fc1.weight"].T,
            f"{b}mlp.b_in": sd[f"{p}mlp.fc1.bias"],
            f"{b}mlp.W_out": sd[f"{p}mlp.fc2.weight"].T,
            f"{b}mlp.b_out": sd[f"{p}mlp.fc2.bias"],
        }
    )
    for name in activation_shapes(cfg):
        out[f"{b}mlp.act.{name}"] = sd[f"{p}mlp.activation_fn.{name}"]
    return out


def _hf_to_hooked(sd: StateDict, cfg: HookedVideoPrismConfig) -> StateDict:
    d = cfg.d_model
    out: StateDict = {
        "embed.W_E": sd[f"{_VM}spatial_embeddings.patch_embeddings.projection.weight"],
        "embed.b_E": sd[f"{_VM}spatial_embeddings.patch_embeddings.projection.bias"],
        "pos_embed.W_pos": sd[f"{_VM}spatial_embeddings.position_embeddings"].reshape(-1, d),
        "time_embed.W_time": sd[f"{_VM}temporal_embeddings.position_embeddings"].reshape(-1, d),
        **_ln(sd, f"{_VM}layernorm1", "ln_spatial"),
        **_ln(sd, f"{_VM}layernorm2", "ln_final"),
    }
    for i in range(cfg.n_spatial_layers):
        out.update(_block_to_hooked(sd, f"{_VM}spatial_layers.{i}.", f"spatial_blocks.{i}.", cfg))
    for i in range(cfg.n_temporal_layers):
        out.update(_block_to_hooked(sd, f"{_VM}temporal_layers.{i}.", f"temporal_blocks.{i}.", cfg))
    for i in range(cfg.n_aux_layers):
        out.update(_block_to_hooked(sd, f"auxiliary_layers.{i}.", f"aux_blocks.{i}.", cfg))
    if cfg.readout != "none":
        out["head.query"] = sd["head.pooling_attention_query"].reshape(d)
        out["head.attn.per_dim_scale"] = sd["head.per_dim_scale"]
        out.update(_attn_to_hooked(sd, "head.", "head.attn.", cfg.n_heads, cfg.d_head_pool, d))
        out.update(_ln(sd, "head_layernorm", "head_ln"))
    if cfg.readout == "classifier":
        out["unembed.W_U"], out["unembed.b_U"] = sd["classifier.weight"].T, sd["classifier.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def _ln_to_hf(sd: StateDict, ours: str, hf: str) -> StateDict:
    return {f"{hf}.weight": sd[f"{ours}.w"] - 1.0, f"{hf}.bias": sd[f"{ours}.b"]}


def _attn_to_hf(sd: StateDict, b: str, p: str, H: int, E: int, d: int, qkv_bias: bool) -> StateDict:
    out: StateDict = {}
    for m in ("Q", "K", "V"):
        out[f"{p}{m.lower()}_proj.weight"] = sd[f"{b}W_{m}"].transpose(1, 2).reshape(H * E, d)
        bias = sd[f"{b}b_{m}"]
        if qkv_bias:
            out[f"{p}{m.lower()}_proj.bias"] = bias.reshape(H * E)
        elif bias.abs().max() > 0:
            raise ValueError(f"{b}b_{m} is non-zero but the config says qkv_bias=False, which has no place for it")
    out[f"{p}o_proj.weight"] = sd[f"{b}W_O"].reshape(H * E, d).T
    out[f"{p}o_proj.bias"] = sd[f"{b}b_O"]
    return out


def _block_to_hf(sd: StateDict, b: str, p: str, cfg: HookedVideoPrismConfig) -> StateDict:
    out = {**_ln_to_hf(sd, f"{b}ln1", f"{p}layernorm_before"), **_ln_to_hf(sd, f"{b}ln2", f"{p}layernorm_after")}
    out.update(_attn_to_hf(sd, f"{b}attn.", f"{p}attention.", cfg.n_heads, cfg.d_head, cfg.d_model, cfg.qkv_bias))
    out.update(
        {
            f"{p}mlp.fc1.weight": sd[f"{b}mlp.W_in"].T,
            f"{p}mlp.fc1.bias": sd[f"{b}mlp.b_in"],
            f"{p}mlp.fc2.weight": sd[f"{b}mlp.W_out"].T,
            f"{p}mlp.fc2.bias": sd[f"{b}mlp.b_out"],
        }
    )
    for name in activation_shapes(cfg):
        out[f"{p}mlp.activation_fn.{name}"] = sd[f"{b}mlp.act.{name}"]
    return out


def hooked_to_hf_weights(
    state_dict: StateDict, cfg: HookedVideoPrismConfig, *, layout: str = "transformers", prefix: bool | None = None
) -> StateDict:
    """Hooked weights -> a VideoPrism state dict: VideoPrismForVideoClassification's keys (readout
    "classifier"), VideoPrismVideoModel's ("video_embedding") or VideoPrismVisionModel's ("none", no
    prefix unless ``prefix``). ``layout`` "transformers" or "hub" (the same keys)."""
    if layout not in ("transformers", "hub"):
        raise ValueError(f"layout must be 'transformers' or 'hub', got {layout!r}")
    sd, d = state_dict, cfg.d_model
    vm = _VM if (cfg.readout != "none" if prefix is None else prefix) else ""
    out: StateDict = {
        f"{vm}spatial_embeddings.patch_embeddings.projection.weight": sd["embed.W_E"],
        f"{vm}spatial_embeddings.patch_embeddings.projection.bias": sd["embed.b_E"],
        f"{vm}spatial_embeddings.position_embeddings": sd["pos_embed.W_pos"].reshape(1, -1, d),
        f"{vm}temporal_embeddings.position_embeddings": sd["time_embed.W_time"].reshape(1, -1, d),
        **_ln_to_hf(sd, "ln_spatial", f"{vm}layernorm1"),
        **_ln_to_hf(sd, "ln_final", f"{vm}layernorm2"),
    }
    for i in range(cfg.n_spatial_layers):
        out.update(_block_to_hf(sd, f"spatial_blocks.{i}.", f"{vm}spatial_layers.{i}.", cfg))
    for i in range(cfg.n_temporal_layers):
        out.update(_block_to_hf(sd, f"temporal_blocks.{i}.", f"{vm}temporal_layers.{i}.", cfg))
    for i in range(cfg.n_aux_layers):
        out.update(_block_to_hf(sd, f"aux_blocks.{i}.", f"auxiliary_layers.{i}.", cfg))
    if cfg.readout != "none":
        out["head.pooling_attention_query"] = sd["head.query"].reshape(1, 1, d)
        out["head.per_dim_scale"] = sd["head.attn.per_dim_scale"]
        out.update(_attn_to_hf(sd, "head.attn.", "head.", cfg.n_heads, cfg.d_head_pool, d, cfg.qkv_bias))
        out.update(_ln_to_hf(sd, "head_ln", "head_layernorm"))
    if cfg.readout == "classifier":
        out["classifier.weight"], out["classifier.bias"] = sd["unembed.W_U"].T, sd["unembed.b_U"]
    return {k: v.contiguous() for k, v in out.items()}
