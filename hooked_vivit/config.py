"""HookedViViTConfig: the shape of a ViViT (model 1, joint space-time attention).

Extends TransformerLens's own config so that ActivationCache and the patching helpers find the
fields they read (n_layers, n_heads, d_model, normalization_type, ...). Defaults are ViViT-B /
Kinetics-400 (`google/vivit-b-16x2-kinetics400`).

Every config transformers runs is accepted and computed as transformers computes it: sizes that
are not multiples of the tubelet (the grid floors; see token_grid for the pixels no token sees),
d_head other than d_model / n_heads (transformers' head_dim), d_mlp = 0, no layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformer_lens.config import TransformerLensConfig

from hooked_vivit.labels import default_id2label
from hooked_vivit.token_grid import TokenGrid

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def to_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bfloat16' / torch.bfloat16 / None -> torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def pixel_constants(preprocessor: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields from a checkpoint's preprocessor_config.json (only the keys it holds)."""
    out: dict[str, Any] = {}
    for key in ("image_mean", "image_std"):
        if key in preprocessor:
            v = preprocessor[key]
            out[key] = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),) * 3
    if preprocessor.get("do_rescale") is False:
        out["rescale_factor"], out["rescale_offset"] = 1.0, False
    else:
        if "rescale_factor" in preprocessor:
            out["rescale_factor"] = float(preprocessor["rescale_factor"])
        if "offset" in preprocessor:
            out["rescale_offset"] = bool(preprocessor["offset"])
    return out


# Sizes a transformers video config gives as integers (or lists of them): int() would truncate 24.5 to 24
# without a word, and transformers itself cannot build a layer of 24.5 features.
_INTEGER_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "head_dim",
    "num_hidden_layers",
    "intermediate_size",
    "num_labels",
    "num_frames",
    "frames_per_clip",
    "num_channels",
    "in_chans",
    "image_size",
    "crop_size",
    "patch_size",
    "tubelet_size",
    "num_pooler_layers",
)


def check_integer_fields(d: Mapping[str, Any], label: str) -> None:
    """Each size field present in a config.json dict is an integer (or a list of integers), else ValueError naming it."""
    for key in _INTEGER_FIELDS:
        value = d.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ValueError(
                f"{label} config field {key!r} must be "
                + ("a list of integers" if isinstance(value, (list, tuple)) else "an integer")
                + f", got {value!r} ({type(bad[0]).__name__} {bad[0]!r}); sizes are whole numbers (transformers "
                "builds its layers from them)"
            )


def hf_config_fields(
    hf_config: Any,
    *,
    model_type: str,
    label: str,
    architecture: str,
    d_model: int = 768,
    n_heads: int = 12,
    n_layers: int = 12,
    eps: float = 1e-6,
    act_fn: str = "gelu",
    head_dim_key: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A transformers config (object or config.json dict) as a dict, and the config fields every
    architecture reads under the same keys (BERT-style names; the defaults are each architecture's).
    ``head_dim_key``: the heads may span ``head_dim`` dimensions instead of hidden_size / heads (ViViT)."""
    d = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    got = d.get("model_type", model_type)
    if got != model_type:
        raise ValueError(f"expected a {label} config (model_type {model_type!r}), got {got!r}")
    check_integer_fields(d, label)
    width, heads = int(d.get("hidden_size", d_model)), int(d.get("num_attention_heads", n_heads))
    if head_dim_key:
        # transformers reads getattr(config, "head_dim", hidden_size // num_attention_heads): the heads
        # may span fewer (or more) dimensions than hidden_size; W_O maps them back.
        head_dim = d.get("head_dim")
        d_head = int(head_dim) if head_dim is not None else width // max(heads, 1)
    else:
        if heads < 1 or width % heads:
            raise ValueError(
                f"hidden_size {width} must be a multiple of num_attention_heads {heads} (as transformers requires)"
            )
        d_head = width // heads
    id2label = d.get("id2label") or {}
    fields = dict(
        d_model=width,
        d_head=d_head,
        n_heads=heads,
        n_layers=int(d.get("num_hidden_layers", n_layers)),
        eps=float(d.get("layer_norm_eps", eps)),
        act_fn=str(d.get("hidden_act", act_fn)),
        # transformers' save_pretrained leaves the default two labels out of config.json: 2, as it reads.
        # num_labels <= 0: transformers' head is the identity (the embedding), a backbone here.
        n_classes=len(id2label) if id2label else max(0, int(d.get("num_labels", 2))),
        id2label=id2label,
        qkv_bias=bool(d.get("qkv_bias", True)),
        initializer_range=float(d.get("initializer_range", 0.02)),
        model_name=str(d.get("_name_or_path") or model_type),
        original_architecture=str((d.get("architectures") or [architecture])[0]),
    )
    return d, fields


def with_saved_settings(d: Mapping[str, Any], fields: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` updated by the checkpoint's pixel constants (preprocessor_config.json, read into
    ``d["preprocessor"]`` by the loader), the processing flags save_pretrained wrote, then ``overrides``."""
    fields.update(pixel_constants(d.get("preprocessor") or {}))
    fields.update(d.get("hooked_vivit", {}))
    fields.update(overrides)
    return fields


@dataclass
class HookedViViTConfig(TransformerLensConfig):
    # TransformerLensConfig's required fields, given ViViT-B defaults (n_ctx is derived).
    d_model: int = 768
    d_head: int = 64
    n_layers: int = 12
    n_ctx: int = -1
    n_heads: int = 12
    d_mlp: int | None = 3072
    eps: float = 1e-6
    act_fn: str = "gelu_fast"
    normalization_type: str | None = "LN"

    # Video fields.
    num_frames: int = 32
    image_size: int | tuple[int, int] = 224
    tubelet_size: tuple[int, int, int] = (2, 16, 16)
    n_channels: int = 3
    n_classes: int = 400
    id2label: dict[int, str] = field(default_factory=dict)
    qkv_bias: bool = True
    initializer_range: float = 0.02

    # What differs between architectures (ViViT's values are the defaults; HookedVideoMAEConfig
    # sets its own). Tokens before the patches: 1 (CLS) or 0.
    n_prefix_tokens: int = 1
    # "first": final LayerNorm over every token, classifier on token 0 (ViViT's CLS);
    # "mean": mean over tokens, then the final LayerNorm (VideoMAE's fc_norm), classifier.
    pooling: str = "first"
    # The final LayerNorm's eps when it differs from eps (VideoMAE's fc_norm: torch's default 1e-5).
    final_norm_eps: float | None = None
    # False: no final LayerNorm (transformers' VideoMAEModel with use_mean_pooling: its
    # last_hidden_state is the last block's output, and the pooled output its plain token mean).
    final_norm: bool = True
    # "learned" (a parameter, W_pos) or "sinusoidal" (a fixed table, a buffer).
    pos_embed_type: str = "learned"
    # Pixel preprocessing: x * rescale_factor (- 1 with rescale_offset), then (x - mean) / std.
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 127.5
    rescale_offset: bool = True

    # Hook switches (TransformerLens names). use_attn_result and use_split_qkv_input come from
    # TransformerLensConfig.
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    # timm's fused_attn: SDPA unless a hook needs the attention scores or pattern.
    use_sdpa: bool = True

    # Bookkeeping.
    model_name: str = "vivit"
    original_architecture: str = "VivitForVideoClassification"
    # Weight processing applied at load time (see hooked_vivit.weight_processing).
    folded_ln: bool = False
    centered_writing_weights: bool = False
    folded_value_biases: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        self.tubelet_size = tuple(int(s) for s in self.tubelet_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or len(self.tubelet_size) != 3:
            raise ValueError(
                f"image_size must be (H, W) and tubelet_size (t, h, w); got {self.image_size} and {self.tubelet_size}"
            )
        if self.pooling not in ("first", "mean", "attentive"):  # attentive: V-JEPA 2's pooler (hooked_vivit.vjepa2)
            raise ValueError(f"pooling must be 'first', 'mean' or 'attentive', got {self.pooling!r}")
        if self.pos_embed_type not in ("learned", "sinusoidal", "rotary"):  # rotary: V-JEPA 2's, on q and k
            raise ValueError(f"pos_embed_type must be 'learned', 'sinusoidal' or 'rotary', got {self.pos_embed_type!r}")
        if self.n_prefix_tokens not in (0, 1):
            raise ValueError(f"n_prefix_tokens must be 0 or 1 (CLS), got {self.n_prefix_tokens}")
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if min(self.tubelet_size) < 1:
            raise ValueError(f"tubelet_size must be positive, got {self.tubelet_size}")
        # Sizes need not be multiples of the tubelet: like transformers' Conv3d (stride = kernel), the
        # token grid floors and the trailing frames / pixel rows / columns feed no token.
        t, h, w = self.tubelet_size
        H, W = self.image_size
        for what, size, step in (("num_frames", self.num_frames, t), ("height", H, h), ("width", W, w)):
            if size < step:
                raise ValueError(
                    f"{what} {size} is smaller than the tubelet size {step}: no token would cover it "
                    "(transformers' Conv3d refuses such an input too)"
                )
        if self.n_heads < 1 or self.d_head < 1:
            # transformers derives head_dim = hidden_size // num_attention_heads, 0 here, and fails.
            raise ValueError(f"n_heads ({self.n_heads}) and d_head ({self.d_head}) must be >= 1")
        # transformers also runs d_mlp = 0 (each MLP adds its output bias) and no layers at all.
        if self.n_channels < 1 or self.d_model < 1 or (self.d_mlp is not None and self.d_mlp < 0) or self.n_layers < 0:
            raise ValueError(
                f"n_channels ({self.n_channels}) and d_model ({self.d_model}) must be >= 1, d_mlp ({self.d_mlp}) "
                f"and n_layers ({self.n_layers}) >= 0"
            )
        n_ctx = self.grid.n_ctx
        if self.n_ctx not in (-1, n_ctx):
            raise ValueError(f"n_ctx {self.n_ctx} disagrees with the token grid, which gives {n_ctx}")
        self.n_ctx = n_ctx
        self.d_vocab = self.n_classes  # TransformerLens reads class count as d_vocab
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if not self.id2label or all(v == f"LABEL_{k}" for k, v in self.id2label.items()):
            self.id2label = default_id2label(self.n_classes)
        self.dtype = to_dtype(self.dtype) or torch.float32
        super().__post_init__()

    # ------------------------------------------------------------------ derived
    @property
    def grid(self) -> TokenGrid:
        t, h, w = self.tubelet_size
        H, W = self.image_size  # type: ignore[misc]
        # Floors, as transformers' Conv3d (stride = kernel) and its position-embedding count.
        return TokenGrid(
            self.num_frames // t,
            H // h,
            W // w,
            tubelet_size=self.tubelet_size,
            num_frames=self.num_frames,
            image_size=self.image_size,
            n_prefix=self.n_prefix_tokens,  # type: ignore[arg-type]
        )

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    # ------------------------------------------------------------------ HF config <-> ours
    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> HookedViViTConfig:
        """Build from a `transformers.VivitConfig` or its config.json dict."""
        d, kwargs = hf_config_fields(
            hf_config,
            model_type="vivit",
            label="ViViT",
            architecture="VivitForVideoClassification",
            act_fn="gelu_fast",
            head_dim_key=True,
        )
        image_size = d.get("image_size", 224)
        if not isinstance(image_size, int):
            # transformers reads image_size[0] and [1] only: a longer list works there, extras ignored.
            image_size = list(image_size)
            if len(image_size) < 2:
                raise ValueError(f"image_size must be an int or (height, width), got {d.get('image_size')!r}")
            image_size = tuple(image_size[:2])
        kwargs.update(
            d_mlp=int(d.get("intermediate_size", 3072)),
            num_frames=int(d.get("num_frames", 32)),
            image_size=image_size,
            tubelet_size=tuple(d.get("tubelet_size", (2, 16, 16))),
            n_channels=int(d.get("num_channels", 3)),
        )
        kwargs = with_saved_settings(d, kwargs, overrides)
        return cls(**kwargs)

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A config.json dict that `transformers.VivitConfig` reads."""
        d: dict[str, Any] = {
            "model_type": "vivit",
            "architectures": [self.original_architecture],
            "hidden_size": self.d_model,
            "num_attention_heads": self.n_heads,
            **({"head_dim": self.d_head} if self.d_head != self.d_model // self.n_heads else {}),
            "num_hidden_layers": self.n_layers,
            "intermediate_size": self.d_mlp,
            "layer_norm_eps": self.eps,
            "hidden_act": self.act_fn,
            "num_frames": self.num_frames,
            "image_size": list(self.image_size) if self.image_size[0] != self.image_size[1] else self.image_size[0],  # type: ignore[index]
            "tubelet_size": list(self.tubelet_size),
            "num_channels": self.n_channels,
            "qkv_bias": self.qkv_bias,
            "initializer_range": self.initializer_range,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "_name_or_path": self.model_name,
        }
        if self.n_classes:
            d["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
            d["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        flags = {
            "folded_ln": self.folded_ln,
            "centered_writing_weights": self.centered_writing_weights,
            "folded_value_biases": self.folded_value_biases,
        }
        if any(flags.values()):
            d["hooked_vivit"] = {**flags, "normalization_type": self.normalization_type}
        return d

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v
        return out

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_config_dict(), indent=2) + "\n")

    def __repr__(self) -> str:
        g = self.grid
        path = "SDPA unless scores/pattern hooked" if self.use_sdpa else "explicit (pattern always)"
        heads = f"{self.n_heads} heads" + (f" of {self.d_head}" if self.n_heads * self.d_head != self.d_model else "")
        H, W = self.image_size  # type: ignore[misc]
        unseen = (self.num_frames - g.covered_frames.stop, H - g.covered_rows.stop, W - g.covered_cols.stop)
        unseen_text = (
            f" (no token sees the last {unseen[0]} frames, {unseen[1]} pixel rows, {unseen[2]} pixel cols)"
            if any(unseen)
            else ""
        )
        return (
            f"{type(self).__name__}({self.model_name!r}: {self.n_layers} layers x {heads}, "
            f"d_model {self.d_model}, d_mlp {self.d_mlp}, tokens {self.n_prefix_tokens} + {g.n_frame_slots}x{g.n_rows}x"
            f"{g.n_cols} = {self.n_ctx}, input {self.num_frames}x{self.n_channels}x"
            f"{H}x{W}{unseen_text}, tubelet {self.tubelet_size}, "
            f"{self.n_classes} classes, attention {path}, dtype {str(self.dtype).removeprefix('torch.')})"
        )


__all__ = ["HookedViViTConfig", "pixel_constants", "to_dtype"]
