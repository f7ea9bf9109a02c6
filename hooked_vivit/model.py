"""HookedViViT: ViViT model 1 (joint space-time attention) as a TransformerLens HookedRootModule.

The forward reads top to bottom like the data flows:
pixels [batch, frames, C, H, W] -> tubelet tokens + CLS -> + position embeddings -> pre-LN blocks
-> final LayerNorm -> classifier on the CLS token -> logits [batch, n_classes].
"""

from __future__ import annotations

import difflib
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from hooked_vivit.cache_memory import VideoActivationCache, estimate_cache_bytes, free_bytes, without_maps
from hooked_vivit.components import LayerNorm, PosEmbed, TransformerBlock, TubeletEmbed, Unembed
from hooked_vivit.config import HookedViViTConfig, to_dtype

PixelValues = Float[torch.Tensor, "batch frames channels height width"]
ClassIndices = Union[int, str, Sequence[Union[int, str]], Int[torch.Tensor, "..."]]


class HookNameError(KeyError):
    """An unknown hook name; the message lists the nearest real names."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class HookedViViT(HookedRootModule):
    def __init__(self, cfg: HookedViViTConfig, *, init_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed = TubeletEmbed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, n_ctx, d_model]: tubelet tokens, CLS at position 0
        self.hook_pos_embed = HookPoint()  # [batch, n_ctx, d_model]
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg) if cfg.n_classes > 0 else None
        if init_weights:
            self.init_weights()
        self.setup()  # names every HookPoint (TransformerLens)
        self.eval()  # no dropout anywhere; eval mode is what TransformerLens's patching expects
        if cfg.device is not None:
            self.to(cfg.device)

    def init_weights(self, seed: int | None = None) -> None:
        """Random weights as HF initialises ViViT (normal(0, initializer_range), LN = identity)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.initializer_range
        with torch.no_grad():
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("W_"):
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
                elif leaf == "w":
                    p.fill_(1.0)
                else:  # biases, CLS token and position embeddings start at zero, as in HF
                    p.zero_()

    # ================================================================== forward
    def forward(
        self,
        pixel_values: PixelValues | Float[torch.Tensor, "batch n_ctx d_model"],
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Float[torch.Tensor, "batch n_classes"] | Float[torch.Tensor, "batch n_ctx d_model"]:
        """Logits [batch, n_classes].

        ``stop_at_layer=L`` returns the residual stream entering block L (blocks L.. are skipped);
        ``start_at_layer=L`` takes that residual stream [batch, n_ctx, d_model] instead of pixels
        and runs blocks L... A model without classifier returns the final-LayerNorm CLS embedding
        [batch, d_model] (HF's ``last_hidden_state[:, 0]``)."""
        if start_at_layer is None:
            x = self.validate_input(pixel_values)
            resid = self.hook_embed(self.embed(x)) + self.hook_pos_embed(self.pos_embed(x.shape[0]))
            start_at_layer = 0
        else:
            resid = self._validate_resid(pixel_values, start_at_layer)
        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        cls = self.ln_final(resid)[:, 0]
        return self.unembed(cls) if self.unembed is not None else cls

    def attention_rows(self, pixel_values: PixelValues, queries: Any = "cls", layers: Sequence[int] | None = None) -> Float[torch.Tensor, "batch layers heads n_queries n_ctx"]:
        """Attention pattern rows of the ``queries`` positions ("cls", a token list, FrameSlot,
        Region ...) for every head of ``layers``, at fused-attention cost: ``[:, l, :, 0]`` with
        the default CLS query equals ``cache["pattern", l][:, :, 0]``. See hooked_vivit.attention_rows."""
        from hooked_vivit.attention_rows import attention_rows

        return attention_rows(self, pixel_values, queries, layers)

    def _validate_resid(self, resid: Any, layer: int) -> torch.Tensor:
        expected = (self.cfg.n_ctx, self.cfg.d_model)
        if not isinstance(resid, torch.Tensor) or resid.ndim != 3 or tuple(resid.shape[1:]) != expected:
            got = tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__
            raise ValueError(f"start_at_layer={layer} takes the residual stream [batch, {expected[0]}, {expected[1]}], got {got}")
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"start_at_layer must be in 0..{self.cfg.n_layers}, got {layer}")
        return resid.to(device=self.embed.W_E.device, dtype=self.embed.W_E.dtype)

    def validate_input(self, pixel_values: Any) -> PixelValues:
        """Check rank, sizes, dtype and finiteness; return the input on the model's device/dtype."""
        cfg = self.cfg
        expected = f"[batch, {cfg.num_frames}, {cfg.n_channels}, {cfg.image_size[0]}, {cfg.image_size[1]}]"  # type: ignore[index]
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor {expected}, got {type(pixel_values).__name__}; "
                "hooked_vivit.video.preprocess turns uint8 frames into one"
            )
        x = pixel_values
        if x.ndim != 5:
            hint = " (a single clip? add the batch dim: x[None])" if x.ndim == 4 else ""
            raise ValueError(f"pixel_values must have 5 dims {expected}, got shape {tuple(x.shape)}{hint}")
        B, T, C, H, W = x.shape
        if C != cfg.n_channels:
            hint = " (channels-last? use x.permute(0, 1, 4, 2, 3))" if W == cfg.n_channels else ""
            raise ValueError(f"expected {cfg.n_channels} channels at dim 2 {expected}, got shape {tuple(x.shape)}{hint}")
        if T != cfg.num_frames:
            raise ValueError(f"expected {cfg.num_frames} frames at dim 1 {expected}, got {T} (shape {tuple(x.shape)})")
        if (H, W) != tuple(cfg.image_size):
            raise ValueError(
                f"expected frames of {cfg.image_size[0]}x{cfg.image_size[1]} pixels {expected}, got {H}x{W}; "  # type: ignore[index]
                "the position embeddings fix the size (resize/crop with hooked_vivit.video.preprocess)"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"pixel_values must be normalised floats, got dtype {x.dtype}; raw uint8 frames go through "
                "hooked_vivit.video.preprocess first"
            )
        if not torch.isfinite(x).all():
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"pixel_values contains {n_bad} NaN/Inf values")
        return x.to(device=self.embed.W_E.device, dtype=self.embed.W_E.dtype)

    # ================================================================== TransformerLens glue
    def _check_hook_names(self, names: Iterable[Any]) -> None:
        for name in names:
            if isinstance(name, str) and name not in self.hook_dict:
                raise HookNameError(self._unknown_hook_message(name))

    def _unknown_hook_message(self, name: str) -> str:
        msg = f"unknown hook name {name!r}."
        # get_act_name's shorthand ('pattern3'), also with underscores ('resid_pre3', 'scale1ln2').
        short = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]+\d?)?", name)
        try:
            full = get_act_name(short[1], int(short[2]), short[3]) if short else get_act_name(name)
        except Exception:
            full = None
        if full in self.hook_dict and full != name:
            return msg + f" Did you mean {full!r} (get_act_name({name!r}))?"
        layer = re.match(r"blocks\.(\d+)\.", full or name)
        if layer and int(layer.group(1)) >= self.cfg.n_layers:
            return msg + f" Layer {layer.group(1)} does not exist: this model has layers 0..{self.cfg.n_layers - 1}."
        close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.6)
        if close:
            return msg + " Nearest: " + ", ".join(repr(c) for c in close)
        return msg + f" This model has {len(self.hook_dict)} hooks; see model.hook_dict.keys()."

    @contextmanager
    def hooks(self, fwd_hooks=[], bwd_hooks=[], reset_hooks_end=True, clear_contexts=False):  # noqa: B006 (TL's signature)
        self._check_hook_names([n for n, _ in fwd_hooks] + [n for n, _ in bwd_hooks])
        with super().hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts) as model:
            yield model

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:  # noqa: A002
        self._check_hook_names([name])
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def get_caching_hooks(self, names_filter=None, *args, **kwargs):
        if isinstance(names_filter, str):
            self._check_hook_names([names_filter])
        elif isinstance(names_filter, (list, tuple)):
            self._check_hook_names(names_filter)
            names_filter = list(names_filter)
        return super().get_caching_hooks(names_filter, *args, **kwargs)

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs: Any):
        """As TransformerLens: returns (logits, ActivationCache). Warns first when the cache would
        not fit in free memory, naming a ``names_filter`` that would."""
        self._warn_if_cache_too_big(model_args, kwargs)
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            return out, VideoActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def _warn_if_cache_too_big(self, model_args: tuple, kwargs: dict) -> None:
        x = model_args[0] if model_args else kwargs.get("pixel_values")
        if not isinstance(x, torch.Tensor) or x.ndim < 1:
            return
        names_filter = kwargs.get("names_filter")
        device = kwargs.get("device") or self.W_E.device
        need = estimate_cache_bytes(self, names_filter, batch=x.shape[0])
        free = free_bytes(device)
        if need > free:
            smaller = estimate_cache_bytes(self, without_maps, batch=x.shape[0])
            warnings.warn(
                f"run_with_cache will hold about {need / 1e9:.1f} GB but only {free / 1e9:.1f} GB is free on {device}; "
                f"names_filter=hooked_vivit.cache_memory.without_maps (no attention patterns or scores) needs "
                f"{smaller / 1e9:.1f} GB, or cache only the hooks you need",
                stacklevel=3,
            )

    # Class indices play TransformerLens's tokens: the classifier columns are the unembedding.
    def to_single_token(self, label: str | int) -> int:
        if isinstance(label, int):
            return label
        label2id = self.cfg.label2id
        if label not in label2id:
            close = difflib.get_close_matches(label, list(label2id), n=3)
            raise KeyError(f"unknown class name {label!r}" + (f"; nearest: {close}" if close else ""))
        return label2id[label]

    def class_index(self, classes: ClassIndices) -> Int[torch.Tensor, "..."]:
        if isinstance(classes, torch.Tensor):
            return classes.long()
        if isinstance(classes, (int, str)):
            return torch.tensor(self.to_single_token(classes))
        return torch.tensor([self.to_single_token(c) for c in classes])

    def tokens_to_residual_directions(self, tokens: ClassIndices) -> Float[torch.Tensor, "*classes d_model"]:
        """Classifier columns W_U[:, c] for class indices or names: [d_model] or [..., d_model]."""
        if self.unembed is None:
            raise ValueError("this model has no classifier head (a backbone checkpoint), so no class directions")
        idx = self.class_index(tokens).to(self.W_U.device)
        return self.W_U[:, idx].movedim(0, -1)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[torch.Tensor, "d_model"]:
        """Sum of the output biases (b_O, and b_out if asked) written before ``layer``'s input."""
        bias = torch.zeros(self.cfg.d_model, device=self.W_E.device, dtype=self.W_E.dtype)
        for l in range(layer):
            bias = bias + self.blocks[l].attn.b_O
            if include_mlp_biases:
                bias = bias + self.blocks[l].mlp.b_out
        if mlp_input:
            if layer >= self.cfg.n_layers:
                raise ValueError("mlp_input needs a layer < n_layers")
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    # ================================================================== weights, TransformerLens style
    def _stack(self, get: Callable[[TransformerBlock], torch.Tensor]) -> torch.Tensor:
        return torch.stack([get(b) for b in self.blocks])  # type: ignore[arg-type]

    @property
    def W_E(self) -> Float[torch.Tensor, "d_model channels t h w"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[torch.Tensor, "n_ctx d_model"]:
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model n_classes"]:
        if self.unembed is None:
            raise AttributeError("this model has no classifier head")
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[torch.Tensor, "n_classes"]:
        if self.unembed is None:
            raise AttributeError("this model has no classifier head")
        return self.unembed.b_U

    W_Q = property(lambda self: self._stack(lambda b: b.attn.W_Q), doc="[n_layers, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._stack(lambda b: b.attn.W_K), doc="[n_layers, n_heads, d_model, d_head]")
    W_V = property(lambda self: self._stack(lambda b: b.attn.W_V), doc="[n_layers, n_heads, d_model, d_head]")
    W_O = property(lambda self: self._stack(lambda b: b.attn.W_O), doc="[n_layers, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._stack(lambda b: b.attn.b_Q), doc="[n_layers, n_heads, d_head]")
    b_K = property(lambda self: self._stack(lambda b: b.attn.b_K), doc="[n_layers, n_heads, d_head]")
    b_V = property(lambda self: self._stack(lambda b: b.attn.b_V), doc="[n_layers, n_heads, d_head]")
    b_O = property(lambda self: self._stack(lambda b: b.attn.b_O), doc="[n_layers, d_model]")
    W_in = property(lambda self: self._stack(lambda b: b.mlp.W_in), doc="[n_layers, d_model, d_mlp]")
    W_out = property(lambda self: self._stack(lambda b: b.mlp.W_out), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._stack(lambda b: b.mlp.b_in), doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._stack(lambda b: b.mlp.b_out), doc="[n_layers, d_model]")

    @property
    def OV(self):
        from transformer_lens.FactoredMatrix import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self):
        from transformer_lens.FactoredMatrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def _apply(self, fn, recurse=True):
        # Keep cfg.dtype / cfg.device true after .to(), .half(), .cuda(), ...
        out = super()._apply(fn, recurse)
        p = next(self.parameters(), None)
        if p is not None:
            self.cfg.dtype, self.cfg.device = p.dtype, str(p.device)
        return out

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.parameters())
        return f"HookedViViT({n_params / 1e6:.1f}M params, {len(self.hook_dict)} hooks)\n  {self.cfg!r}"

    # ================================================================== loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> "HookedViViT":
        """Load a ViViT checkpoint: a local HF directory (config.json + model.safetensors, sharded
        safetensors, or pytorch_model.bin) or a hub id such as ``google/vivit-b-16x2-kinetics400``
        (the local HF cache is tried first).

        Keywords (see ``from_state_dict``): ``device``, ``dtype``, ``fold_ln``,
        ``center_writing_weights``, ``fold_value_biases``, and config switches such as
        ``use_attn_result=True``."""
        from hooked_vivit.loading import load_checkpoint

        hf_config, state_dict = load_checkpoint(name_or_path)
        return cls.from_state_dict(state_dict, hf_config, **kwargs)

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module, **kwargs: Any) -> "HookedViViT":
        """Convert a live ``transformers`` VivitForVideoClassification / VivitModel."""
        state_dict = {k: v.detach() for k, v in hf_model.state_dict().items()}
        kwargs.setdefault("dtype", next(hf_model.parameters()).dtype)
        return cls.from_state_dict(state_dict, hf_model.config.to_dict(), **kwargs)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        hf_config: dict[str, Any],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        fold_value_biases: bool = False,
        **cfg_overrides: Any,
    ) -> "HookedViViT":
        from hooked_vivit import weight_processing
        from weights_conversion import checkpoint_has_classifier, convert_vivit_weights

        if not checkpoint_has_classifier(state_dict):
            cfg_overrides.setdefault("n_classes", 0)  # a VivitModel backbone
            cfg_overrides.setdefault("id2label", {})
        cfg = HookedViViTConfig.from_hf_config(hf_config, device="cpu", **cfg_overrides)
        hooked = convert_vivit_weights(state_dict, cfg)
        hooked, cfg = weight_processing.process_weights(
            hooked, cfg, fold_ln=fold_ln, center_writing_weights=center_writing_weights, fold_value_biases=fold_value_biases
        )
        target_dtype = to_dtype(dtype) or cfg.dtype
        cfg.dtype = torch.float32  # build in fp32, cast once at the end
        model = cls(cfg, init_weights=False)
        model.load_state_dict(hooked, strict=True)
        return model.to(device=device or "cpu", dtype=target_dtype)

    def save_pretrained(self, path: str | Path, *, layout: str = "transformers", overwrite: bool = False) -> Path:
        """Write config.json + model.safetensors. ``layout="transformers"`` (HF keys, loadable by
        transformers too), ``"hub"`` (the original hub checkpoint's keys) or ``"hooked"`` (this
        model's own parameter names). The directory appears whole or not at all."""
        from hooked_vivit.loading import save_checkpoint

        return save_checkpoint(self, Path(path), layout=layout, overwrite=overwrite)
