"""HookedVideoPrism: ``transformers.VideoPrismForVideoClassification``, ``VideoPrismVisionModel`` and the
video tower of ``VideoPrismClipModel`` (``VideoPrismVideoModel``) on the shared core.

VideoPrism is a factorised encoder (ViViT "model 2"): every frame is cut into patches by a 2D
tubelet (1 x p x p); ``spatial_blocks`` attend over the patches of one frame, ``ln_spatial``
normalises them, a learned time embedding is added, and ``temporal_blocks`` attend over the frames
of one patch position; ``ln_final`` normalises the result. Every attention soft-caps its logits
(``cap * tanh(scores / cap)``, cfg.attn_scores_soft_cap, transformers' ``attn_logit_softcapping``;
hook_attn_scores sees the capped scores), and every LayerNorm scales by ``weight + 1`` as
transformers' VideoPrismLayerNorm does (the converter stores ``weight + 1`` as ``w``, so the hooked
LayerNorms are ordinary ones).

Readouts (cfg.readout):
- ``"classifier"`` (VideoPrismForVideoClassification): the attention-pooling ``head`` (one learned
  query attends over every token; its q is scaled per dimension by softplus(per_dim_scale)) ->
  ``head_ln`` -> ``unembed``: logits [batch, n_classes] (transformers returns [batch, 1, n_classes]).
- ``"video_embedding"`` (VideoPrismVideoModel, CLIP's video tower): ``aux_blocks`` (joint
  attention over all tokens) -> ``head`` -> ``head_ln`` -> L2 normalisation (cfg.apply_l2norm):
  the video embedding [batch, d_model] (transformers' ``pooler_output``, ``get_video_features``).
- ``"none"`` (VideoPrismVisionModel): ``last_hidden_state`` [batch, n_ctx, d_model].

Hook names and layouts. The two block lists batch differently, as transformers runs them:
- ``hook_embed``, ``hook_pos_embed``, ``spatial_blocks.{l}.*``, ``ln_spatial.*``:
  [batch * frames, patches, ...] (clip-major: row b * frames + t is frame t of clip b; patches
  row-major over the frame).
- ``hook_time_embed``, ``temporal_blocks.{l}.*``, ``ln_final.*``: [batch * patches, frames, ...]
  (row b * patches + n is patch position n of clip b).
- ``hook_tokens`` [batch, n_ctx, d_model]: ``ln_final``'s output back on the token grid
  (frame-major, transformers' ``last_hidden_state``); ``aux_blocks.{l}.*`` on the same layout.
- ``head.hook_resid_pre`` [batch, 1, d_model] (the learned query), ``head.attn.*`` (q [batch, 1,
  head, d_head_pool], k/v [batch, n_ctx, head, d_head_pool], pattern [batch, head, 1, n_ctx]),
  ``head.hook_attn_out`` [batch, 1, d_model]; ``head_ln.*`` [batch, 1, ...]; ``hook_video_embedding`` [batch, d_model].
Each attention's map is over its own axis: spatial [.., head, patches, patches], temporal
[.., head, frames, frames]. ``cfg.hook_shape`` sizes every hook (hooked_vivit.cache_memory).

The token grid (cfg.grid: frame slots = frames, rows x cols = patches, no prefix) describes
``hook_tokens``, ``aux_blocks`` and the head's keys; the spatial and temporal blocks' residual
streams are its two factorisations (``spatial_to_grid`` / ``temporal_to_grid`` map them onto it).
What does not fit: no single residual stream runs from the embedding to the readout, so the shared
analysis code's ``blocks.{l}.*`` hook names (``model.blocks`` is only every block in forward order,
for the weight helpers), start_at_layer / stop_at_layer and fold_ln are not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components import LayerNorm, TransformerBlock, TubeletEmbed, Unembed
from hooked_vivit.components.attention import Attention
from hooked_vivit.config import HookedViViTConfig, hf_config_fields, with_saved_settings
from hooked_vivit.model import HookedVideoTransformer, PixelValues

# transformers' pooling head: q * (1 / ln 2) / sqrt(d_head) * softplus(per_dim_scale), softplus(0) = ln 2.
R_SOFTPLUS_0 = 1.442695041
READOUTS = ("classifier", "video_embedding", "none")


@dataclass(repr=False)
class HookedVideoPrismConfig(HookedViViTConfig):
    # VideoPrism-B (google/videoprism-base-f16r288) defaults.
    d_model: int = 768
    d_head: int = 64
    n_heads: int = 12
    d_mlp: int | None = 3072
    eps: float = 1e-6
    act_fn: str = "gelu_python"
    num_frames: int = 16
    image_size: int | tuple[int, int] = 288
    tubelet_size: tuple[int, int, int] = (1, 18, 18)
    n_prefix_tokens: int = 0
    pooling: str = "attentive"
    n_spatial_layers: int = 12
    n_temporal_layers: int = 4
    n_aux_layers: int = 0  # VideoPrismVideoModel's auxiliary layers (the CLIP video tower); 0 otherwise
    attn_scores_soft_cap: float = 50.0
    apply_l2norm: bool = True
    readout: str = "classifier"
    # VideoPrism's own input range, [0, 1] (a checkpoint's preprocessor_config.json overrides it).
    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    rescale_factor: float = 1 / 255
    rescale_offset: bool = False
    model_name: str = "videoprism"
    original_architecture: str = "VideoPrismForVideoClassification"

    def __post_init__(self) -> None:
        self.n_layers = self.n_spatial_layers + self.n_temporal_layers
        super().__post_init__()
        if self.tubelet_size[0] != 1 or self.n_prefix_tokens or self.pooling != "attentive":
            raise ValueError(
                "a VideoPrism config has a 2D tubelet (1, p, p), no CLS (n_prefix_tokens=0) and pooling='attentive', "
                f"got tubelet_size={self.tubelet_size}, n_prefix_tokens={self.n_prefix_tokens}, pooling={self.pooling!r}"
            )
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.readout == "classifier" and self.n_classes < 1:
            raise ValueError("readout='classifier' needs n_classes >= 1")
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"hidden_size {self.d_model} must equal num_attention_heads x head size ({self.n_heads} x {self.d_head})"
            )
        if not self.d_mlp or self.d_mlp % self.n_heads:
            raise ValueError(
                f"intermediate_size ({self.d_mlp}) must be a positive multiple of num_attention_heads ({self.n_heads}): "
                "transformers' pooling head splits it into the heads"
            )

    def __repr__(self) -> str:
        layers = f"{self.n_spatial_layers} spatial + {self.n_temporal_layers} temporal" + (
            f" + {self.n_aux_layers} auxiliary" if self.n_aux_layers else ""
        )
        path = f"soft-capped at {self.attn_scores_soft_cap:g} (explicit path; the head: " + (
            "SDPA unless scores/pattern hooked)" if self.use_sdpa else "explicit)"
        )
        text = super().__repr__().replace(f"{self.n_layers} layers", f"{layers} layers", 1)
        if self.attn_scores_soft_cap:
            text = text.replace("SDPA unless scores/pattern hooked", path, 1).replace(
                "explicit (pattern always)", path, 1
            )
        return text.replace(", dtype", f", readout {self.readout}, dtype", 1)

    @property
    def d_head_pool(self) -> int:
        """The pooling head's per-head width: transformers' intermediate_size // num_attention_heads."""
        return self.d_mlp // self.n_heads  # type: ignore[operator]

    @property
    def n_patches(self) -> int:
        return self.grid.n_rows * self.grid.n_cols

    def hook_shape(self, name: str, batch: int) -> tuple[int, ...] | None:
        """Every hook's shape (module docstring); None for a hook that does not fire under this config."""
        T, P, d, H, E, M = self.num_frames, self.n_patches, self.d_model, self.n_heads, self.d_head, self.d_mlp
        top = {
            "hook_embed": (batch * T, P, d),
            "hook_pos_embed": (batch * T, P, d),
            "hook_time_embed": (batch * P, T, d),
            "hook_tokens": (batch, T * P, d),
            "hook_video_embedding": (batch, d) if self.readout == "video_embedding" else None,
        }
        if name in top:
            return top[name]
        part, _, rest = name.partition(".")
        rows, pos = {
            "spatial_blocks": (batch * T, P),
            "ln_spatial": (batch * T, P),
            "temporal_blocks": (batch * P, T),
            "ln_final": (batch * P, T),
            "aux_blocks": (batch, T * P),
            "head": (batch, T * P),
            "head_ln": (batch, 1),
        }.get(part, (None, None))
        if rows is None:
            return NotImplemented
        if part in ("spatial_blocks", "temporal_blocks", "aux_blocks"):
            rest = rest.partition(".")[2]
        leaf = rest.rsplit(".", 1)[-1]
        if part == "head":
            if self.readout == "none":
                return None
            Ep = self.d_head_pool
            return {
                "hook_resid_pre": (batch, 1, d),
                "hook_attn_out": (batch, 1, d),
                "attn.hook_q": (batch, 1, H, Ep),
                "attn.hook_k": (batch, pos, H, Ep),
                "attn.hook_v": (batch, pos, H, Ep),
                "attn.hook_attn_scores": (batch, H, 1, pos),
                "attn.hook_pattern": (batch, H, 1, pos),
                "attn.hook_z": (batch, 1, H, Ep),
                "attn.hook_result": (batch, 1, H, d) if self.use_attn_result else None,
            }.get(rest)
        if part == "head_ln" and self.readout == "none":
            return None
        if leaf == "hook_scale":
            return (rows, pos, 1)
        if leaf in ("hook_normalized", "hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out"):
            return (rows, pos, d)
        if leaf == "hook_resid_post":
            return (rows, pos, d)
        if leaf in ("hook_q", "hook_k", "hook_v", "hook_z"):
            return (rows, pos, H, E)
        if leaf in ("hook_attn_scores", "hook_pattern"):
            return (rows, H, pos, pos)
        if leaf in ("hook_pre", "hook_post"):
            return (rows, pos, M)
        if leaf == "hook_result":
            return (rows, pos, H, d) if self.use_attn_result else None
        if leaf in ("hook_q_input", "hook_k_input", "hook_v_input"):
            return (rows, pos, H, d) if self.use_split_qkv_input else None
        if leaf == "hook_attn_in":
            return (rows, pos, H, d) if self.use_attn_in else None
        if leaf == "hook_mlp_in":
            return (rows, pos, d) if self.use_hook_mlp_in else None
        return None  # hook_pattern_rows: only with attention_rows

    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> HookedVideoPrismConfig:
        """Build from a ``transformers.VideoPrismVisionConfig`` (or ``VideoPrismConfig``, the CLIP model's:
        its vision_config, read as the video tower) or its config.json dict."""
        d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        readout = None
        if d.get("model_type") == "videoprism":  # the CLIP model: its video tower
            vision = d.get("vision_config") or {}
            d = {**vision, "model_type": "videoprism_vision_model", "preprocessor": d.get("preprocessor")}
            d.setdefault("architectures", ["VideoPrismVideoModel"])
            readout = "video_embedding"
        d, kwargs = hf_config_fields(
            d,
            model_type="videoprism_vision_model",
            label="VideoPrism",
            architecture="VideoPrismForVideoClassification",
            act_fn="gelu_python",
        )
        kwargs.pop("n_layers")
        tubelet = tuple(int(v) for v in d.get("tubelet_size", (1, 18, 18)))
        image_size = d.get("image_size", 288)
        n_classes = overrides.get("n_classes", kwargs["n_classes"])
        readout = overrides.get("readout", readout)
        if readout is None:
            arch = kwargs["original_architecture"]
            readout = "video_embedding" if arch == "VideoPrismVideoModel" else "classifier" if n_classes else "none"
        kwargs.update(
            d_mlp=int(d.get("intermediate_size", 3072)),
            num_frames=int(d.get("num_frames", 16)),
            image_size=tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
            tubelet_size=tubelet,
            n_channels=int(d.get("num_channels", 3)),
            n_spatial_layers=int(d.get("num_spatial_layers", 12)),
            n_temporal_layers=int(d.get("num_temporal_layers", 4)),
            n_aux_layers=int(d.get("num_auxiliary_layers", 2)) if readout == "video_embedding" else 0,
            attn_scores_soft_cap=float(d.get("attn_logit_softcapping", 50.0) or 0.0),
            apply_l2norm=bool(d.get("apply_l2norm", True)),
            readout=readout,
        )
        if readout != "classifier":
            kwargs.update(n_classes=0, id2label={})
        kwargs = with_saved_settings(d, kwargs, overrides)
        return cls(**kwargs)

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A config.json dict that ``transformers.VideoPrismVisionConfig`` reads (the architecture:
        VideoPrismForVideoClassification, VideoPrismVideoModel or VideoPrismVisionModel by readout)."""
        arch = {
            "classifier": "VideoPrismForVideoClassification",
            "video_embedding": "VideoPrismVideoModel",
            "none": "VideoPrismVisionModel",
        }[self.readout]
        d: dict[str, Any] = {
            "model_type": "videoprism_vision_model",
            "architectures": [arch],
            "hidden_size": self.d_model,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_mlp,
            "num_spatial_layers": self.n_spatial_layers,
            "num_temporal_layers": self.n_temporal_layers,
            "num_auxiliary_layers": self.n_aux_layers,
            "attn_logit_softcapping": self.attn_scores_soft_cap,
            "apply_l2norm": self.apply_l2norm,
            "layer_norm_eps": self.eps,
            "hidden_act": self.act_fn,
            "num_frames": self.num_frames,
            "image_size": list(self.image_size),  # type: ignore[arg-type]
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
        return d


class _PoolCfg:
    """The model's config as the pooling head's attention reads it: d_head is the head's own
    (intermediate_size // heads), no soft-cap; every other field is the model's, live (so
    set_use_attn_result and use_sdpa reach the head too)."""

    def __init__(self, cfg: HookedVideoPrismConfig):
        self._cfg = cfg
        self.d_head = cfg.d_head_pool
        self.attn_scores_soft_cap = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cfg, name)


class PoolingAttention(Attention):
    """The head's attention: the shared Attention (q from the query, k and v from the tokens, output
    projection W_O [heads, d_head_pool, d_model]) with transformers' per-dimension query scale
    ``softplus(per_dim_scale) / ln 2`` applied after hook_q (through position_qk)."""

    def __init__(self, cfg: HookedVideoPrismConfig):
        super().__init__(_PoolCfg(cfg))  # type: ignore[arg-type]
        self.per_dim_scale: Float[torch.Tensor, " d_head_pool"] = nn.Parameter(
            torch.zeros(cfg.d_head_pool, dtype=cfg.dtype)
        )

    def position_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q * (R_SOFTPLUS_0 * F.softplus(self.per_dim_scale)), k


class AttentionPoolingHead(nn.Module):
    """One learned query attending over every token (no LayerNorm, no residual, no MLP):
    ``hook_resid_pre`` (the query, [batch, 1, d_model]) -> ``attn`` -> ``hook_attn_out``."""

    def __init__(self, cfg: HookedVideoPrismConfig):
        super().__init__()
        self.query: Float[torch.Tensor, " d_model"] = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.attn = PoolingAttention(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, 1, d_model]: the learned query
        self.hook_attn_out = HookPoint()  # [batch, 1, d_model]: the pooled vector

    def forward(self, tokens: Float[torch.Tensor, "batch n_ctx d_model"]) -> Float[torch.Tensor, "batch 1 d_model"]:
        query = self.hook_resid_pre(self.query.view(1, 1, -1).repeat(tokens.shape[0], 1, 1))  # a copy per clip
        return self.hook_attn_out(self.attn(query, tokens, tokens))


class FramePatchPosEmbed(nn.Module):
    """``W_pos`` [patches, d_model]: row n added to patch n of every frame ([batch * frames, patches, d_model])."""

    def __init__(self, cfg: HookedVideoPrismConfig):
        super().__init__()
        self.W_pos: Float[torch.Tensor, "patches d_model"] = nn.Parameter(
            torch.zeros(cfg.n_patches, cfg.d_model, dtype=cfg.dtype)
        )

    def forward(self, rows: int) -> torch.Tensor:
        return self.W_pos.unsqueeze(0).repeat(rows, 1, 1)  # a copy: hooks may edit it in place


class FrameTimeEmbed(nn.Module):
    """``W_time`` [frames, d_model]: row t added to frame t of every patch position ([batch * patches, frames, d_model])."""

    def __init__(self, cfg: HookedVideoPrismConfig):
        super().__init__()
        self.W_time: Float[torch.Tensor, "frames d_model"] = nn.Parameter(
            torch.zeros(cfg.num_frames, cfg.d_model, dtype=cfg.dtype)
        )

    def forward(self, rows: int) -> torch.Tensor:
        return self.W_time.unsqueeze(0).repeat(rows, 1, 1)


class HookedVideoPrism(HookedVideoTransformer):
    """VideoPrism (transformers' VideoPrismForVideoClassification / VideoPrismVisionModel /
    VideoPrismVideoModel), hooked: ``spatial_blocks.{l}.*`` and ``temporal_blocks.{l}.*`` (the
    TransformerBlock hooks, each on its own batching; module docstring), ``aux_blocks.{l}.*``,
    ``head.*``, ``head_ln.*``, ``hook_tokens``, ``hook_video_embedding``."""

    config_class = HookedVideoPrismConfig
    model_type = "videoprism_vision_model"

    def __init__(self, cfg: HookedVideoPrismConfig, *, init_weights: bool = True):  # noqa: D107
        HookedRootModule.__init__(self)
        self.cfg = cfg
        self.embed = TubeletEmbed(cfg)
        self.pos_embed = FramePatchPosEmbed(cfg)
        self.time_embed = FrameTimeEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch * frames, patches, d_model]: the patch tokens of each frame
        self.hook_pos_embed = HookPoint()  # [batch * frames, patches, d_model]
        self.spatial_blocks = nn.ModuleList([TransformerBlock(cfg, l) for l in range(cfg.n_spatial_layers)])
        self.ln_spatial = LayerNorm(cfg)  # transformers' vision_model.layernorm1
        self.hook_time_embed = HookPoint()  # [batch * patches, frames, d_model]
        self.temporal_blocks = nn.ModuleList(
            [TransformerBlock(cfg, cfg.n_spatial_layers + l) for l in range(cfg.n_temporal_layers)]
        )
        self.ln_final = LayerNorm(cfg)  # transformers' vision_model.layernorm2
        self.hook_tokens = HookPoint()  # [batch, n_ctx, d_model]: last_hidden_state, on the token grid
        self.aux_blocks = nn.ModuleList([TransformerBlock(cfg, l) for l in range(cfg.n_aux_layers)])
        if cfg.readout != "none":
            self.head = AttentionPoolingHead(cfg)
            self.head_ln = LayerNorm(cfg)  # transformers' head_layernorm
        self.hook_video_embedding = HookPoint()  # [batch, d_model] (readout "video_embedding")
        self.unembed = Unembed(cfg) if cfg.readout == "classifier" else None
        if init_weights:
            self.init_weights()
        self.setup()
        self.eval()
        if cfg.device is not None:
            self.to(cfg.device)

    @property
    def blocks(self) -> tuple[TransformerBlock, ...]:  # type: ignore[override]
        """Every attention block in forward order (spatial, temporal, auxiliary), for the shared
        weight helpers; their hook names are ``spatial_blocks.*`` / ``temporal_blocks.*`` / ``aux_blocks.*``."""
        return (*self.spatial_blocks, *self.temporal_blocks, *self.aux_blocks)

    def spatial_to_grid(self, act: torch.Tensor) -> torch.Tensor:
        """[batch * frames, patches, ...] (a spatial block's hook) -> [batch, n_ctx, ...] on the token grid."""
        T = self.cfg.num_frames
        return act.reshape(act.shape[0] // T, T * act.shape[1], *act.shape[2:])

    def temporal_to_grid(self, act: torch.Tensor) -> torch.Tensor:
        """[batch * patches, frames, ...] (a temporal block's hook) -> [batch, n_ctx, ...] on the token grid."""
        P = self.cfg.n_patches
        x = act.reshape(act.shape[0] // P, P, *act.shape[1:]).transpose(1, 2)
        return x.reshape(x.shape[0], -1, *act.shape[2:])

    def forward(
        self,
        pixel_values: PixelValues,
        return_type: str | None = "logits",
        *,
        labels: Any = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Logits [batch, n_classes] (readout "classifier"), the video embedding [batch, d_model]
        ("video_embedding") or last_hidden_state [batch, n_ctx, d_model] ("none"). ``return_type``
        and ``labels`` as HookedVideoTransformer's."""
        if start_at_layer is not None or stop_at_layer is not None:
            raise ValueError(
                "VideoPrism has no single residual stream through its layers (spatial blocks batch frames, "
                "temporal blocks batch patches): start_at_layer / stop_at_layer are not offered; hook "
                "spatial_blocks.{l} / temporal_blocks.{l} instead"
            )
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if return_type in ("loss", "both") and (labels is None or self.cfg.readout != "classifier"):
            raise ValueError(
                f"return_type={return_type!r} needs a classifier (readout 'classifier') and labels= "
                "(the target class of each clip, an index or a name)"
            )
        x = self.validate_input(pixel_values)
        cfg = self.cfg
        B, T, P = x.shape[0], cfg.num_frames, cfg.n_patches
        # Every frame on its own: [B, T, C, H, W] -> [B * T, P, d] (the tubelet is 1 frame deep).
        frames = x.reshape(B * T, 1, *x.shape[2:])
        resid = self.hook_embed(self.embed(frames)) + self.hook_pos_embed(self.pos_embed(B * T))
        for block in self.spatial_blocks:
            resid = block(resid)
        spatial = self.ln_spatial(resid)
        # [B * T, P, d] -> [B * P, T, d]
        resid = spatial.reshape(B, T, P, -1).transpose(1, 2).reshape(B * P, T, -1)
        resid = resid + self.hook_time_embed(self.time_embed(B * P))
        for block in self.temporal_blocks:
            resid = block(resid)
        temporal = self.ln_final(resid)
        tokens = self.hook_tokens(temporal.reshape(B, P, T, -1).transpose(1, 2).reshape(B, T * P, -1))
        if cfg.readout == "none":
            out = tokens
        else:
            for block in self.aux_blocks:
                tokens = block(tokens)
            pooled = self.head_ln(self.head(tokens))[:, 0]  # head_ln on [batch, 1, d_model], as transformers
            if cfg.readout == "classifier":
                out = self.unembed(pooled)  # type: ignore[misc]
            else:
                if cfg.apply_l2norm:  # transformers' l2norm: x * rsqrt(sum x^2 + 1e-6)
                    pooled = pooled * torch.rsqrt((pooled * pooled).sum(-1, keepdim=True) + 1e-6)
                out = self.hook_video_embedding(pooled)
        if return_type == "logits":
            return out
        if return_type is None:
            return None
        loss = self.loss_fn(out, labels)
        return loss if return_type == "loss" else (out, loss)

    def init_weights(self, seed: int | None = None) -> None:
        super().init_weights(seed)  # W_* normal, LayerNorm w = 1, the rest 0
        if self.cfg.readout != "none":
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            with torch.no_grad():
                self.head.query.copy_(torch.randn(self.head.query.shape, generator=gen) * self.cfg.initializer_range)

    def parity_report(self, hf_model: Any, pixel_values: torch.Tensor) -> Any:
        """compare_videoprism(self, hf_model, pixel_values): hooked_vivit.parity's report for VideoPrism."""
        return compare_videoprism(self, hf_model, pixel_values)

    @property
    def W_pos(self):  # noqa: D102
        return self.pos_embed.W_pos

    def process_weights_(
        self, fold_ln: bool = True, center_writing_weights: bool = False, fold_value_biases: bool = False
    ) -> HookedVideoPrism:
        """Not offered: VideoPrism's LayerNorms feed reshapes between the two factorised stages and the
        pooling head's per-dimension query scale, which no folding here accounts for."""
        if fold_ln or center_writing_weights or fold_value_biases:
            raise NotImplementedError(
                "weight processing (fold_ln, center_writing_weights, fold_value_biases) is not implemented for "
                "VideoPrism: load it unprocessed"
            )
        return self

    @classmethod
    def checkpoint_overrides(cls, state_dict: dict[str, torch.Tensor], hf_config: dict[str, Any]) -> dict[str, Any]:
        """A VideoPrismVideoModel checkpoint (head, no classifier) reads as the video-embedding tower;
        a classification config whose checkpoint has no head reads as the vision model."""
        has_head = any(k.endswith("head.per_dim_scale") or k == "head.query" for k in state_dict)
        has_classifier = any(k.startswith(("classifier.", "unembed.")) for k in state_dict)
        if hf_config.get("model_type") == "videoprism" or (has_head and not has_classifier):
            return {"readout": "video_embedding"}
        return {} if has_head else {"readout": "none"}

    @classmethod
    def from_state_dict(cls, state_dict, hf_config, **kwargs: Any) -> HookedVideoPrism:  # noqa: D102
        if kwargs.get("fold_ln") or kwargs.get("center_writing_weights") or kwargs.get("fold_value_biases"):
            raise NotImplementedError(
                "weight processing (fold_ln, center_writing_weights, fold_value_biases) is not implemented for VideoPrism"
            )
        # The CLIP model's text tower (with its integer position_ids buffer) is no part of this model.
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("text_model.")}
        return super().from_state_dict(state_dict, hf_config, **kwargs)  # type: ignore[return-value]


# The CLIP model's checkpoints (model_type "videoprism") load as their video tower.
HookedVideoTransformer.architectures["videoprism"] = HookedVideoPrism


def compare_videoprism(model: HookedVideoPrism, hf_model: Any, pixel_values: torch.Tensor) -> Any:
    """hooked_vivit.parity's report for VideoPrism: every spatial, temporal and auxiliary layer's output
    and every attention pattern (eager) against transformers' own modules (forward hooks on its
    layers), ``last_hidden_state`` and the readout (logits / video embedding). ``hf_model``: a
    VideoPrismForVideoClassification, VideoPrismVisionModel, VideoPrismVideoModel or VideoPrismClipModel
    (its video tower)."""
    from hooked_vivit.parity import ParityReport, parity_row

    if type(hf_model).__name__ == "VideoPrismClipModel":
        hf_model = hf_model.video_model
    vision = hf_model if type(hf_model).__name__ == "VideoPrismVisionModel" else hf_model.vision_model
    hf_model.eval()
    eager = vision.config._attn_implementation == "eager"
    layers = {
        **{f"spatial_blocks.{i}": m for i, m in enumerate(vision.spatial_layers)},
        **{f"temporal_blocks.{i}": m for i, m in enumerate(vision.temporal_layers)},
        **{f"aux_blocks.{i}": m for i, m in enumerate(getattr(hf_model, "auxiliary_layers", []))},
    }
    kept: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(
            lambda mod, i, o, name=name: kept.__setitem__(name, o[0] if isinstance(o, tuple) else o)
        )
        for name, m in layers.items()
    ]
    if eager:
        handles += [
            m.attention.register_forward_hook(lambda mod, i, o, name=name: kept.__setitem__(name + ".pattern", o[1]))
            for name, m in layers.items()
        ]
        if hasattr(hf_model, "head"):
            handles.append(
                hf_model.head.register_forward_hook(lambda mod, i, o: kept.__setitem__("head.pattern", o[1]))
            )
    dtype = next(hf_model.parameters()).dtype
    x = pixel_values.to(next(hf_model.parameters()).device, dtype)
    names = ["spatial_blocks.0.hook_resid_pre", "hook_tokens"]
    names += [f"{n}.hook_resid_post" for n in layers]
    if eager:
        names += [f"{n}.attn.hook_pattern" for n in layers]
        if model.cfg.readout != "none":
            names.append("head.attn.hook_pattern")
    try:
        with torch.inference_mode():
            ref = hf_model(x, output_hidden_states=True)
            out, cache = model.run_with_cache(x.to(model.W_E.device), names_filter=names)
    finally:
        for h in handles:
            h.remove()
    hidden = ref.hidden_states
    if type(hf_model).__name__ == "VideoPrismVideoModel":  # its last_hidden_state is after the auxiliary layers
        with torch.inference_mode():
            tokens_ref = vision(x).last_hidden_state
    else:
        tokens_ref = ref.last_hidden_state if hasattr(ref, "last_hidden_state") else None
    rows = [parity_row("embeddings (spatial resid_pre 0)", cache["spatial_blocks.0.hook_resid_pre"], hidden[0])]
    for name in layers:
        if eager:
            rows.append(parity_row(f"{name} pattern", cache[f"{name}.attn.hook_pattern"], kept[name + ".pattern"]))
        rows.append(parity_row(f"{name} resid_post", cache[f"{name}.hook_resid_post"], kept[name]))
    if tokens_ref is None:  # the classifier returns no last_hidden_state: its hidden_states end with it
        tokens_ref = hidden[-1]
    rows.append(parity_row("last_hidden_state (hook_tokens)", cache["hook_tokens"], tokens_ref))
    if eager and model.cfg.readout != "none":
        rows.append(parity_row("head pattern", cache["head.attn.hook_pattern"], kept["head.pattern"]))
    if model.cfg.readout == "classifier":
        rows.append(parity_row("logits", out, ref.logits[:, 0]))
    elif model.cfg.readout == "video_embedding":
        # transformers' pooler_output is [batch, 1, d_model]; VideoPrismClipModel reshapes it to video_embeds [batch, d_model]
        rows.append(parity_row("video embedding (pooler_output)", out, ref.pooler_output.reshape(out.shape)))
    notes = [] if eager else [f"attention patterns not compared ({vision.config._attn_implementation} returns none)"]
    return ParityReport(rows, dtype, eager, notes)


__all__ = ["HookedVideoPrism", "HookedVideoPrismConfig", "compare_videoprism"]
