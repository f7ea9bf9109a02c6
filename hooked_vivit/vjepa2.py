"""HookedVJEPA2: ``transformers.VJEPA2ForVideoClassification`` / ``VJEPA2Model`` (its encoder) on the shared core.

pixels [batch, frames, C, H, W] -> tubelet tokens (no CLS, no position embeddings) -> pre-LN blocks
whose attention rotates q and k by each token's (frame slot, row, column) (components.rotary_attention)
-> ``ln_final`` (transformers' ``encoder.layernorm``) -> the attentive pooler: ``n_pooler_layers``
self-attention blocks over the tokens, then one learned query cross-attending to them
(components.attentive_pooler) -> classifier on the query's output. A backbone (VJEPA2Model, no
classifier) returns ``last_hidden_state`` [batch, n_ctx, d_model], the normalised tokens.

V-JEPA 2's predictor (the pretraining head that VJEPA2Model runs unless ``skip_predictor``) is not
part of this model: classification never runs it, and its weights are dropped on conversion.

The rotary positions are fixed by ``crop_size`` / ``patch_size`` (the token grid), not by the frame
count: a checkpoint trained on 64 frames runs on 16 with ``from_pretrained(..., num_frames=16)``,
as transformers runs any number of frames.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from jaxtyping import Float
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components import LayerNorm, TransformerBlock, TubeletEmbed, Unembed, hook_layout
from hooked_vivit.components.attentive_pooler import AttentivePooler
from hooked_vivit.components.hook_layout import HookLayout
from hooked_vivit.components.rotary_attention import RotaryAttention
from hooked_vivit.config import HookedViViTConfig, hf_config_fields, with_saved_settings
from hooked_vivit.model import HookedVideoTransformer, PixelValues
from hooked_vivit.videomae import IMAGENET_MEAN, IMAGENET_STD

# Each new hook (a pattern, * = a layer index) -> its named axes. The pooler's self-attention blocks,
# pooler.blocks.{i}.*, have the encoder blocks' hooks and axes (no hook_rot_*), so they are not listed.
# "pooler.cross" hooks live on the query's own stream (one position, "query"); its keys and values on
# the video tokens ("pos").
VJEPA2_HOOK_AXES: dict[str, tuple[str, ...]] = {
    "blocks.*.attn.hook_rot_q": ("batch", "pos", "head", "d_head"),
    "blocks.*.attn.hook_rot_k": ("batch", "pos", "head", "d_head"),
    "pooler.cross.hook_resid_pre": ("batch", "query", "d_model"),
    "pooler.cross.hook_attn_out": ("batch", "query", "d_model"),
    "pooler.cross.hook_resid_mid": ("batch", "query", "d_model"),
    "pooler.cross.hook_mlp_out": ("batch", "query", "d_model"),
    "pooler.cross.hook_resid_post": ("batch", "query", "d_model"),
    "pooler.cross.ln1.hook_scale": ("batch", "pos", "1"),
    "pooler.cross.ln1.hook_normalized": ("batch", "pos", "d_model"),
    "pooler.cross.ln2.hook_scale": ("batch", "query", "1"),
    "pooler.cross.ln2.hook_normalized": ("batch", "query", "d_model"),
    "pooler.cross.attn.hook_q": ("batch", "query", "head", "d_head"),
    "pooler.cross.attn.hook_k": ("batch", "pos", "head", "d_head"),
    "pooler.cross.attn.hook_v": ("batch", "pos", "head", "d_head"),
    "pooler.cross.attn.hook_attn_scores": ("batch", "head", "query", "pos"),
    "pooler.cross.attn.hook_pattern": ("batch", "head", "query", "pos"),
    "pooler.cross.attn.hook_z": ("batch", "query", "head", "d_head"),
    "pooler.cross.attn.hook_result": ("batch", "query", "head", "d_model"),
    "pooler.cross.mlp.hook_pre": ("batch", "query", "d_mlp"),
    "pooler.cross.mlp.hook_post": ("batch", "query", "d_mlp"),
}


def _table_axes(axes: tuple[str, ...]) -> tuple[str, ...]:
    axes = tuple({"head": "head_index", "1": "one"}.get(a, a) for a in axes)
    return axes[:3] + ("key_pos",) if axes[2:] == ("query", "pos") else axes  # the cross-attention's map: a key axis


# V-JEPA 2's own hook leaves in the shared hook-layout table (the pooler's self-attention blocks use the
# shared leaves; cfg.hook_shape sizes the pooler's hooks).
hook_layout.register_hooks(
    {
        key.replace("blocks.*.attn.", ""): HookLayout(
            _table_axes(axes), switch="use_attn_result" if key.endswith("hook_result") else None
        )
        for key, axes in VJEPA2_HOOK_AXES.items()
    },
    {"query": lambda cfg: 1},
)


@dataclass(repr=False)
class HookedVJEPA2Config(HookedViViTConfig):
    # V-JEPA 2 ViT-L (facebook/vjepa2-vitl-fpc64-256) defaults.
    d_model: int = 1024
    d_head: int = 64
    n_layers: int = 24
    n_heads: int = 16
    d_mlp: int | None = 4096
    eps: float = 1e-6
    act_fn: str = "gelu"
    num_frames: int = 64
    image_size: int | tuple[int, int] = 256
    n_prefix_tokens: int = 0
    pooling: str = "attentive"
    pos_embed_type: str = "rotary"
    n_pooler_layers: int = 3
    pooler_d_mlp: int = 4096  # transformers' pooler MLPs: 4 x hidden_size, whatever mlp_ratio
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    rescale_factor: float = 1 / 255
    rescale_offset: bool = False
    model_name: str = "vjepa2"
    original_architecture: str = "VJEPA2ForVideoClassification"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling != "attentive" or self.pos_embed_type != "rotary" or self.n_prefix_tokens:
            raise ValueError(
                "a V-JEPA 2 config has pooling='attentive', pos_embed_type='rotary' and no CLS (n_prefix_tokens=0)"
            )
        if self.image_size[0] != self.image_size[1] or self.tubelet_size[1] != self.tubelet_size[2]:  # type: ignore[index]
            raise ValueError(
                f"V-JEPA 2 takes square frames and patches (crop_size, patch_size), got {self.image_size} and {self.tubelet_size}"
            )
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"hidden_size {self.d_model} must equal num_attention_heads x head size ({self.n_heads} x {self.d_head})"
            )

    def hook_shape(self, name: str, batch: int) -> tuple[int, ...] | None:
        """Shapes of the hooks the shared table (cache_memory.hook_shape) does not size: the rotated q/k and
        the pooler's; NotImplemented: ask the table."""
        B, P, d, H, E = batch, self.n_ctx, self.d_model, self.n_heads, self.d_head
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("hook_rot_q", "hook_rot_k"):
            return (B, P, H, E)
        if name.startswith("pooler.") and leaf in ("hook_pre", "hook_post"):
            return (B, 1 if name.startswith("pooler.cross.") else P, self.pooler_d_mlp)
        if not name.startswith("pooler.cross."):
            return NotImplemented
        if name.startswith("pooler.cross.ln1."):
            return (B, P, 1) if leaf == "hook_scale" else (B, P, d)
        if leaf in ("hook_k", "hook_v"):
            return (B, P, H, E)
        if leaf in ("hook_q", "hook_z"):
            return (B, 1, H, E)
        if leaf in ("hook_attn_scores", "hook_pattern"):
            return (B, H, 1, P)
        if leaf == "hook_result":
            return (B, 1, H, d) if self.use_attn_result else None
        return (B, 1, 1) if leaf == "hook_scale" else (B, 1, d)

    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> HookedVJEPA2Config:
        """Build from a `transformers.VJEPA2Config` or its config.json dict."""
        d, kwargs = hf_config_fields(
            hf_config,
            model_type="vjepa2",
            label="V-JEPA 2",
            architecture="VJEPA2ForVideoClassification",
            d_model=1024,
            n_heads=16,
            n_layers=24,
        )
        patch = d.get("patch_size", 16)
        patch = int(patch if isinstance(patch, int) else tuple(patch)[0])  # transformers' Conv3d reads one int
        d_model = kwargs["d_model"]
        kwargs.update(
            d_mlp=int(d_model * float(d.get("mlp_ratio", 4.0))),
            pooler_d_mlp=int(d_model * 4.0),
            n_pooler_layers=int(d.get("num_pooler_layers", 3)),
            num_frames=int(d.get("frames_per_clip", 64)),
            image_size=int(d.get("crop_size", 256)),
            tubelet_size=(int(d.get("tubelet_size", 2)), patch, patch),
            n_channels=int(d.get("in_chans", 3)),
        )
        kwargs = with_saved_settings(d, kwargs, overrides)
        return cls(**kwargs)

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A config.json dict that `transformers.VJEPA2Config` reads."""
        d: dict[str, Any] = {
            "model_type": "vjepa2",
            "architectures": [self.original_architecture],
            "hidden_size": self.d_model,
            "num_attention_heads": self.n_heads,
            "num_hidden_layers": self.n_layers,
            "mlp_ratio": self.d_mlp / self.d_model,  # type: ignore[operator]
            "num_pooler_layers": self.n_pooler_layers,
            "layer_norm_eps": self.eps,
            "hidden_act": self.act_fn,
            "frames_per_clip": self.num_frames,
            "crop_size": self.image_size[0],  # type: ignore[index]
            "patch_size": self.tubelet_size[1],
            "tubelet_size": self.tubelet_size[0],
            "in_chans": self.n_channels,
            "qkv_bias": self.qkv_bias,
            "initializer_range": self.initializer_range,
            "drop_path_rate": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "attention_dropout": 0.0,
            "_name_or_path": self.model_name,
        }
        if self.n_classes:
            d["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
            d["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        return d


def affine_layer_norm(cfg: HookedVJEPA2Config) -> LayerNorm:
    """A LayerNorm with its weight and bias whatever cfg.normalization_type says: V-JEPA 2's final
    LayerNorm keeps them after fold_ln (its output is the pooler's residual stream, not read by one
    linear map). LayerNorm reads the config only to build itself, so a copy does that."""
    if cfg.normalization_type == "LN":
        return LayerNorm(cfg)
    ln_cfg = copy.copy(cfg)
    ln_cfg.normalization_type = "LN"
    return LayerNorm(ln_cfg)


class HookedVJEPA2(HookedVideoTransformer):
    """V-JEPA 2 (``transformers.VJEPA2ForVideoClassification`` / ``VJEPA2Model``'s encoder), hooked.

    Hooks: ``hook_embed``; ``blocks.{l}.*`` as every model here plus ``attn.hook_rot_q`` /
    ``attn.hook_rot_k`` (q and k after the rotary embedding); ``ln_final.*``; the pooler's
    self-attention blocks ``pooler.blocks.{i}.*`` (the same names); the cross-attention from the
    learned query ``pooler.cross.*`` (``pooler.cross.attn.hook_pattern`` [batch, heads, 1, n_ctx]
    is the query's attention over the video tokens; ``query_attention_maps`` puts it on the frames)."""

    config_class = HookedVJEPA2Config
    model_type = "vjepa2"

    def __init__(self, cfg: HookedVJEPA2Config, *, init_weights: bool = True):  # noqa: D107 - the shared core's, with V-JEPA 2's parts
        HookedRootModule.__init__(self)
        self.cfg = cfg
        self.embed = TubeletEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, n_ctx, d_model]: the tubelet tokens (the positions enter in attention)
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        for block in self.blocks:
            block.attn = RotaryAttention(cfg)
        self.ln_final = affine_layer_norm(cfg)  # transformers' encoder.layernorm, on every token
        self.pooler = AttentivePooler(cfg, cfg.n_pooler_layers, cfg.pooler_d_mlp) if cfg.n_classes > 0 else None
        self.unembed = Unembed(cfg) if cfg.n_classes > 0 else None
        if init_weights:
            self.init_weights()
        self.setup()
        self.eval()
        if cfg.device is not None:
            self.to(cfg.device)

    def forward(
        self,
        pixel_values: PixelValues | Float[torch.Tensor, "batch n_ctx d_model"],
        return_type: str | None = "logits",
        *,
        labels: Any = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Logits [batch, n_classes]; a backbone returns ``last_hidden_state`` [batch, n_ctx, d_model].
        ``return_type``, ``labels``, ``start_at_layer`` and ``stop_at_layer`` as HookedVideoTransformer's
        (the layers are the encoder's; the pooler always runs after them)."""
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if return_type in ("loss", "both") and labels is None:
            raise ValueError(
                f"return_type={return_type!r} needs labels= (the target class of each clip, an index or a name)"
            )
        if start_at_layer is None:
            resid = self.hook_embed(self.embed(self.validate_input(pixel_values)))
            start_at_layer = 0
        else:
            resid = self._validate_resid(pixel_values, start_at_layer)
        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        tokens = self.ln_final(resid)
        logits = self.unembed(self.pooler(tokens)) if self.pooler is not None else tokens
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, labels)
        return loss if return_type == "loss" else (logits, loss)

    def query_attention_maps(self, pixel_values: PixelValues) -> np.ndarray:
        """The pooler query's attention over the video tokens of the first clip, on the token grid:
        [1, heads, frame slots, rows, cols] (the viewer's map layout, with the cross-attention as its
        one layer; ``hooked_vivit.viewer.token_maps(model, x, "query_attention")``)."""
        if self.pooler is None:
            raise ValueError("this V-JEPA 2 is a backbone (no attentive pooler, no query)")
        rows: list[torch.Tensor] = []
        with (
            self.hooks(fwd_hooks=[("pooler.cross.attn.hook_pattern", lambda act, hook: rows.append(act.detach()))]),
            torch.inference_mode(),
        ):
            self(pixel_values[:1])
        return self.cfg.grid.unflatten(rows[0][0, :, 0].float().cpu())[1][None].numpy()

    def init_weights(self, seed: int | None = None) -> None:
        super().init_weights(seed)
        if (
            self.pooler is not None
        ):  # the buffer W_O of the cross-attention is no parameter; the query starts random as in HF
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            with torch.no_grad():
                self.pooler.query.copy_(
                    torch.randn(self.pooler.query.shape, generator=gen) * self.cfg.initializer_range
                )

    @property
    def W_pos(self):  # noqa: D102
        raise AttributeError(
            "V-JEPA 2 has no position embeddings: the positions rotate q and k (blocks.{l}.attn.rotate)"
        )

    def process_weights_(
        self, fold_ln: bool = True, center_writing_weights: bool = False, fold_value_biases: bool = False
    ) -> HookedVJEPA2:
        """fold_ln only (hooked_vivit.weight_processing): every encoder and pooler LayerNorm folds into
        the weights that read it (the cross-attention's ln1 into its keys and values only: the query is
        not normalised), except ``ln_final``, whose output is the pooler's residual stream and so keeps
        its affine part. center_writing_weights and fold_value_biases are refused with the reason."""
        from hooked_vivit import weight_processing

        if center_writing_weights or fold_value_biases:
            weight_processing.process_weights(
                {}, self.cfg, center_writing_weights=center_writing_weights, fold_value_biases=fold_value_biases
            )  # raises, saying why
        if not fold_ln or self.cfg.folded_ln:
            return self
        p = next(self.parameters())
        sd, new_cfg = weight_processing.process_weights(self.state_dict(), self.cfg, fold_ln=True)
        for f in dataclasses.fields(new_cfg):  # every component holds this cfg object: update it in place
            setattr(self.cfg, f.name, getattr(new_cfg, f.name))
        blocks = [*self.blocks, *(self.pooler.blocks if self.pooler is not None else [])]
        for block in blocks:  # parameter-free LNPre modules in place of the LN ones
            block.ln1, block.ln2 = LayerNorm(self.cfg), LayerNorm(self.cfg)
        if self.pooler is not None:
            self.pooler.cross.ln1, self.pooler.cross.ln2 = LayerNorm(self.cfg), LayerNorm(self.cfg)
        self.setup()
        self.load_state_dict(sd, strict=True)
        return self.to(p.device)


__all__ = ["HookedVJEPA2", "HookedVJEPA2Config", "VJEPA2_HOOK_AXES"]
