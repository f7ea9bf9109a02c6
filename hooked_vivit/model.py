"""HookedVideoTransformer, the hooked core every video architecture shares, and HookedViViT (ViViT
model 1, joint space-time attention) on it; HookedVideoMAE (hooked_vivit.videomae) is the second.

The forward reads top to bottom like the data flows:
pixels [batch, frames, C, H, W] -> tubelet tokens (+ CLS) -> + position embeddings -> pre-LN blocks
-> pooling (final LayerNorm then the CLS token, or the token mean then the final LayerNorm)
-> classifier -> logits [batch, n_classes]. What differs between architectures is config
(n_prefix_tokens, pooling, pos_embed_type, final_norm_eps) and the weight converter
(weights_conversion, by model_type).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
import torch.nn as nn
from jaxtyping import Float, Int
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from hooked_vivit.cache_memory import VideoActivationCache, estimate_cache_bytes, free_bytes, hook_shape, without_maps
from hooked_vivit.compat import in_function_transform
from hooked_vivit.components import (
    Attention,
    LayerNorm,
    PosEmbed,
    SinusoidalPosEmbed,
    TransformerBlock,
    TubeletEmbed,
    Unembed,
    hook_layout,
)
from hooked_vivit.config import HookedViViTConfig, to_dtype
from hooked_vivit.tensor_types import PixelValues
from weights_conversion import checkpoint_has_classifier, converter

ClassIndices = Union[int, str, Sequence[int | str], Int[torch.Tensor, "..."]]  # noqa: UP007  (a runtime alias, readable in any Python)


class HookNameError(KeyError):
    """An unknown hook name (the message lists the nearest real names), or a hook that cannot fire
    under the model's config (the message names the switch that turns it on)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class HookReturnError(ValueError):
    """A hook function returned something other than a tensor of the activation's shape, dtype and device."""


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} ({str(x.dtype).removeprefix('torch.')}, {x.device})"
    return f"a {type(x).__name__}"


class _ReturnChecked:
    """A hook function whose return value must be None or a tensor like the activation: broadcasting
    would otherwise let [B, 1, d] or a scalar run on silently. Costs nothing when nothing is hooked."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, act: Any, hook: Any) -> Any:
        out = self.fn(act, hook=hook)
        if (
            out is not None
            and out is not act
            and isinstance(act, torch.Tensor)
            and (
                not isinstance(out, torch.Tensor)
                or out.shape != act.shape
                or out.dtype != act.dtype
                or out.device != act.device
            )
        ):
            raise HookReturnError(
                f"the hook function {getattr(self.fn, '__name__', type(self.fn).__name__)} on {hook.name!r} returned "
                f"{_describe(out)}, but the activation has {_describe(act)}; a hook returns a tensor of the activation's "
                "shape, dtype and device (or None after editing it in place)"
            )
        return out

    def __repr__(self) -> str:  # TransformerLens names the torch hook after this
        return f"checked({getattr(self.fn, '__name__', type(self.fn).__name__)})"


_TL_PATCHING = "transformer_lens.patching"
_POSITION_AXES = ("pos", "dest_pos", "src_pos")


@dataclasses.dataclass
class _TLPatchingCall:
    """A hook that transformer_lens.patching is adding: the helper the user called and the library's twin."""

    tl_name: str  # e.g. "get_act_patch_resid_pre"
    twin: str | None  # the hooked_vivit.causal.patching function of the same job, if there is one
    position_axes: tuple[str, ...] = ()  # index axes TransformerLens sized from the input's last dim
    input_width: int | None = None  # that size: the pixel width of a video

    def twin_hint(self) -> str:
        if self.twin is None:
            return ""
        return (
            f"use hooked_vivit.causal.patching.{self.twin}, its twin for video models (the same arguments, the "
            "corrupted video for the tokens)"
        )


def _tl_patching_call(hook: Callable) -> _TLPatchingCall | None:
    """Whether ``hook`` is one that transformer_lens.patching adds (its patching hook, a partial of a function
    defined there), and then which helper of it is running: read from the call stack, since TransformerLens
    passes the model only pixels and hooks. Costs nothing for any other hook. Each of TransformerLens's
    ``get_act_patch_*`` helpers has a twin of the same name in hooked_vivit.causal.patching (a test holds
    that), so the twin is named without importing the causal layer from this one."""
    fn = hook.func if isinstance(hook, functools.partial) else hook
    if getattr(fn, "__module__", None) != _TL_PATCHING:
        return None
    frames, f = [], sys._getframe(1)
    while f is not None:
        if f.f_globals.get("__name__") == _TL_PATCHING:
            frames.append(f)
        f = f.f_back
    # The innermost get_act_patch_* frame: the helper adding the hook, or the sweep calling it (a partial of
    # generic_activation_patch, as get_act_patch_resid_pre, makes no frame of its own).
    name = next((f.f_code.co_name for f in frames if f.f_code.co_name.startswith("get_act_patch")), None)
    generic = next((f for f in frames if f.f_code.co_name == "generic_activation_patch"), None)
    if generic is None:
        return _TLPatchingCall(name or (frames[-1].f_code.co_name if frames else "?"), name)
    local = generic.f_locals
    if name is None:  # which partial was called: the one of this patch setter and activation
        tl = sys.modules[_TL_PATCHING]
        name = next(
            (
                n
                for n, v in vars(tl).items()
                if n.startswith("get_act_patch")
                and isinstance(v, functools.partial)
                and v.keywords.get("patch_setter") is local.get("patch_setter")
                and v.keywords.get("activation_name") == local.get("activation_name")
            ),
            None,
        )
    tokens = local.get("corrupted_tokens")
    axes = tuple(a for a in (local.get("index_axis_names") or ()) if a in _POSITION_AXES)
    return _TLPatchingCall(
        name or "generic_activation_patch",
        name,
        axes,
        int(tokens.shape[-1]) if isinstance(tokens, torch.Tensor) and tokens.ndim else None,
    )


def _checks_finite_output(forward: Callable) -> Callable:
    """``forward`` with one check on what comes out (every architecture's forward gets it, see
    __init_subclass__; TransformerLens's run_with_hooks calls forward directly): logits (or the pooled
    embedding) that hold NaN/Inf although the input passed validate_input's finiteness check raise
    FloatingPointError naming the first hook point where the activations went non-finite (found by a
    rerun, on that error path only). Costs one isfinite over [batch, n_classes]; a stopped run
    (``stop_at_layer``) is not checked."""
    if getattr(forward, "checks_finite_output", False):
        return forward

    @functools.wraps(forward)
    def checked(self: HookedVideoTransformer, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        if kwargs.get("stop_at_layer") is not None or self._locating_non_finite or in_function_transform():
            return out
        logits = out[0] if isinstance(out, tuple) else out
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and not torch.isfinite(logits).all():
            raise FloatingPointError(self._non_finite_message(forward, args, kwargs, logits))
        return out

    checked.checks_finite_output = True  # type: ignore[attr-defined]
    return checked


def _refuse_integer_tensors(state_dict: dict[str, Any], arch: type) -> None:
    """Every tensor of a supported checkpoint (parameters, the tables and heads a conversion drops) is
    floating point; load_state_dict would cast integer ones into the float parameters without a word."""
    ints = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and not (v.is_floating_point() or v.is_complex())
    ]
    if ints:
        shown = ints if len(ints) <= 10 else [*ints[:10], f"... and {len(ints) - 10} more"]
        raise ValueError(
            f"the checkpoint stores {len(ints)} tensor(s) as integers, where every {arch.__name__} weight is floating "
            "point: "
            + ", ".join(shown)
            + ". A quantised or corrupted checkpoint? Loading would cast the integers into "
            "the float parameters as they are; dequantise to float first (e.g. {k: v.float() for k, v in state_dict.items()} "
            "if the integers are the real values)"
        )


class HookedVideoTransformer(HookedRootModule):
    """The hooked core of every architecture here (as TransformerLens's HookedEncoder beside
    HookedTransformer): built from the config, converted by ``weights_conversion`` per model_type.
    ``HookedVideoTransformer.from_pretrained(dir)`` returns the class config.json's model_type names."""

    config_class: ClassVar[type] = HookedViViTConfig
    model_type: ClassVar[str | None] = None
    block_class: ClassVar[type[nn.Module]] = TransformerBlock
    # model_type -> class; each subclass with a model_type registers itself.
    architectures: ClassVar[dict[str, type[HookedVideoTransformer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:  # an architecture's own forward: the same output check
            cls.forward = _checks_finite_output(cls.__dict__["forward"])
        if cls.__dict__.get("model_type"):
            HookedVideoTransformer.architectures[cls.model_type] = cls  # type: ignore[index]

    def __init__(self, cfg: HookedViViTConfig, *, init_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self._build_embeddings(cfg)
        self.blocks = nn.ModuleList([self.block_class(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg, eps=cfg.final_norm_eps) if cfg.final_norm else None
        self.unembed = Unembed(cfg) if cfg.n_classes > 0 else None
        if init_weights:
            self.init_weights()
        self.setup()  # names every HookPoint (TransformerLens)
        self.eval()  # no dropout anywhere; eval mode is what TransformerLens's patching expects
        if cfg.device is not None:
            self.to(cfg.device)

    def _build_embeddings(self, cfg: HookedViViTConfig) -> None:
        self.embed = TubeletEmbed(cfg)
        self.pos_embed = PosEmbed(cfg) if cfg.pos_embed_type == "learned" else SinusoidalPosEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, n_ctx, d_model]: tubelet tokens, CLS (if any) at position 0
        self.hook_pos_embed = HookPoint()  # [batch, n_ctx, d_model]

    def embed_input(self, x: PixelValues) -> Float[torch.Tensor, "batch n_ctx d_model"]:
        """The first residual stream: the sum of the embedding writers, each hooked."""
        return self.hook_embed(self.embed(x)) + self.hook_pos_embed(self.pos_embed(x.shape[0]))

    def init_weights(self, seed: int | None = None) -> None:
        """Random weights as HF initialises ViViT and VideoMAE (normal(0, initializer_range), LN = identity),
        except the position embeddings: drawn like every W_ (HF: zeros)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.initializer_range
        with torch.no_grad():
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("W_"):
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
                elif leaf == "w":
                    p.fill_(1.0)
                else:  # biases and the CLS token start at zero (W_pos is a W_: normal, above)
                    p.zero_()

    # ================================================================== forward
    @_checks_finite_output
    def forward(
        self,
        pixel_values: PixelValues | Float[torch.Tensor, "batch n_ctx d_model"],
        return_type: str | None = "logits",
        *,
        labels: ClassIndices | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        from_resid_mid: bool = False,
        query_positions: Sequence[int] | None = None,
    ) -> (
        Float[torch.Tensor, "batch n_classes"]
        | Float[torch.Tensor, "batch n_ctx d_model"]
        | Float[torch.Tensor, ""]
        | tuple
        | None
    ):
        """Logits [batch, n_classes].

        ``return_type`` as in TransformerLens: ``"logits"`` (default), ``"loss"`` (mean cross-entropy
        against ``labels``, class indices or names, one per batch row or one for all), ``"both"``
        (logits, loss) or None (runs the hooks, returns nothing). A scalar loss is what
        ``run_with_cache(..., incl_bwd=True)`` calls ``.backward()`` on.

        ``stop_at_layer=L`` returns the residual stream entering block L (blocks L.. are skipped);
        ``start_at_layer=L`` takes that residual stream [batch, n_ctx, d_model] instead of pixels
        and runs blocks L... A model without classifier returns the pooled embedding [batch, d_model]
        (ViViT: HF's ``last_hidden_state[:, 0]``; VideoMAE: fc_norm of the token mean).

        Partial blocks, for work that reads only part of the output (activation patching):
        ``from_resid_mid=True`` (with ``start_at_layer=L``) takes block L's resid_mid and runs only
        its MLP half; ``query_positions`` makes the last block run compute only those rows (attention
        queries and MLP; keys and values from every token), so a stopped run returns
        [batch, len(query_positions), d_model] and the logits need the readout token 0 among them.
        A hook on work such a run skips or computes only in part raises (see ``partial_run_hooks``)."""
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if return_type in ("loss", "both") and labels is None:
            raise ValueError(
                f"return_type={return_type!r} needs labels= (the target class of each clip, an index or a name)"
            )
        if start_at_layer is None:
            if from_resid_mid:
                raise ValueError("from_resid_mid=True takes a block's resid_mid: give start_at_layer=<that block>")
            x = self.validate_input(pixel_values)
            resid = self.embed_input(x)
            start_at_layer = 0
        else:
            resid = self._validate_resid(pixel_values, start_at_layer)
        blocks = self.blocks[start_at_layer:stop_at_layer]
        partial = from_resid_mid or query_positions is not None
        if partial:
            query_positions = self._check_partial_run(
                start_at_layer, len(blocks), from_resid_mid, query_positions, pools=stop_at_layer is None
            )
        for i, block in enumerate(blocks):
            if not partial:
                resid = block(resid)
                continue
            resid = block(
                resid,
                from_resid_mid=from_resid_mid and i == 0,
                query_positions=query_positions if i == len(blocks) - 1 else None,
            )
        if stop_at_layer is not None:
            return resid
        logits = self.readout_logits(resid, query_positions)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, labels)  # type: ignore[arg-type]
        return loss if return_type == "loss" else (logits, loss)

    _locating_non_finite = False

    def _non_finite_message(self, forward: Callable, args: tuple, kwargs: dict, logits: torch.Tensor) -> str:
        n_bad = int((~torch.isfinite(logits)).sum())
        x = args[0] if args else kwargs.get("pixel_values")
        dtype = str(self.W_E.dtype).removeprefix("torch.")
        msg = f"the model's output holds {n_bad} NaN/Inf values of {logits.numel()} although its input is finite"
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
            msg += f" (largest |input| {float(x.detach().abs().max()):.3g})"
        first: list[str] = []

        def spot(act: torch.Tensor, hook: HookPoint) -> None:
            if (
                not first
                and isinstance(act, torch.Tensor)
                and act.is_floating_point()
                and not torch.isfinite(act).all()
            ):
                first.append(hook.name)

        self._locating_non_finite = True
        try:  # rerun with a check on every hook that fires, in the order they fire
            with torch.no_grad(), self.hooks(fwd_hooks=[(n, spot) for n in self.hook_dict if self._fires(n)]):
                forward(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - a run that cannot take the checks (a partial-block run): no location
            first.clear()
        finally:
            self._locating_non_finite = False
        if first:
            msg += f"; the activations first go non-finite at {first[0]!r}"
        return (
            msg + f". Values beyond {dtype}'s range ({torch.finfo(self.W_E.dtype).max:.3g}) overflow: preprocessed "
            "pixels lie in [-3, 1] (hooked_vivit.video.preprocess); or the weights or a hook produce NaN/Inf there"
        )

    def readout_logits(
        self, resid: Float[torch.Tensor, "batch rows d_model"], query_positions: Sequence[int] | None = None
    ) -> Float[torch.Tensor, "batch n_classes"]:
        """The last block's output -> logits (a backbone: the pooled embedding): the final norm of the
        pooled tokens (token 0, or the token mean), then the classifier. ``query_positions``: the rows
        ``resid`` holds (a last block run for those rows only), token 0 among them."""
        norm = self.ln_final if self.ln_final is not None else (lambda r: r)
        if self.cfg.pooling == "mean":
            pooled = norm(resid.mean(1))
        else:
            pooled = norm(resid)[:, 0 if query_positions is None else list(query_positions).index(0)]
        return self.unembed(pooled) if self.unembed is not None else pooled

    def loss_fn(self, logits: Float[torch.Tensor, "batch n_classes"], labels: ClassIndices) -> Float[torch.Tensor, ""]:
        """Mean cross-entropy of the logits against class indices or names (one, or one per row)."""
        if self.unembed is None:
            raise ValueError("a loss needs a classifier head; this model is a backbone (it returns the CLS embedding)")
        target = self.class_index(labels).to(logits.device)
        if target.ndim == 0:
            target = target.expand(logits.shape[0])
        if target.shape != logits.shape[:1]:
            raise ValueError(
                f"labels must be one class or one per batch row ({logits.shape[0]}), got shape {tuple(target.shape)}"
            )
        return torch.nn.functional.cross_entropy(logits.float(), target)

    def attention_rows(
        self, pixel_values: PixelValues, queries: Any = "cls", layers: Sequence[int] | None = None
    ) -> Float[torch.Tensor, "batch layers heads n_queries n_ctx"]:
        """Attention pattern rows of the ``queries`` positions ("cls", a token list, FrameSlot,
        Region ...) for every head of ``layers``, at fused-attention cost: ``[:, l, :, 0]`` with
        the default CLS query equals ``cache["pattern", l][:, :, 0]``. See hooked_vivit.attention_rows."""
        from hooked_vivit.attention_rows import attention_rows

        return attention_rows(self, pixel_values, queries, layers)

    def partial_run_hooks(
        self, start_at_layer: int, n_blocks: int, from_resid_mid: bool, query_positions: Sequence[int] | None
    ) -> list[str]:
        """Hook points holding hooks that a run of ``n_blocks`` blocks from ``start_at_layer`` with these
        partial-block arguments would skip (the attention half of a run from resid_mid) or feed only
        some rows (the last block's, but its resid_pre, and ln_final's under ``query_positions``)."""
        names = []
        if from_resid_mid and n_blocks:
            block = self.blocks[start_at_layer]
            names += [
                f"blocks.{start_at_layer}.{n}"
                for n, m in block.named_modules()
                if isinstance(m, HookPoint) and m.has_hooks() and n.split(".")[0] not in block.mlp_half
            ]
        if query_positions is not None and n_blocks:
            last = start_at_layer + n_blocks - 1
            names += [
                f"blocks.{last}.{n}"
                for n, m in self.blocks[last].named_modules()
                if isinstance(m, HookPoint) and m.has_hooks() and n != "hook_resid_pre"
            ]
            if self.ln_final is not None:
                names += [
                    f"ln_final.{n}"
                    for n, m in self.ln_final.named_modules()
                    if isinstance(m, HookPoint) and m.has_hooks()
                ]
        return list(dict.fromkeys(names))

    @property
    def runs_partial_blocks(self) -> bool:
        """Whether forward takes ``from_resid_mid`` / ``query_positions`` (its own forward, blocks that run in part)."""
        return type(self).forward is HookedVideoTransformer.forward and all(
            getattr(b, "runs_partially", False) for b in self.blocks
        )

    def readout_row_suffices(self, start_at_layer: int = 0, from_resid_mid: bool = False) -> bool:
        """Whether a run of blocks ``start_at_layer``.. may compute only token 0 in its last block and still
        give the logits (``query_positions=[0]``): at least one block runs, the blocks run in part, and
        forward would accept it (pooling "first", no rotary positions, no hook on work such a run skips
        or feeds one row)."""
        L = self.cfg.n_layers
        first = max(start_at_layer, 0)
        if first >= L or not self.runs_partial_blocks:
            return False
        try:
            self._check_partial_run(first, L - first, from_resid_mid, [0], pools=True)
        except ValueError:
            return False
        return True

    def _check_partial_run(
        self, start: int, n_blocks: int, from_resid_mid: bool, query_positions: Sequence[int] | None, pools: bool
    ) -> list[int] | None:
        """Clear errors for partial-block arguments this model or run cannot honour; the query positions as a list."""
        if n_blocks == 0:
            raise ValueError(
                "from_resid_mid and query_positions act on the blocks a run runs, and this run runs none "
                f"(start_at_layer={start})"
            )
        used = [self.blocks[start]] if from_resid_mid else []
        used += [self.blocks[start + n_blocks - 1]] if query_positions is not None else []
        for block in used:
            if not getattr(block, "runs_partially", False):
                raise ValueError(
                    f"{type(block).__name__} runs only whole: from_resid_mid and query_positions need a block "
                    "that can run its MLP half alone and compute some query rows (TransformerBlock)"
                )
        if query_positions is not None:
            query_positions = [int(p) for p in query_positions]
            if not query_positions or len(set(query_positions)) != len(query_positions):
                raise ValueError(f"query_positions must be distinct token positions, got {query_positions}")
            bad = [p for p in query_positions if not 0 <= p < self.cfg.n_ctx]
            if bad:
                raise ValueError(f"query_positions {bad} are outside 0..{self.cfg.n_ctx - 1}")
            if pools and (self.cfg.pooling != "first" or 0 not in query_positions):
                raise ValueError(
                    f"query_positions {query_positions}: the logits read token 0 (pooling {self.cfg.pooling!r}); "
                    "they need pooling 'first' and token 0 among the query positions (or stop_at_layer, for the rows)"
                )
            if type(used[-1].attn).position_qk is not Attention.position_qk:
                raise ValueError(
                    "query_positions: this attention rotates q and k by position, which a run of some query rows does not follow"
                )
        skipped = self.partial_run_hooks(start, n_blocks, from_resid_mid, query_positions)
        if skipped:
            raise ValueError(
                f"hooks on {skipped} would not fire (or see only some rows) in this partial-block run "
                "(from_resid_mid / query_positions); remove them or run the whole blocks"
            )
        return query_positions

    def _validate_resid(self, resid: Any, layer: int) -> torch.Tensor:
        expected = (self.cfg.n_ctx, self.cfg.d_model)
        if not isinstance(resid, torch.Tensor) or resid.ndim != 3 or tuple(resid.shape[1:]) != expected:
            got = tuple(resid.shape) if isinstance(resid, torch.Tensor) else type(resid).__name__
            raise ValueError(
                f"start_at_layer={layer} takes the residual stream [batch, {expected[0]}, {expected[1]}], got {got}"
            )
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
            raise ValueError(
                f"expected {cfg.n_channels} channels at dim 2 {expected}, got shape {tuple(x.shape)}{hint}"
            )
        if B == 0:
            raise ValueError(
                f"pixel_values has batch size 0 (shape {tuple(x.shape)}); give at least one clip {expected}"
            )
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
        # Checked after the cast: a finite fp32 input can overflow the model's fp16 (|x| > 65504).
        # Skipped under torch.func transforms (vmap, grad) and torch.compile, where a
        # data-dependent branch cannot run; the check is for interactive use.
        cast = x.to(device=self.embed.W_E.device, dtype=self.embed.W_E.dtype)
        if not in_function_transform() and not torch.isfinite(cast).all():
            n_bad = int((~torch.isfinite(cast)).sum())
            if torch.isfinite(x).all():
                raise ValueError(
                    f"pixel_values has {n_bad} values that overflow the model's dtype {str(cast.dtype).removeprefix('torch.')} "
                    f"(largest |value| {float(x.abs().max()):.3g}, the dtype's limit {torch.finfo(cast.dtype).max:.3g}); "
                    "preprocessed pixels lie in [-3, 1]: run hooked_vivit.video.preprocess, or use a float32 model"
                )
            raise ValueError(f"pixel_values contains {n_bad} NaN/Inf values")
        return cast

    # ================================================================== TransformerLens glue
    def check_hook_names(self, names: Iterable[Any]) -> None:
        """Unknown names, and hooks that cannot fire under this config, raise HookNameError (the causal
        tools check their hook names with it before running anything)."""
        for name in names:
            if isinstance(name, str):
                if name not in self.hook_dict:
                    raise HookNameError(self._unknown_hook_message(name))
                if not self._fires(name):
                    raise HookNameError(self._dead_hook_message(name))

    def _fires(self, name: str) -> bool:
        try:
            return hook_shape(self.cfg, name, 1) is not None
        except (
            KeyError
        ):  # a hook point attached from outside the layout table (an SAE spliced in): it fires with its module
            return True

    def _dead_hook_message(self, name: str) -> str:
        leaf = name.rsplit(".", 1)[-1]
        switch = hook_layout.lookup(name).switch or "?"
        if leaf == "hook_attn_in" and self.cfg.use_split_qkv_input:
            return (
                f"hook {name!r} cannot fire: with cfg.use_split_qkv_input on, attention reads hook_q/k/v_input instead; "
                "hook those, or set model.cfg.use_split_qkv_input = False and model.cfg.use_attn_in = True"
            )
        return (
            f"hook {name!r} cannot fire: cfg.{switch} is off, so it would never be called (a patch or ablation there "
            f"would change nothing, a cache would stay empty). Turn it on: model.cfg.{switch} = True, or "
            f"{type(self).__name__}.from_pretrained(..., {switch}=True)"
        )

    def _live_filter(self, names_filter: Any) -> Callable[[str], bool]:
        """A names filter (None, a name, a list, or a function) as a function selecting only hooks
        that fire; named hooks that cannot fire raise, and so does a function selecting only such hooks."""
        if names_filter is None:
            return self._fires
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple, set)):
            self.check_hook_names(names_filter)
            wanted = set(names_filter)
            return wanted.__contains__
        if not callable(names_filter):
            raise TypeError(
                f"names_filter must be a hook name, a list of names or a function, got {type(names_filter).__name__}"
            )
        chosen = [n for n in self.hook_dict if names_filter(n)]
        if chosen and not any(self._fires(n) for n in chosen):
            raise HookNameError(
                f"the names filter selects only hooks that cannot fire ({len(chosen)}); "
                + self._dead_hook_message(chosen[0])
            )
        live = {n for n in chosen if self._fires(n)}
        return live.__contains__

    def _checked_hook(self, name: Any, hook: Callable) -> tuple[Any, Callable]:
        tl = _tl_patching_call(hook)
        if tl is not None and tl.position_axes:
            raise ValueError(self._tl_positions_message(tl))
        try:
            if isinstance(name, str):
                self.check_hook_names([name])
            else:
                name = self._live_filter(name)
        except HookNameError as e:
            if tl is None or tl.twin is None:
                raise
            raise HookNameError(
                f"{e} (transformer_lens.patching.{tl.tl_name} adds this hook, for TransformerLens's own models; "
                f"on a video model {tl.twin_hint()})"
            ) from None
        return name, _ReturnChecked(hook)

    def _tl_positions_message(self, tl: _TLPatchingCall) -> str:
        """TransformerLens's patching helpers size the position axes from the input's last dim: for
        [batch, frames, C, H, W] pixels, the width. Its index_df path (what the twins pass) is exact."""
        n, w = self.cfg.n_ctx, tl.input_width
        which = f"only tokens 0..{min(w, n) - 1} of the {n}" if w is not None else "the wrong tokens"
        axes = ", ".join(repr(a) for a in tl.position_axes)
        msg = (
            f"transformer_lens.patching.{tl.tl_name} counts the {axes} axis along the input's last dim, which for "
            f"video pixels [batch, frames, C, H, W] is the width ({w}), not the {n} tokens: it would patch {which} "
            f"and report {w} positions. "
        )
        alternative = "pass index_df=hooked_vivit.causal.patching.video_index_df(model, axes) to count tokens"
        return msg + (f"Instead {tl.twin_hint()}; or {alternative}." if tl.twin else f"Instead {alternative}.")

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

    # TransformerLens's hooks() (behind run_with_hooks and run_with_cache) calls HookPoint.add_hook
    # directly, so the checks sit here and in add_hook: names must exist and fire, returns must fit.
    @contextmanager
    def hooks(self, fwd_hooks=[], bwd_hooks=[], reset_hooks_end=True, clear_contexts=False):  # noqa: B006 (TL's signature)
        fwd = [self._checked_hook(n, h) for n, h in fwd_hooks]
        bwd = [self._checked_hook(n, h) for n, h in bwd_hooks]
        with super().hooks(fwd, bwd, reset_hooks_end, clear_contexts) as model:
            yield model

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:  # noqa: A002
        name, hook = self._checked_hook(name, hook)
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def get_caching_hooks(self, names_filter=None, *args, **kwargs):
        return super().get_caching_hooks(self._live_filter(names_filter), *args, **kwargs)

    def add_caching_hooks(self, names_filter=None, *args, **kwargs):
        return super().add_caching_hooks(self._live_filter(names_filter), *args, **kwargs)

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs: Any
    ):
        """As TransformerLens: returns (logits, ActivationCache). Warns first when the cache would
        not fit in free memory, naming a ``names_filter`` that would. ``incl_bwd=True`` also caches
        gradients (``name + "_grad"``); it backpropagates the forward's output, so pass
        ``return_type="loss", labels=...``."""
        if kwargs.get("incl_bwd"):
            return_type = model_args[1] if len(model_args) > 1 else kwargs.get("return_type", "logits")
            if return_type != "loss":
                raise ValueError(
                    "run_with_cache(incl_bwd=True) calls .backward() on the forward's output, which must be a scalar: "
                    f"pass return_type='loss' and labels=<class of each clip> (got return_type={return_type!r})"
                )
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

    def class_index(self, classes: ClassIndices) -> Int[torch.Tensor, ...]:
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

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[torch.Tensor, " d_model"]:
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

    # TransformerLens's switches for the optional hooks (each a config field read at run time).
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute and expose each head's output, ``blocks.{l}.attn.hook_result`` [B, P, H, d_model]."""
        self.cfg.use_attn_result = bool(use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Separate per-head copies of the residual stream into q, k and v (``hook_q_input`` ...)."""
        if use_split_qkv_input and self.cfg.use_attn_in:
            raise ValueError("use_split_qkv_input and use_attn_in are exclusive; call set_use_attn_in(False) first")
        self.cfg.use_split_qkv_input = bool(use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Expose the MLP's input, ``blocks.{l}.hook_mlp_in`` [B, P, d_model]."""
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """One per-head copy of the residual stream into attention, ``blocks.{l}.hook_attn_in``."""
        if use_attn_in and self.cfg.use_split_qkv_input:
            raise ValueError(
                "use_attn_in and use_split_qkv_input are exclusive; call set_use_split_qkv_input(False) first"
            )
        self.cfg.use_attn_in = bool(use_attn_in)

    def process_weights_(
        self, fold_ln: bool = True, center_writing_weights: bool = True, fold_value_biases: bool = False
    ) -> HookedVideoTransformer:
        """TransformerLens's in-place weight processing, for a model loaded unprocessed (the default).

        Same steps as ``from_pretrained(..., fold_ln=, center_writing_weights=, fold_value_biases=)``
        (hooked_vivit.weight_processing); each leaves the logits unchanged. A step already applied
        is skipped. With fold_ln the LayerNorms lose their parameters (``LNPre``) and are rebuilt, so
        hooks on their hook_scale / hook_normalized go with them. Returns the model."""
        from hooked_vivit import weight_processing

        steps = dict(
            fold_ln=fold_ln and not self.cfg.folded_ln,
            center_writing_weights=center_writing_weights and not self.cfg.centered_writing_weights,
            fold_value_biases=fold_value_biases and not self.cfg.folded_value_biases,
        )
        if not any(steps.values()):
            return self
        p = next(self.parameters())
        sd, new_cfg = weight_processing.process_weights(self.state_dict(), self.cfg, **steps)
        # Every component holds this cfg object, so update it in place rather than replace it.
        for f in dataclasses.fields(new_cfg):
            setattr(self.cfg, f.name, getattr(new_cfg, f.name))
        if steps["fold_ln"]:  # parameter-free LNPre modules in place of the LN ones
            for block in self.blocks:
                block.ln1, block.ln2 = LayerNorm(self.cfg), LayerNorm(self.cfg)
                if hasattr(block, "ln_temporal"):  # TimeSformer's third LayerNorm
                    block.ln_temporal = LayerNorm(self.cfg)
            self.ln_final = LayerNorm(self.cfg, eps=self.cfg.final_norm_eps) if self.cfg.final_norm else None
            self.setup()
        self.load_state_dict(sd, strict=True)
        return self.to(p.device)

    # ================================================================== token labels
    def token_labels(self) -> list[str]:
        """One label per token for plots and circuitsvis: ``"CLS"``, then ``"t{slot} r{row} c{col}"``
        (frame slot, grid row, grid column; TokenGrid.label)."""
        grid = self.cfg.grid
        return [grid.label(i) for i in range(grid.n_ctx)]

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
    def b_U(self) -> Float[torch.Tensor, " n_classes"]:
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
        return f"{type(self).__name__}({n_params / 1e6:.1f}M params, {len(self.hook_dict)} hooks)\n  {self.cfg!r}"

    # ================================================================== loading and saving
    @classmethod
    def _architecture(cls, hf_config: dict[str, Any]) -> type[HookedVideoTransformer]:
        """The class for a config.json's model_type: this class, or (called on the base) the registered one."""
        model_type = hf_config.get("model_type", cls.model_type or "vivit")
        if model_type not in HookedVideoTransformer.architectures:
            raise ValueError(
                f"model_type {model_type!r} is not supported; supported: {sorted(HookedVideoTransformer.architectures)}"
            )
        target = HookedVideoTransformer.architectures[model_type]
        if cls.model_type is not None and target is not cls:
            raise ValueError(
                f"a {model_type!r} checkpoint is a {target.__name__}, not a {cls.__name__}: load it with "
                f"{target.__name__}.from_pretrained or HookedVideoTransformer.from_pretrained (which picks by model_type)"
            )
        return target

    @classmethod
    def checkpoint_overrides(cls, state_dict: dict[str, torch.Tensor], hf_config: dict[str, Any]) -> dict[str, Any]:
        """Config fields that the checkpoint's keys decide and config.json does not say (an
        architecture overrides this); the backbone's n_classes = 0 is handled for all."""
        return {}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> HookedVideoTransformer:
        """Load a checkpoint: a local HF directory (config.json + model.safetensors, sharded
        safetensors, or pytorch_model.bin) or a hub id such as ``google/vivit-b-16x2-kinetics400``
        (the local HF cache is tried first). The class follows config.json's ``model_type``
        (on HookedVideoTransformer; a subclass refuses another architecture's checkpoint).

        Keywords (see ``from_state_dict``): ``device``, ``dtype``, ``fold_ln``,
        ``center_writing_weights``, ``fold_value_biases``, and config switches such as
        ``use_attn_result=True``."""
        from hooked_vivit.loading import load_checkpoint

        hf_config, state_dict = load_checkpoint(name_or_path)
        return cls.from_state_dict(state_dict, hf_config, **kwargs)

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module, **kwargs: Any) -> HookedVideoTransformer:
        """Convert a live ``transformers`` model (VivitForVideoClassification / VivitModel,
        VideoMAEForVideoClassification / VideoMAEModel)."""
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
    ) -> HookedVideoTransformer:
        from hooked_vivit import weight_processing

        arch = cls._architecture(hf_config)
        if arch is not cls and "from_state_dict" in vars(arch):  # the architecture's own loading steps (VideoPrism)
            return arch.from_state_dict(
                state_dict,
                hf_config,
                device=device,
                dtype=dtype,
                fold_ln=fold_ln,
                center_writing_weights=center_writing_weights,
                fold_value_biases=fold_value_biases,
                **cfg_overrides,
            )
        _refuse_integer_tensors(state_dict, arch)
        if not checkpoint_has_classifier(state_dict):
            cfg_overrides.setdefault("n_classes", 0)  # a backbone checkpoint
            cfg_overrides.setdefault("id2label", {})
        for key, value in arch.checkpoint_overrides(state_dict, hf_config).items():
            cfg_overrides.setdefault(key, value)
        cfg = arch.config_class.from_hf_config(hf_config, device="cpu", **cfg_overrides)
        hooked = converter(arch.model_type).to_hooked(state_dict, cfg)  # type: ignore[arg-type]
        hooked, cfg = weight_processing.process_weights(
            hooked,
            cfg,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            fold_value_biases=fold_value_biases,
        )
        target_dtype = to_dtype(dtype) or cfg.dtype
        cfg.dtype = torch.float32  # build in fp32, cast once at the end
        model = arch(cfg, init_weights=False)
        model.load_state_dict(hooked, strict=True)
        return model.to(device=device or "cpu", dtype=target_dtype)

    def save_pretrained(self, path: str | Path, *, layout: str = "transformers", overwrite: bool = False) -> Path:
        """Write config.json + model.safetensors. ``layout="transformers"`` (HF keys, loadable by
        transformers too), ``"hub"`` (the original hub checkpoint's keys) or ``"hooked"`` (this
        model's own parameter names). The directory appears whole or not at all."""
        from hooked_vivit.loading import save_checkpoint

        return save_checkpoint(self, Path(path), layout=layout, overwrite=overwrite)


class HookedViViT(HookedVideoTransformer):
    """ViViT model 1 (``transformers.VivitForVideoClassification`` / ``VivitModel``): CLS token,
    learned position embeddings, classifier on the final-LayerNorm CLS token."""

    config_class = HookedViViTConfig
    model_type = "vivit"
