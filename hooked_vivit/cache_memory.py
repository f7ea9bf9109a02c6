"""How many bytes a run_with_cache will hold, before running it, and a readable cache summary.

A full ViViT-B cache with attention patterns and scores is about 11 GB per clip: the two
[12 heads x 3137 x 3137] maps of each of 12 layers dominate everything else.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformer_lens import ActivationCache

from hooked_vivit.components import hook_layout

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer


def hook_shape(cfg: Any, name: str, batch: int) -> tuple[int, ...] | None:
    """The shape a hook fires with, or None if it does not fire under this config (from the
    hook-layout table, hooked_vivit.components.hook_layout; an architecture whose attentions batch
    differently (TimeSformer) or has hooks of other shapes (V-JEPA 2's pooler) answers for its own hooks through cfg.hook_shape)."""
    own = getattr(cfg, "hook_shape", None)
    if own is not None:
        shape = own(name, batch)
        if shape is not NotImplemented:
            return shape
    axes = hook_layout.hook_axes(name, cfg)
    if axes is None:
        return None
    return tuple(batch if a == "batch" else hook_layout.AXIS_SIZES[a](cfg) for a in axes)


def _filter(names_filter: Any) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda n: True
    if isinstance(names_filter, str):
        return lambda n: n == names_filter
    if isinstance(names_filter, (list, tuple, set)):
        wanted = set(names_filter)
        return lambda n: n in wanted
    return names_filter


def estimate_cache_bytes(
    model: HookedVideoTransformer, names_filter: Any = None, batch: int = 1, dtype: torch.dtype | None = None
) -> int:
    keep = _filter(names_filter)
    elem = torch.finfo(dtype or model.cfg.dtype).bits // 8
    total = 0
    for name in model.hook_dict:
        if keep(name):
            try:
                shape = hook_shape(model.cfg, name, batch)
            except KeyError:  # a hook point attached from outside the layout table (a spliced SAE): its size is its own
                shape = None
            if shape is not None:
                n = 1
                for s in shape:
                    n *= s
                total += n * elem
    return total


def free_bytes(device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def without_maps(name: str) -> bool:
    """A names_filter that skips the attention patterns and scores (the bulk of a cache)."""
    return not hook_layout.is_attention_map(name)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class VideoActivationCache(ActivationCache):
    """TransformerLens's ActivationCache with a summary for a repr: hooks, shapes, bytes; a missing
    key raises a KeyError that names the nearest hooks, or says the hook was not cached."""

    def __getitem__(self, key) -> torch.Tensor:
        try:
            return super().__getitem__(key)
        except (KeyError, TypeError, ValueError, IndexError):
            raise self._missing(key) from None

    def _missing(self, key: Any) -> KeyError:
        from transformer_lens.utilities import get_act_name

        from hooked_vivit.model import HookNameError

        try:
            name = key if isinstance(key, str) else get_act_name(*key)
        except Exception:  # noqa: BLE001 - any malformed key gets the message below
            return HookNameError(
                f"cache key {key!r} is not a hook name or a (name, layer[, sublayer]) tuple such as ('resid_pre', 3)"
            )
        model = self.model
        try:
            layered = isinstance(key, str) and get_act_name(key, 0) in model.hook_dict
        except Exception:  # noqa: BLE001
            layered = False
        if layered and name not in model.hook_dict:
            return HookNameError(
                f"cache key {key!r} needs a layer: cache[{key!r}, layer] with layer in 0..{model.cfg.n_layers - 1}"
            )
        if name in model.hook_dict and not model._fires(name):
            return HookNameError(model._dead_hook_message(name))
        if name in model.hook_dict:
            return HookNameError(
                f"{name!r} was not cached (this cache holds {len(self.cache_dict)} hooks); run_with_cache without a "
                "names_filter, or with one that includes it"
            )
        return HookNameError(f"cache key {key!r}: " + model._unknown_hook_message(name))

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """TransformerLens's decomposition; on a model with more residual writers than embed, pos_embed,
        attn_out and mlp_out (TimeSformer: time_embed, temporal_attn_out) it stacks all of them, in
        forward order, so the stack still sums to the residual stream."""
        writers = getattr(self.model, "residual_writers", None)
        if writers is None:
            return super().decompose_resid(layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels)
        from transformer_lens.utilities import Slice

        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        layer = self.model.cfg.n_layers if layer is None or layer == -1 else layer
        if apply_ln and layer < self.model.cfg.n_layers and not mlp_input:
            raise ValueError(
                f"apply_ln at block {layer}'s input: on this model ln1 reads the stream after the temporal attention, "
                "not resid_pre; use layer=None (ln_final) or mlp_input=True (ln2)"
            )
        names, labels = writers(layer, mlp_input=mlp_input, mode=mode, incl_embeds=incl_embeds)
        components = torch.stack([pos_slice.apply(self[n], dim=-2) for n in names], dim=0)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (components, labels) if return_labels else components

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.cache_dict.values())

    def summary(self, max_rows: int = 12) -> str:
        groups: dict[str, list] = {}
        for name, v in self.cache_dict.items():
            key = name.split(".", 2)[-1] if name.startswith("blocks.") else name
            g = groups.setdefault(key, [0, tuple(v.shape), 0])
            g[0] += 1
            g[2] += v.numel() * v.element_size()
        rows = sorted(groups.items(), key=lambda kv: -kv[1][2])
        lines = [
            f"VideoActivationCache: {len(self.cache_dict)} hooks, {_gb(self.nbytes())}"
            + ("" if self.has_batch_dim else ", batch dim removed")
        ]
        for key, (count, shape, nbytes) in rows[:max_rows]:
            lines.append(f"  {key:<28} x{count:<3} {str(list(shape)):<26} {_gb(nbytes)}")
        if len(rows) > max_rows:
            lines.append(f"  ... {len(rows) - max_rows} more kinds")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def logit_attrs(
        self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None, batch_slice=None, has_batch_dim=True
    ):
        """TransformerLens's logit attribution. It divides by the cached final LayerNorm scale but
        does not apply ln_final's weight and bias, so on a model whose LayerNorms are not folded the
        attributions do not add up to the logit: that case warns with the fix. Where the classifier
        does not read one token of the residual stream, no such split is exact: an attentive pooler
        (V-JEPA 2) refuses, and mean pooling (VideoMAE) takes only the pooled stack (no position
        axis, no pos_slice); each error names the library's exact decomposition."""
        self._check_readout_decomposition(residual_stack, pos_slice, has_batch_dim)
        if getattr(self.model.cfg, "normalization_type", None) == "LN":
            warnings.warn(
                "cache.logit_attrs on a model with unfolded LayerNorms ignores ln_final's weight and bias, so the "
                "attributions will not sum to the logit. Load with fold_ln=True, or call model.process_weights_() "
                "before run_with_cache, for exact attributions.",
                stacklevel=2,
            )
        return super().logit_attrs(residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice, has_batch_dim)

    def _check_readout_decomposition(self, residual_stack: Any, pos_slice: Any, has_batch_dim: bool) -> None:
        from transformer_lens.utilities import Slice

        model = self.model
        pooling, name = getattr(model.cfg, "pooling", "first"), type(model).__name__
        if pooling == "attentive":
            raise ValueError(
                f"cache.logit_attrs: {name} classifies the output of its attentive pooler (self-attention blocks, a "
                "cross-attending query, LayerNorms and an MLP stand between the residual stream and the classifier), so "
                "no split of the residual stream sums to the logit, with fold_ln or without. The exact attribution: "
                "hooked_vivit.causal.logit_attribution.pooler_token_dla(model, pixel_values, class_index), per pooler "
                "head and source token, whose terms plus its 'rest' (bias, query, MLP) sum to the logit"
            )
        if pooling != "mean":
            return
        sliced = pos_slice is not None and not (isinstance(pos_slice, Slice) and pos_slice.slice == slice(None))
        pooled_ndim = 3 if has_batch_dim else 2  # [components, (batch,) d_model]: no position axis
        if sliced or getattr(residual_stack, "ndim", pooled_ndim) != pooled_ndim:
            what = f"pos_slice={pos_slice!r}" if sliced else f"a per-token stack (shape {tuple(residual_stack.shape)})"
            exact = (
                "model.pooled_logit_terms(cache, classes) (per component and token, plus a constant), or "
                if hasattr(model, "pooled_logit_terms")
                else ""
            )
            raise ValueError(
                f"cache.logit_attrs with {what}: {name} classifies the token mean (mean pooling, no CLS token), and "
                "ln_final's cached scale is the pooled vector's, so per-token or one-position attributions do not sum "
                f"to the logit. Exact: {exact}the pooled stack, cache.logit_attrs(cache.decompose_resid().mean(-2), "
                "tokens) without pos_slice, on a model loaded with fold_ln=True"
            )

    def logit_lens(self, positions: Any = 0, **kwargs: Any) -> Any:
        """TransformerLens's logit lens (TL >= 4), read at CLS (``positions=0``) by default, the token
        the classifier reads; the last entry of the result then equals the model's logits.
        TransformerLens 3 has no ``ActivationCache.logit_lens``; there the same numbers are
        ``cache.accumulated_resid(apply_ln=True, pos_slice=0) @ model.W_U + model.b_U`` on a folded model.
        A classifier that reads no single token (mean pooling, an attentive pooler) refuses, naming the
        exact lens: each layer's residual stream through the model's own head."""
        from hooked_vivit.compat import HAS_LOGIT_LENS, TL_VERSION_STRING

        pooling = getattr(self.model.cfg, "pooling", "first")
        if pooling in ("mean", "attentive"):
            head = "token mean, final norm" if pooling == "mean" else "final norm, attentive pooler"
            raise ValueError(
                f"cache.logit_lens reads one token (positions={positions!r}) through the final norm and W_U, but "
                f"{type(self.model).__name__} classifies the {'token mean' if pooling == 'mean' else 'attentive pooler output'}, "
                f"so its last entry would not be the logits. Exact: each layer's residual stream through the model's "
                f"own head ({head}, classifier): model(cache['resid_pre', l], start_at_layer=model.cfg.n_layers), and "
                "cache['resid_post', n_layers - 1] for the last"
            )

        if not HAS_LOGIT_LENS:
            raise NotImplementedError(
                f"ActivationCache.logit_lens needs transformer-lens >= 4 (installed: {TL_VERSION_STRING}); on 3.x use "
                "cache.accumulated_resid(apply_ln=True, pos_slice=0) @ model.W_U + model.b_U with a folded model "
                "(fold_ln=True or model.process_weights_())"
            )
        return super().logit_lens(positions=positions, **kwargs)
