"""HookedVideoMAE: ``transformers.VideoMAEForVideoClassification`` / ``VideoMAEModel`` on the shared core.

What differs from ViViT is config: no CLS (``n_prefix_tokens=0``), a fixed sinusoidal position
table, q/v biases only (b_K is zero), and mean pooling over the tokens then ``fc_norm`` (eps 1e-5)
before the classifier, or, with ``use_mean_pooling=False``, the final LayerNorm over every token and
the classifier on token 0 (a patch token: there is no CLS), as transformers does. Hook names are
ViViT's; ``ln_final`` is fc_norm and its hooks fire on the pooled vector [batch, d_model].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from hooked_vivit.config import HookedViViTConfig, hf_config_fields, with_saved_settings
from hooked_vivit.model import ClassIndices, HookedVideoTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # VideoMAE checkpoints' preprocessor_config.json
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(repr=False)
class HookedVideoMAEConfig(HookedViViTConfig):
    # VideoMAE-B / Kinetics-400 (MCG-NJU/videomae-base-finetuned-kinetics) defaults.
    eps: float = 1e-12
    act_fn: str = "gelu"
    num_frames: int = 16
    n_prefix_tokens: int = 0
    pooling: str = "mean"
    final_norm_eps: float | None = 1e-5  # fc_norm is nn.LayerNorm(hidden_size): torch's default eps
    pos_embed_type: str = "sinusoidal"
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    rescale_factor: float = 1 / 255
    rescale_offset: bool = False
    model_name: str = "videomae"
    original_architecture: str = "VideoMAEForVideoClassification"

    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> HookedVideoMAEConfig:
        """Build from a `transformers.VideoMAEConfig` or its config.json dict."""
        d, kwargs = hf_config_fields(
            hf_config,
            model_type="videomae",
            label="VideoMAE",
            architecture="VideoMAEForVideoClassification",
            eps=1e-12,
        )
        patch = d.get("patch_size", 16)
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
        image_size = d.get("image_size", 224)
        mean_pooling = bool(d.get("use_mean_pooling", True))
        kwargs.update(
            d_mlp=int(d.get("intermediate_size", 3072)),
            num_frames=int(d.get("num_frames", 16)),
            image_size=image_size if isinstance(image_size, int) else tuple(image_size)[:2],
            tubelet_size=(int(d.get("tubelet_size", 2)), int(ph), int(pw)),
            n_channels=int(d.get("num_channels", 3)),
            qkv_bias=bool(d.get("qv_bias", d.get("qkv_bias", True))),
            pooling="mean" if mean_pooling else "first",
            final_norm_eps=1e-5 if mean_pooling else None,
        )
        kwargs = with_saved_settings(d, kwargs, overrides)
        return cls(**kwargs)

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A config.json dict that `transformers.VideoMAEConfig` reads."""
        t, ph, pw = self.tubelet_size
        H, W = self.image_size  # type: ignore[misc]
        d = {
            "model_type": "videomae",
            "architectures": [self.original_architecture],
            "hidden_size": self.d_model,
            "num_attention_heads": self.n_heads,
            "num_hidden_layers": self.n_layers,
            "intermediate_size": self.d_mlp,
            "layer_norm_eps": self.eps,
            "hidden_act": self.act_fn,
            "num_frames": self.num_frames,
            "image_size": H if H == W else [H, W],
            "patch_size": ph if ph == pw else [ph, pw],
            "tubelet_size": t,
            "num_channels": self.n_channels,
            "qv_bias": self.qkv_bias,
            "use_mean_pooling": self.pooling == "mean",
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
        if any(flags.values()):  # processing applied (a hooked-layout save): read back by from_hf_config
            d["hooked_vivit"] = {**flags, "normalization_type": self.normalization_type}
        return d


class HookedVideoMAE(HookedVideoTransformer):
    """VideoMAE (``transformers.VideoMAEForVideoClassification`` / ``VideoMAEModel``), hooked."""

    config_class = HookedVideoMAEConfig
    model_type = "videomae"

    @classmethod
    def checkpoint_overrides(cls, state_dict: dict[str, torch.Tensor], hf_config: dict[str, Any]) -> dict[str, Any]:
        """transformers' VideoMAEModel with use_mean_pooling has no final norm at all (fc_norm lives
        in the classification head): such a checkpoint loads with ``final_norm=False``."""
        mean_pooling = bool(hf_config.get("use_mean_pooling", True))
        has_norm = any(k.endswith(("fc_norm.weight", "ln_final.w")) for k in state_dict)
        # A folded (LNPre) hooked checkpoint has no ln_final.w but still a final norm.
        folded = (hf_config.get("hooked_vivit") or {}).get("folded_ln", False)
        return {"final_norm": False} if mean_pooling and not has_norm and not folded else {}

    def pooled_logit_terms(
        self, cache: Any, classes: ClassIndices
    ) -> tuple[Float[torch.Tensor, "component batch n_ctx"], list[str], Float[torch.Tensor, " batch"]]:
        """Exact direct logit attribution through mean pooling: (terms, labels, constant).

        ``terms[c, b, p]`` is what component c (embed, pos_embed, each attn_out / mlp_out) wrote at
        token p, carried to the logit of ``classes`` (one class, or one per batch row). The pooled
        vector's centred part is linear in the per-token residuals, so with the cached fc_norm scale
        ``terms.sum((0, 2)) + constant`` equals the logit; ``constant`` is fc_norm's bias and the
        classifier's bias read along the class direction. Needs a mean-pooling model with a classifier."""
        if self.cfg.pooling != "mean":
            raise ValueError(
                "pooled_logit_terms reads mean pooling; this model classifies token 0 (use_mean_pooling=False)"
            )
        stack, labels = cache.decompose_resid(
            layer=None, mode="full", apply_ln=False, return_labels=True
        )  # [c, B, P, d]
        scale = cache["ln_final.hook_scale"]  # [B, 1]
        directions = self.tokens_to_residual_directions(classes)
        directions = directions.expand(stack.shape[1], -1) if directions.ndim == 1 else directions  # [B, d]
        w, b = self.ln_final.w, self.ln_final.b
        if w is not None:
            directions = directions * w
        centred = stack - stack.mean(-1, keepdim=True)
        terms = torch.einsum("cbpd,bd->cbp", centred, directions) / (self.cfg.n_ctx * scale.reshape(1, -1, 1))
        idx = self.class_index(classes).to(self.W_U.device).expand(stack.shape[1])
        constant = self.b_U[idx] + (torch.einsum("d,db->b", b, self.W_U[:, idx]) if b is not None else 0)
        return terms, labels, constant


__all__ = ["HookedVideoMAE", "HookedVideoMAEConfig"]
