"""HookedTimeSformer: ``transformers.TimesformerForVideoClassification`` / ``TimesformerModel``
(``attention_type="divided_space_time"``) on the shared core.

Each block attends over time, then over space, then runs the MLP
(hooked_vivit.components.divided_space_time_block has the data flow). Tokens: CLS, then one per
(frame, patch), frame-major, so the TokenGrid (frame slot = frame, tubelet (1, p, p)) indexes them
as every other model here; ``hf_token_order()`` maps transformers' position-major order onto it.
Three embedding writers (hook_embed, hook_pos_embed: spatial positions shared by all frames,
hook_time_embed: one vector per frame) and three per block (hook_temporal_attn_out,
hook_attn_out, hook_mlp_out) add up to the residual stream; ``cache.decompose_resid`` knows them all.

Attention hooks (``blocks.{l}.temporal_attn.*`` and ``blocks.{l}.attn.*``, the spatial one, at
TransformerLens's names so ``cache["pattern", l]`` is the spatial pattern) keep each attention's
own batch layout; ``TIMESFORMER_HOOK_AXES`` names every axis, and ``spatial_to_tokens`` /
``temporal_to_tokens`` / ``cls_attention_rows`` put them on the token grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from hooked_vivit.components import hook_layout
from hooked_vivit.components.divided_space_time_block import DividedSpaceTimeBlock
from hooked_vivit.components.embed import TubeletEmbed
from hooked_vivit.components.hook_layout import HookLayout
from hooked_vivit.components.time_embed import FramePosEmbed, TimeEmbed
from hooked_vivit.config import HookedViViTConfig, hf_config_fields, with_saved_settings
from hooked_vivit.model import HookedVideoTransformer, PixelValues

# Hook leaf -> named axes, for the hooks whose layout differs from [batch, n_ctx, ...]
# ("positions" = patches per frame, "tokens" = 1 + positions: a frame's CLS copy and its patches).
TIMESFORMER_HOOK_AXES: dict[str, tuple[str, ...]] = {
    "hook_time_embed": ("batch", "n_ctx", "d_model"),
    "hook_temporal_attn_out": ("batch", "n_ctx", "d_model"),
    "hook_resid_mid_temporal": ("batch", "n_ctx", "d_model"),
    "ln_temporal.hook_scale": ("batch*positions", "frames", "1"),
    "ln_temporal.hook_normalized": ("batch*positions", "frames", "d_model"),
    "temporal_attn.hook_q": ("batch*positions", "frames", "head", "d_head"),
    "temporal_attn.hook_k": ("batch*positions", "frames", "head", "d_head"),
    "temporal_attn.hook_v": ("batch*positions", "frames", "head", "d_head"),
    "temporal_attn.hook_z": ("batch*positions", "frames", "head", "d_head"),
    "temporal_attn.hook_attn_scores": ("batch*positions", "head", "query_frame", "key_frame"),
    "temporal_attn.hook_pattern": ("batch*positions", "head", "query_frame", "key_frame"),
    "temporal_attn.hook_pattern_rows": ("batch*positions", "head", "n_queries", "key_frame"),
    "temporal_attn.hook_result": ("batch*positions", "frames", "head", "d_model"),
    "attn.hook_q": ("batch*frames", "tokens", "head", "d_head"),
    "attn.hook_k": ("batch*frames", "tokens", "head", "d_head"),
    "attn.hook_v": ("batch*frames", "tokens", "head", "d_head"),
    "attn.hook_z": ("batch*frames", "tokens", "head", "d_head"),
    "attn.hook_attn_scores": ("batch*frames", "head", "query_token", "key_token"),
    "attn.hook_pattern": ("batch*frames", "head", "query_token", "key_token"),
    "attn.hook_pattern_rows": ("batch*frames", "head", "n_queries", "key_token"),
    "attn.hook_result": ("batch*frames", "tokens", "head", "d_model"),
}


def _positions(cfg: Any) -> int:
    return cfg.grid.n_rows * cfg.grid.n_cols


# TimeSformer's own hook leaves in the shared hook-layout table (the spatial attention's leaves are the
# shared ones: the same axis order, batched over frames; cfg.hook_shape gives their sizes).
hook_layout.register_hooks(
    {
        "hook_time_embed": HookLayout(("batch", "pos", "d_model")),
        "hook_temporal_attn_out": HookLayout(("batch", "pos", "d_model")),
        "hook_resid_mid_temporal": HookLayout(("batch", "pos", "d_model")),
        "ln_temporal.hook_scale": HookLayout(("batch_positions", "frames", "one")),
        "ln_temporal.hook_normalized": HookLayout(("batch_positions", "frames", "d_model")),
        **{
            f"temporal_attn.{leaf}": HookLayout(("batch_positions", "frames", "head_index", "d_head"))
            for leaf in ("hook_q", "hook_k", "hook_v", "hook_z")
        },
        "temporal_attn.hook_result": HookLayout(
            ("batch_positions", "frames", "head_index", "d_model"), switch="use_attn_result"
        ),
        "temporal_attn.hook_attn_scores": HookLayout(("batch_positions", "head_index", "query_frame", "key_frame")),
        "temporal_attn.hook_pattern": HookLayout(("batch_positions", "head_index", "query_frame", "key_frame")),
        "temporal_attn.hook_pattern_rows": HookLayout(("batch_positions", "head_index", "query_row", "key_frame")),
    },
    {
        "frames": lambda cfg: cfg.num_frames,
        "query_frame": lambda cfg: cfg.num_frames,
        "key_frame": lambda cfg: cfg.num_frames,
        "batch_positions": _positions,
    },
)


@dataclass(repr=False)
class HookedTimeSformerConfig(HookedViViTConfig):
    # TimeSformer-B / Kinetics-400 (facebook/timesformer-base-finetuned-k400) defaults.
    eps: float = 1e-6
    act_fn: str = "gelu"
    num_frames: int = 8
    tubelet_size: tuple[int, int, int] = (1, 16, 16)
    # transformers' conversion script saved VideoMAEImageProcessor(image_mean=0.5, image_std=0.5)
    # with these checkpoints; a preprocessor_config.json beside the weights overrides them.
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    rescale_offset: bool = False
    model_name: str = "timesformer"
    original_architecture: str = "TimesformerForVideoClassification"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tubelet_size[0] != 1:
            raise ValueError(
                f"TimeSformer embeds each frame on its own: tubelet_size must be (1, h, w), got {self.tubelet_size}"
            )
        if self.n_prefix_tokens != 1 or self.pooling != "first" or self.pos_embed_type != "learned":
            raise ValueError(
                "TimeSformer has a CLS token, learned position embeddings and classifies the CLS token "
                "(n_prefix_tokens=1, pooling='first', pos_embed_type='learned')"
            )
        if self.use_split_qkv_input or self.use_attn_in:
            raise ValueError(
                "use_split_qkv_input / use_attn_in are not available on TimeSformer (two attentions per block "
                "read differently shaped inputs); hook ln1.hook_normalized or ln_temporal.hook_normalized instead"
            )

    def hook_shape(self, name: str, batch: int) -> tuple[int, ...] | None:
        """The shape of the attention hooks, which batch over positions or frames (others:
        NotImplemented, the shared rule). hooked_vivit.cache_memory.hook_shape asks this first."""
        parts = name.split(".")
        if len(parts) < 4 or parts[2] not in ("attn", "temporal_attn", "ln_temporal"):
            return NotImplemented
        T, N, H, E, d = self.num_frames, self.grid.n_rows * self.grid.n_cols, self.n_heads, self.d_head, self.d_model
        rows, width = (batch * N, T) if parts[2] != "attn" else (batch * T, 1 + N)
        leaf = parts[-1]
        if parts[2] == "ln_temporal":
            return (rows, width, 1) if leaf == "hook_scale" else (rows, width, d)
        if leaf in ("hook_attn_scores", "hook_pattern"):
            return (rows, H, width, width)
        if leaf == "hook_pattern_rows":
            return (rows, H, 1, width)
        if leaf == "hook_result":
            return (rows, width, H, d) if self.use_attn_result else None
        return (rows, width, H, E)  # q, k, v, z

    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> HookedTimeSformerConfig:
        """Build from a `transformers.TimesformerConfig` or its config.json dict."""
        d, kwargs = hf_config_fields(
            hf_config,
            model_type="timesformer",
            label="TimeSformer",
            architecture="TimesformerForVideoClassification",
        )
        attention_type = d.get("attention_type", "divided_space_time")
        if attention_type != "divided_space_time":
            raise ValueError(
                f"HookedTimeSformer supports attention_type 'divided_space_time' only, got {attention_type!r} "
                "(space_only and joint_space_time checkpoints are not supported)"
            )
        image_size, patch = d.get("image_size", 224), d.get("patch_size", 16)
        if not isinstance(image_size, int) or not isinstance(patch, int):
            # transformers' TimesformerLayer computes image_size // patch_size: ints only.
            raise ValueError(
                f"TimeSformer's image_size and patch_size must be ints (square frames and patches, as "
                f"transformers' TimesformerLayer requires), got {image_size!r} and {patch!r}"
            )
        kwargs.update(
            d_mlp=int(d.get("intermediate_size", 3072)),
            num_frames=int(d.get("num_frames", 8)),
            image_size=image_size,
            tubelet_size=(1, patch, patch),
            n_channels=int(d.get("num_channels", 3)),
        )
        kwargs = with_saved_settings(d, kwargs, overrides)
        return cls(**kwargs)

    def to_hf_config_dict(self) -> dict[str, Any]:
        """A config.json dict that `transformers.TimesformerConfig` reads."""
        H, W = self.image_size  # type: ignore[misc]
        _, ph, pw = self.tubelet_size
        if H != W or ph != pw:
            raise ValueError(
                f"transformers' TimeSformer takes square frames and patches only; this model has {H}x{W} frames, {ph}x{pw} patches"
            )
        d: dict[str, Any] = {
            "model_type": "timesformer",
            "architectures": [self.original_architecture],
            "attention_type": "divided_space_time",
            "hidden_size": self.d_model,
            "num_attention_heads": self.n_heads,
            "num_hidden_layers": self.n_layers,
            "intermediate_size": self.d_mlp,
            "layer_norm_eps": self.eps,
            "hidden_act": self.act_fn,
            "num_frames": self.num_frames,
            "image_size": H,
            "patch_size": ph,
            "num_channels": self.n_channels,
            "qkv_bias": self.qkv_bias,
            "initializer_range": self.initializer_range,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "drop_path_rate": 0,  # transformers 5.x types it int
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


class HookedTimeSformer(HookedVideoTransformer):
    """TimeSformer, divided space-time attention (``transformers.TimesformerForVideoClassification`` /
    ``TimesformerModel``), hooked. ``blocks.{l}.attn`` is the spatial attention,
    ``blocks.{l}.temporal_attn`` the temporal one (transformers' temporal_dense folded into its W_O)."""

    config_class = HookedTimeSformerConfig
    model_type = "timesformer"
    block_class = DividedSpaceTimeBlock
    hook_axes = TIMESFORMER_HOOK_AXES

    def _build_embeddings(self, cfg: HookedViViTConfig) -> None:
        self.embed = TubeletEmbed(cfg)  # a (1, p, p) Conv3d: transformers' per-frame Conv2d
        self.pos_embed = FramePosEmbed(cfg)
        self.time_embed = TimeEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, n_ctx, d_model]: patch tokens, CLS at position 0
        self.hook_pos_embed = (
            HookPoint()
        )  # [batch, n_ctx, d_model]: W_pos[0] at CLS, W_pos[1 + n] at patch n of each frame
        self.hook_time_embed = HookPoint()  # [batch, n_ctx, d_model]: 0 at CLS, W_time[t] at every patch of frame t

    def embed_input(self, x: PixelValues) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        B = x.shape[0]
        # transformers' order: (patches + positions) + time.
        resid = self.hook_embed(self.embed(x)) + self.hook_pos_embed(self.pos_embed(B))
        return resid + self.hook_time_embed(self.time_embed(B))

    @property
    def W_time(self) -> Float[torch.Tensor, "frames d_model"]:
        return self.time_embed.W_time

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        if use_split_qkv_input:
            raise ValueError(
                "use_split_qkv_input is not available on TimeSformer; hook ln1.hook_normalized / ln_temporal.hook_normalized"
            )

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        if use_attn_in:
            raise ValueError(
                "use_attn_in is not available on TimeSformer; hook ln1.hook_normalized / ln_temporal.hook_normalized"
            )

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[torch.Tensor, " d_model"]:
        raise NotImplementedError(
            "TimeSformer's temporal attention writes its bias to patch tokens only (not CLS), so no single "
            "accumulated bias vector describes every token; read the biases per block"
        )

    def residual_writers(
        self, layer: int, *, mlp_input: bool = False, mode: str = "all", incl_embeds: bool = True
    ) -> tuple[list[str], list[str]]:
        """Hook names (and labels) of everything written to the residual stream entering ``layer``
        (its MLP with ``mlp_input``), in forward order: embed, pos_embed, time_embed, then per block
        temporal_attn_out, attn_out, mlp_out. ``mode``: "all", "attn" (both attentions) or "mlp"."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        if not 0 <= layer <= self.cfg.n_layers or (mlp_input and layer >= self.cfg.n_layers):
            raise ValueError(
                f"layer must lie in 0..{self.cfg.n_layers}{' - 1 with mlp_input' if mlp_input else ''}, got {layer}"
            )
        names, labels = [], []
        if incl_embeds:
            names += ["hook_embed", "hook_pos_embed", "hook_time_embed"]
            labels += ["embed", "pos_embed", "time_embed"]
        attn, mlp = mode != "mlp", mode != "attn"
        for l in range(layer + (1 if mlp_input else 0)):
            kinds = (["temporal_attn_out", "attn_out"] if attn else []) + (["mlp_out"] if mlp and l < layer else [])
            names += [f"blocks.{l}.hook_{k}" for k in kinds]
            labels += [f"{l}_{k}" for k in kinds]
        return names, labels

    # ------------------------------------------------------------------ token order and layouts
    def hf_token_order(self) -> torch.Tensor:
        """Index ``i`` such that ``hf_hidden[:, i]`` is in this model's token order: transformers
        orders patch tokens position-major (1 + n * frames + t), this model frame-major (1 + t * patches + n)."""
        T, N = self.cfg.num_frames, self.cfg.grid.n_rows * self.cfg.grid.n_cols
        t, n = torch.meshgrid(torch.arange(T), torch.arange(N), indexing="ij")
        return torch.cat([torch.zeros(1, dtype=torch.long), (1 + n * T + t).flatten()])

    @staticmethod
    @contextmanager
    def hf_temporal_patterns(hf_model: nn.Module) -> Iterator[list[torch.Tensor]]:
        """Within the block, a transformers TimeSformer also records each layer's temporal attention
        pattern ([batch * patches, heads, frames, frames], its own computation: transformers returns
        only the spatial ones) into the yielded list, in layer order."""
        layers = [m for m in hf_model.modules() if type(m).__name__ == "TimesformerLayer"]
        patterns: list[torch.Tensor] = []
        originals = []
        for layer in layers:
            inner = layer.temporal_attention.attention
            original = inner.forward

            def forward(hidden_states, output_attentions=False, _original=original):
                context, probs = _original(hidden_states, output_attentions=True)
                patterns.append(probs)
                return (context, probs) if output_attentions else (context,)

            inner.forward = forward
            originals.append((inner, original))
        try:
            yield patterns
        finally:
            for inner, original in originals:
                inner.forward = original

    def _grid_sizes(self) -> tuple[int, int]:
        return self.cfg.num_frames, self.cfg.grid.n_rows * self.cfg.grid.n_cols

    def spatial_to_tokens(self, x: torch.Tensor, cls: str = "mean") -> torch.Tensor:
        """A spatial-attention activation over its tokens, [batch * frames, 1 + patches, ...] ->
        [batch, n_ctx, ...] in residual order. ``cls``: "mean" (the frames' CLS rows averaged, as
        the block averages the CLS outputs), "first" (frame 0's CLS, e.g. for q/k/v: every frame's CLS
        input is the same vector) or "frames" (returns (cls [batch, frames, ...], patches [batch, n_ctx - 1, ...]))."""
        T, N = self._grid_sizes()
        if x.shape[0] % T or x.shape[1] != 1 + N:
            raise ValueError(f"expected [batch * {T} frames, {1 + N} tokens, ...], got shape {tuple(x.shape)}")
        y = x.reshape(-1, T, *x.shape[1:])
        patches = y[:, :, 1:].reshape(y.shape[0], T * N, *x.shape[2:])
        if cls == "frames":
            return y[:, :, 0], patches
        head = y[:, :, 0].mean(1) if cls == "mean" else y[:, 0, 0]
        return torch.cat([head.unsqueeze(1), patches], dim=1)

    def temporal_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A temporal-attention activation [batch * patches, frames, ...] -> [batch, frames * patches, ...]
        (patch tokens in residual order, CLS excluded: add 1 for a token index)."""
        T, N = self._grid_sizes()
        if x.shape[0] % N or x.shape[1] != T:
            raise ValueError(f"expected [batch * {N} patches, {T} frames, ...], got shape {tuple(x.shape)}")
        return x.reshape(-1, N, T, *x.shape[2:]).transpose(1, 2).reshape(-1, T * N, *x.shape[2:])

    def batched_hook_on_tokens(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """An additive quantity (e.g. an attribution score) on an attention hook that batches over
        positions or frames, with a position axis second (ln_temporal.*, temporal_attn / attn q, k, v, z,
        result), put on the residual stream's tokens: [batch, n_ctx, ...]. A patch token gets its own
        entry; CLS gets zero from the temporal attention (which skips it) and the sum of its frames'
        copies from the spatial one (patching CLS there means patching every frame's copy)."""
        parts = name.split(".")
        leaf = parts[-1]
        token_axis = leaf in ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result") or parts[2:3] == ["ln_temporal"]
        if len(parts) != 4 or parts[2] not in ("temporal_attn", "attn", "ln_temporal") or not token_axis:
            raise ValueError(
                f"{name} has no (positions or frames) x tokens layout to put on the token grid; attention maps "
                "(hook_pattern, hook_attn_scores) have a query and a key axis: read them with temporal_maps / cls_pattern_on_tokens"
            )
        if parts[2] == "attn":
            cls, patches = self.spatial_to_tokens(x, cls="frames")
            return torch.cat([cls.sum(1, keepdim=True), patches], dim=1)
        patches = self.temporal_to_tokens(x)
        return torch.cat([torch.zeros_like(patches[:, :1]), patches], dim=1)

    def cls_pattern_on_tokens(
        self, pattern: Float[torch.Tensor, "bt head q k"]
    ) -> Float[torch.Tensor, "batch head n_ctx"]:
        """The CLS query rows of the spatial pattern (one per frame, [batch * frames, head, >=1, 1 + patches],
        a hook_pattern or a CLS hook_pattern_rows) as CLS's effective attention over every token:
        the block averages the frames' CLS outputs, so token (t, n) gets ``pattern_t[CLS, n] / frames``
        and CLS gets the frames' mean CLS-to-CLS weight. Each row sums to 1; with the values on the
        grid (``spatial_to_tokens(v, cls="first")``) it gives the CLS output exactly."""
        T, N = self._grid_sizes()
        rows = pattern[:, :, 0]  # [B*T, H, 1+N]
        rows = rows.reshape(-1, T, rows.shape[1], 1 + N)  # [B, T, H, 1+N]
        cls = rows[..., 0].mean(1)  # [B, H]
        patches = (rows[..., 1:] / T).permute(0, 2, 1, 3).reshape(rows.shape[0], rows.shape[2], T * N)
        return torch.cat([cls.unsqueeze(-1), patches], dim=-1)

    def temporal_maps(
        self, cache: Any, layer: int, clip: int = 0
    ) -> Float[torch.Tensor, "head query_frame key_frame rows cols"]:
        """Frame-to-frame attention of every spatial position: ``[h, q, k, r, c]`` is how much the
        patch at grid (r, c) of frame q attends to the same patch of frame k (head h, one clip), from
        a cached ``blocks.{layer}.temporal_attn.hook_pattern``."""
        g = self.cfg.grid
        N = g.n_rows * g.n_cols
        pattern = cache[f"blocks.{layer}.temporal_attn.hook_pattern"][clip * N : (clip + 1) * N]  # [N, H, T, T]
        return pattern.permute(1, 2, 3, 0).reshape(*pattern.shape[1:], g.n_rows, g.n_cols)

    def attention_rows(
        self, pixel_values: PixelValues, queries: Any = "cls", layers: Sequence[int] | None = None
    ) -> Float[torch.Tensor, "batch layers heads 1 n_ctx"]:
        """CLS's effective attention over every token (``cls_pattern_on_tokens``) for every head of
        ``layers``, from the spatial attention's CLS rows on the fused path: [batch, layers, heads, 1, n_ctx]."""
        if queries != "cls":
            raise ValueError(
                "HookedTimeSformer.attention_rows reads the CLS query only (queries='cls'); for other queries cache "
                "blocks.{l}.attn.hook_pattern (per frame) or blocks.{l}.temporal_attn.hook_pattern"
            )
        from hooked_vivit.attention_rows import attention_rows

        rows = attention_rows(self, pixel_values, "cls", layers)  # [B*T, L, H, 1, 1+N]: CLS rows per frame
        per_layer = [self.cls_pattern_on_tokens(rows[:, i]) for i in range(rows.shape[1])]
        return torch.stack(per_layer, dim=1).unsqueeze(3)


__all__ = ["HookedTimeSformer", "HookedTimeSformerConfig", "TIMESFORMER_HOOK_AXES"]
