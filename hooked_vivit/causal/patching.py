"""Activation patching for video models.

Two layers:

1. Twins of ``transformer_lens.patching``'s helpers, with the same names and argument order
   (``get_act_patch_resid_pre(model, corrupted_video, clean_cache, metric)`` ...). They call
   TransformerLens's own ``generic_activation_patch`` with an explicit ``index_df`` whose positions
   are the model's tokens: TransformerLens would otherwise take the position count from
   ``input.shape[-1]``, which for a video [B, T, C, H, W] is the pixel width. One patched forward
   per cell, exactly as TransformerLens runs them.

2. A batched engine (``run_patches``) for the sweeps a video study needs: a patch is a hook plus a
   group of token positions (a token, a frame slot, a box on the token grid, CLS, everything) and
   optionally a head. k patched variants run as one batched forward (each batch row carries its
   own patch), starting from the first patched layer (the residual stream before it is shared),
   in chunks sized from free memory. Denoising (clean into corrupted) and noising (corrupted into
   clean) are the same call with source and target swapped. A patch of the residual stream or of
   a block's attn_out / mlp_out is applied to the stream the run starts from, so the run starts
   after what it replaces (mlp_out at layer l: at block l + 1; attn_out: at block l's MLP); and a
   metric that reads only the logits of a first-token readout has the last block compute only
   that row (keys and values from every token). Same numbers, fewer FLOPs
   (HookedVideoTransformer.forward's ``from_resid_mid`` and ``query_positions``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from transformer_lens import ActivationCache
from transformer_lens import patching as tl_patching
from transformer_lens.hook_points import HookPoint
from transformer_lens.patching import generic_activation_patch, make_df_from_ranges

from hooked_vivit.cache_memory import free_bytes, hook_shape
from hooked_vivit.causal.metrics import Metric, metric_rows
from hooked_vivit.compat import HAS_DIRECT_PATH, TL_VERSION_STRING, PatchingResult
from hooked_vivit.components import hook_layout
from hooked_vivit.positions import FrameSlot, PositionGroup, Region, resolve_positions  # noqa: F401  (re-exported: patching.Region ...)
from hooked_vivit.positions import checked_index as _index
from hooked_vivit.tensor_types import PixelValues

if TYPE_CHECKING:  # annotations only: the causal tools take any HookedVideoTransformer (ViViT, VideoMAE, ...)
    from hooked_vivit.model import HookedVideoTransformer

# =========================================================================================== patch specs
_LAYER = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Patch:
    """Replace ``hook``'s activation at ``positions`` (None = all; for attention patterns these
    are query positions), and only ``head`` when given, with the source run's."""

    hook: str
    positions: tuple[int, ...] | None = None
    head: int | None = None
    label: str = ""

    def start_layer(self, n_layers: int) -> int:
        """The first block this patch touches: -1 for the embeddings, n_layers for ln_final."""
        m = _LAYER.match(self.hook)
        if m:
            return int(m.group(1))
        return n_layers if self.hook.startswith("ln_final") else -1


def _full_name(act: str, layer: int) -> str:
    from transformer_lens.utilities import get_act_name

    return get_act_name(act, layer)


def component_patches(
    model: HookedVideoTransformer,
    components: Sequence[str] = ("attn_out", "mlp_out"),
    layers: Iterable[int] | None = None,
    positions: PositionGroup = None,
) -> list[Patch]:
    """Whole components (the reference paper's Figure 2): each layer's attention block and MLP
    block output, at all (or the given) positions."""
    pos = resolve_positions(model, positions)
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [Patch(_full_name(c, l), pos, label=f"L{l} {c}") for l in layers for c in components]


def head_patches(
    model: HookedVideoTransformer, act: str = "z", layers: Iterable[int] | None = None, positions: PositionGroup = None
) -> list[Patch]:
    """One patch per (layer, head) of ``act`` (z, q, k, v, result or pattern)."""
    pos = resolve_positions(model, positions)
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [
        Patch(_full_name(act, l), pos, head=h, label=f"L{l}H{h} {act}")
        for l in layers
        for h in range(model.cfg.n_heads)
    ]


def frame_slot_patches(
    model: HookedVideoTransformer, act: str = "resid_pre", layers: Iterable[int] | None = None
) -> list[Patch]:
    """One patch per (layer, frame slot): all patch tokens of that tubelet time index."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [
        Patch(_full_name(act, l), resolve_positions(model, FrameSlot(t)), label=f"L{l} {act} t{t}")
        for l in layers
        for t in range(model.cfg.grid.n_frame_slots)
    ]


def token_patches(
    model: HookedVideoTransformer,
    act: str = "resid_pre",
    layers: Iterable[int] | None = None,
    positions: Iterable[int] | None = None,
) -> list[Patch]:
    """One patch per (layer, token)."""
    layers = range(model.cfg.n_layers) if layers is None else layers
    positions = (
        range(model.cfg.n_ctx)
        if positions is None
        else [_index(p, model.cfg.n_ctx, "token position") for p in positions]
    )
    return [Patch(_full_name(act, l), (p,), label=f"L{l} {act} pos{p}") for l in layers for p in positions]


# =========================================================================================== engine
# A patch of one of these hooks at layer l is applied to the stream a patched run starts from:
# kind -> (the unpatched stream the patched activation is added to, or None: it is the stream;
# first block run, as an offset to l; whether the run starts at that block's resid_mid).
_STREAM_PATCHES = {
    "resid_pre": (None, 0, False),
    "resid_mid": (None, 0, True),
    "attn_out": ("resid_pre", 0, True),  # resid_mid = resid_pre + attn_out
    "mlp_out": ("resid_mid", 1, False),  # resid_post = resid_mid + mlp_out
    "resid_post": (None, 1, False),
}
_STREAM_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(" + "|".join(_STREAM_PATCHES) + r")$")
_SUMMED = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post)$")


@dataclass(frozen=True)
class _Start:
    """Where a patched run starts: its first block (-1: from pixels, n_layers: no block), from that
    block's resid_mid or not, and whether the patch is applied to the starting stream (else by its hook)."""

    layer: int
    from_resid_mid: bool = False
    in_stream: bool = False


def _stream_start(model: HookedVideoTransformer, patch: Patch, metric_hooks: Sequence[str]) -> _Start | None:
    """The start of a run with ``patch`` applied to the stream, or None where it must run by hook: the
    model cannot run part of a block, a hook on the skipped work of the patched block, or a metric
    hook the run would not reach."""
    m = _STREAM_HOOK.match(patch.hook)
    if m is None or not model.runs_partial_blocks:
        return None
    l, kind = int(m.group(1)), m.group(2)
    _, offset, from_mid = _STREAM_PATCHES[kind]
    start = _Start(l + offset, from_mid, True)
    block = model.blocks[l]
    if model.hook_dict[patch.hook].has_hooks():  # by hook, a user's hook there fires before the patch
        return None
    if offset and any(isinstance(h, HookPoint) and h.has_hooks() for h in block.modules()):
        return None
    if from_mid and model.partial_run_hooks(l, 1, True, None):
        return None
    return start if all(_reached(model, h, start) for h in metric_hooks) else None


def _reached(model: HookedVideoTransformer, name: str, start: _Start) -> bool:
    """Whether hook ``name`` fires in a run from ``start``, or is the stream it starts from."""
    m = _LAYER.match(name)
    if m is None:
        return name.startswith(("ln_final.", "unembed."))
    l = int(m.group(1))
    if l == start.layer - 1 and not start.from_resid_mid:
        return name == f"blocks.{l}.hook_resid_post"
    if l != start.layer or not start.from_resid_mid:
        return l >= start.layer
    return name[len(f"blocks.{l}.") :].split(".")[0] in model.blocks[l].mlp_half


def _target_value(cache: Any, name: str) -> torch.Tensor | None:
    """The unpatched target's activation ``name`` from its cache, or summed as the block sums it
    (resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out = the next resid_pre)."""
    if name in cache:
        return cache[name]
    m = _SUMMED.match(name)
    if m is None:
        return None
    l, kind = int(m.group(1)), m.group(2)
    if kind == "resid_pre":
        return cache[f"blocks.{l - 1}.hook_resid_post"] if f"blocks.{l - 1}.hook_resid_post" in cache else None
    if kind == "resid_post" and f"blocks.{l + 1}.hook_resid_pre" in cache:
        return cache[f"blocks.{l + 1}.hook_resid_pre"]
    first, second = ("resid_pre", "attn_out") if kind == "resid_mid" else ("resid_mid", "mlp_out")
    a, b = _target_value(cache, f"blocks.{l}.hook_{first}"), _target_value(cache, f"blocks.{l}.hook_{second}")
    return None if a is None or b is None else a + b


def _stream_names(patch: Patch) -> list[str]:
    """The target activations a stream patch is built from."""
    m = _STREAM_HOOK.match(patch.hook)
    base = _STREAM_PATCHES[m.group(2)][0]
    return ([f"blocks.{m.group(1)}.hook_{base}"] if base else []) + [patch.hook]


def _patched_stream(patch: Patch, source_cache: Any, target: dict[str, torch.Tensor], b: int) -> torch.Tensor:
    """The stream a run with ``patch`` starts from [b, n_ctx, d_model], with the arithmetic of the block
    (the patched component, added to the unpatched stream it is added to there)."""
    *base, name = _stream_names(patch)
    tgt = target[name]
    src = source_cache[name].to(tgt.device, tgt.dtype)
    if src.shape[1:] != tgt.shape[1:]:
        raise ValueError(f"source activation {name} has shape {tuple(src.shape)}, the target run {tuple(tgt.shape)}")
    src = src.expand(b, *src.shape[1:])
    if patch.positions is None:
        patched = src
    else:
        patched = tgt.clone()
        patched[:, list(patch.positions)] = src[:, list(patch.positions)]
    return target[base[0]] + patched if base else patched


def _readout_rows(
    model: HookedVideoTransformer, metric_hooks: Sequence[str], start: _Start, hooked_layers: set[int]
) -> list[int] | None:
    """[0] where the last block need compute only the readout row: the metric reads only the logits, the
    model reads token 0, and no hook (the chunk's patches, or the user's) sits in that block or after it."""
    L = model.cfg.n_layers
    if metric_hooks or L - 1 in hooked_layers or L in hooked_layers:
        return None
    return [0] if model.readout_row_suffices(start.layer, start.from_resid_mid) else None


def _is_pattern(hook: str) -> bool:
    return hook_layout.is_attention_map(hook)


def _head_axis(hook: str, cfg: Any = None) -> int | None:
    return hook_layout.head_axis(hook, cfg)  # [batch, head, query, key] or [batch, pos, head, ...]


def _pos_axis(hook: str, cfg: Any = None) -> int | None:
    return hook_layout.pos_axis(hook, cfg)  # an attention map's query axis


def _rows_per_clip(model: HookedVideoTransformer, hook: str) -> int:
    """Leading-axis rows per clip: 1, or frames / positions for TimeSformer's attention hooks,
    which batch over [batch * frames] or [batch * positions] (clip-major)."""
    shape = hook_shape(model.cfg, hook, 1)
    return shape[0] if shape else 1


def check_cache(model: HookedVideoTransformer, cache: ActivationCache | dict, hooks: Iterable[str], batch: int) -> None:
    """A clear error for a cache from another model, missing hooks, or an incompatible batch."""
    cache_model = getattr(cache, "model", None)
    if cache_model is not None and cache_model is not model:
        a, b = cache_model.cfg, model.cfg
        fields = ("n_layers", "n_heads", "d_model", "n_ctx", "num_frames", "image_size", "tubelet_size")
        diff = [
            f"{f}: cache {getattr(a, f)} vs model {getattr(b, f)}" for f in fields if getattr(a, f) != getattr(b, f)
        ]
        if diff:
            raise ValueError("the cache comes from a model of another shape: " + "; ".join(diff))
    for hook in hooks:
        try:
            act = cache[hook]
        except KeyError:
            raise ValueError(f"the source cache lacks {hook!r}; cache it (names_filter) before patching") from None
        per = _rows_per_clip(model, hook)
        if act.shape[0] not in (per, per * batch):
            raise ValueError(
                f"the source cache has batch {act.shape[0] // per} at {hook!r}, the target run has {batch}: use batch 1 or the same batch"
            )


def auto_chunk_size(
    model: HookedVideoTransformer, rows_per_patch: int, device: torch.device, needs_pattern: bool
) -> int:
    """How many patched variants fit in one batched forward, from free memory (half of it)."""
    cfg = model.cfg
    elem = torch.finfo(cfg.dtype).bits // 8
    per_row = cfg.n_ctx * (cfg.d_mlp + 6 * cfg.d_model) * elem  # live activations of one block
    if needs_pattern:
        per_row += 2 * cfg.n_heads * cfg.n_ctx * cfg.n_ctx * elem
    return max(1, int(free_bytes(device) * 0.5 // (per_row * rows_per_patch)))


@dataclass
class SweepResult:
    """Values of a sweep: ``values[i]`` belongs to ``patches[i]`` (mean over the target batch;
    ``per_example`` keeps [n_patches, batch]; a metric of m values per row adds a last axis of m).
    ``baseline`` is the unpatched target run."""

    values: torch.Tensor
    patches: list[Patch]
    baseline: torch.Tensor
    per_example: torch.Tensor = field(repr=False)

    @property
    def labels(self) -> list[str]:
        return [p.label or f"{p.hook}@{p.positions}h{p.head}" for p in self.patches]

    def to_dict(self) -> dict:
        return {"labels": self.labels, "values": self.values.tolist(), "baseline": self.baseline.tolist()}


def run_patches(
    model: HookedVideoTransformer,
    patches: Sequence[Patch],
    *,
    source_cache: ActivationCache | dict,
    target: PixelValues,
    metric: Callable,
    chunk_size: int | None = None,
    progress: bool | None = None,
    target_run: tuple[torch.Tensor, ActivationCache | dict] | None = None,
) -> SweepResult:
    """Run every patch (source activation into the target run) and score it with ``metric``.

    ``metric(logits)`` or ``metric(logits, activations)`` returns one value per batch row, or one
    row of m values per batch row ([batch, m]: several measures from one sweep; ``values`` is then
    [n_patches, m]); activations it names in ``metric.hooks`` are collected from each patched run.
    The source cache has batch 1 (broadcast to the target batch) or the target's batch.
    ``target_run=(logits, cache)`` of the unpatched target (the target's batch), holding
    ``blocks.{l}.hook_resid_pre`` of every layer a patch starts at (the last resid_post for
    ln_final patches) and the metric's hooks, replaces the engine's own unpatched forward; a patch
    of resid_pre / resid_mid / resid_post / attn_out / mlp_out is built from the unpatched stream
    where the cache holds it (resid_pre, attn_out and mlp_out of that layer are enough) and then
    needs no resid_pre.

    Each patched run starts where the patch first changes something: a hook patch at its layer's
    resid_pre; a residual-stream, attn_out or mlp_out patch past what it replaces (see the module
    docstring), unless a hook (the user's, or the metric's) sits on the work that skips.
    """
    from tqdm.auto import tqdm

    if not patches:
        raise ValueError("no patches to run")
    target = model.validate_input(target)
    b = target.shape[0]
    for p in patches:
        model.check_hook_names([p.hook])
        if p.head is not None and _head_axis(p.hook, model.cfg) is None:
            raise ValueError(f"{p.hook} has no head axis, but the patch names head {p.head}")
        if p.positions is not None and _pos_axis(p.hook, model.cfg) is None:
            raise ValueError(
                f"{p.hook} has no token axis (it fires on the pooled vector), but the patch names positions {p.positions}"
            )
        if p.head is not None:
            _index(p.head, model.cfg.n_heads, f"head of patch {p.label or p.hook!r}")
        if p.positions is not None and len(p.positions) == 0:
            raise ValueError(
                f"patch {p.label or p.hook!r} has an empty position group (positions=None means every token)"
            )
        if p.positions is not None and _rows_per_clip(model, p.hook) > 1:
            raise ValueError(
                f"{p.hook} batches over frames or positions (TimeSformer), so token positions do not index it: "
                "patch it with positions=None (every token, per head) or patch a residual / *_attn_out hook by position"
            )
        for q in p.positions or ():
            _index(q, model.cfg.n_ctx, f"token position of patch {p.label or p.hook!r}")
    check_cache(model, source_cache, {p.hook for p in patches}, b)
    metric_hooks = tuple(getattr(metric, "hooks", ()))
    model.check_hook_names(metric_hooks)
    n_layers = model.cfg.n_layers

    # Where each patched run starts: after what a stream patch replaces, else at the patched layer.
    stream = [_stream_start(model, p, metric_hooks) for p in patches]
    hook_start = lambda l: f"blocks.{l}.hook_resid_pre" if l < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"  # noqa: E731
    with torch.inference_mode():
        if target_run is None:
            names = [n for p, st in zip(patches, stream) if st for n in _stream_names(p)]
            names += [
                hook_start(p.start_layer(n_layers))
                for p, st in zip(patches, stream)
                if st is None and p.start_layer(n_layers) >= 0
            ]
            names += list(metric_hooks)
            base_logits, base_cache = model.run_with_cache(target, names_filter=list(dict.fromkeys(names)))
        else:
            base_logits, base_cache = target_run
        # A stream patch the target run's cache cannot build runs by hook.
        target_values: dict[str, torch.Tensor] = {}
        for i, p in enumerate(patches):
            if stream[i] is None:
                continue
            values = {n: _target_value(base_cache, n) for n in _stream_names(p)}
            if all(v is not None and v.shape[0] == b for v in values.values()):
                target_values.update(values)
            else:
                stream[i] = None
        start_names = {
            l: hook_start(l)
            for l in sorted({p.start_layer(n_layers) for p, st in zip(patches, stream) if st is None})
            if l >= 0
        }
        for name in dict.fromkeys([*start_names.values(), *metric_hooks]):
            if name not in base_cache or base_cache[name].shape[0] != b:
                raise ValueError(
                    f"target_run's cache needs {name!r} of the unpatched target run (batch {b}); cache it (names_filter)"
                )
        baseline = metric_rows(metric, base_logits, {h: base_cache[h] for h in metric_hooks}).float().cpu()
    starts = {l: base_cache[name] for l, name in start_names.items()}
    runs = [st or _Start(p.start_layer(n_layers)) for p, st in zip(patches, stream)]

    key = lambda i: (runs[i].layer, runs[i].from_resid_mid, runs[i].in_stream)  # noqa: E731
    order = sorted(range(len(patches)), key=key)
    needs_pattern = any(_is_pattern(p.hook) for p, st in zip(patches, stream) if st is None)
    k_max = chunk_size or auto_chunk_size(model, b, target.device, needs_pattern)
    per_example = torch.empty(len(patches), b, *baseline.shape[1:])
    bar = tqdm(
        total=len(patches), desc="patching", disable=not (progress if progress is not None else len(patches) > 4)
    )
    i = 0
    while i < len(order):
        chunk = [order[i]]
        while len(chunk) < k_max and i + len(chunk) < len(order) and key(order[i + len(chunk)]) == key(order[i]):
            chunk.append(order[i + len(chunk)])
        start = runs[order[i]]
        if start.in_stream:
            resid = torch.cat([_patched_stream(patches[j], source_cache, target_values, b) for j in chunk])
        elif start.layer >= 0:
            resid = starts[start.layer].repeat(len(chunk), 1, 1)
        else:
            resid = None  # from the pixels
        values = _run_chunk(
            model, [patches[j] for j in chunk], source_cache, target, resid, start, metric, metric_hooks
        )
        per_example[chunk] = values
        bar.update(len(chunk))
        i += len(chunk)
    bar.close()
    return SweepResult(
        values=per_example.mean(1), patches=list(patches), baseline=baseline.mean(0), per_example=per_example
    )


def _run_chunk(
    model, chunk: list[Patch], source_cache, target, resid, start: _Start, metric, metric_hooks
) -> torch.Tensor:
    b, k = target.shape[0], len(chunk)
    n_layers = model.cfg.n_layers
    by_hook: dict[str, list[tuple[int, Patch]]] = {}
    for r, p in enumerate(chunk):
        if not start.in_stream:
            by_hook.setdefault(p.hook, []).append((r, p))

    def patch_hook(act: torch.Tensor, hook, entries) -> torch.Tensor:
        src = source_cache[hook.name].to(act.device, act.dtype)
        if src.shape[1:] != act.shape[1:]:
            raise ValueError(
                f"source activation {hook.name} has shape {tuple(src.shape)}, the target run {tuple(act.shape)}"
            )
        per = act.shape[0] // (k * b)  # rows per clip: 1, or TimeSformer's frames / positions
        src = src.repeat(b, *[1] * (src.ndim - 1)) if src.shape[0] == per and b > 1 else src
        pos_axis, head_axis = _pos_axis(hook.name, model.cfg), _head_axis(hook.name, model.cfg)
        for r, p in entries:
            rows = slice(r * b * per, (r + 1) * b * per)
            index: list[Any] = [rows] + [slice(None)] * (act.ndim - 1)
            if p.positions is not None:
                index[pos_axis] = list(p.positions)
            if p.head is not None:
                index[head_axis] = p.head
            act[tuple(index)] = src[tuple([slice(None)] + index[1:])]
        return act

    collected: dict[str, torch.Tensor] = {}

    def collect(act, hook, name):
        collected[name] = act

    # The stream a run starts from is the previous block's resid_post: read there, it is the start.
    entering = f"blocks.{start.layer - 1}.hook_resid_post" if start.in_stream and not start.from_resid_mid else None
    fwd = [(name, partial(patch_hook, entries=entries)) for name, entries in by_hook.items()]
    for h in metric_hooks:
        if h == entering and start.layer == n_layers:
            collected[h] = resid
        else:
            fwd.append((f"blocks.{start.layer}.hook_resid_pre" if h == entering else h, partial(collect, name=h)))
    hooked_layers = {p.start_layer(n_layers) for p in chunk} if by_hook else set()
    rows = _readout_rows(model, metric_hooks, start, hooked_layers)
    partial_args = {"query_positions": rows} if rows else {}
    if start.from_resid_mid:
        partial_args["from_resid_mid"] = True
    with torch.inference_mode(), model.hooks(fwd_hooks=fwd):
        if resid is None:
            logits = model(target.repeat(k, 1, 1, 1, 1), **partial_args)
        else:
            logits = model(resid, start_at_layer=max(start.layer, 0), **partial_args)
    values = metric_rows(metric, logits, collected).float().cpu()
    if values.ndim not in (1, 2) or values.shape[0] != k * b:
        raise ValueError(
            f"the metric must return one value (or one row of values) per batch row ({k * b}), got shape {tuple(values.shape)}"
        )
    return values.view(k, b, *values.shape[1:])


def denoise(
    model: HookedVideoTransformer,
    patches: Sequence[Patch],
    *,
    clean_cache,
    corrupted: PixelValues,
    metric: Callable,
    **kwargs: Any,
) -> SweepResult:
    """Clean activations into the corrupted run: what restores the clean behaviour?"""
    return run_patches(model, patches, source_cache=clean_cache, target=corrupted, metric=metric, **kwargs)


def noise(
    model: HookedVideoTransformer,
    patches: Sequence[Patch],
    *,
    corrupted_cache,
    clean: PixelValues,
    metric: Callable,
    **kwargs: Any,
) -> SweepResult:
    """Corrupted activations into the clean run: what breaks the clean behaviour?"""
    return run_patches(model, patches, source_cache=corrupted_cache, target=clean, metric=metric, **kwargs)


# =========================================================================================== TL twins
_AXIS_SIZES = {
    "layer": lambda cfg: cfg.n_layers,
    "pos": lambda cfg: cfg.n_ctx,
    "dest_pos": lambda cfg: cfg.n_ctx,
    "src_pos": lambda cfg: cfg.n_ctx,
    "head_index": lambda cfg: cfg.n_heads,
    "head": lambda cfg: cfg.n_heads,
}


def video_index_df(model: HookedVideoTransformer, axes: Sequence[str]) -> pd.DataFrame:
    """TransformerLens's index dataframe with positions counted in tokens, not pixels."""
    return make_df_from_ranges([_AXIS_SIZES[a](model.cfg) for a in axes], list(axes))


def _tl_twin(name: str, patch_setter: Callable, activation_name: str, axes: Sequence[str]) -> Callable:
    tl_function = getattr(tl_patching, name)

    def patch(model, corrupted_video, clean_cache, patching_metric, **kwargs):
        model.validate_input(corrupted_video)
        check_cache(model, clean_cache, [], corrupted_video.shape[0])
        if PatchingResult is None:  # TL 3: no reduce= / baseline=; their defaults are its behaviour
            if kwargs.pop("reduce", "scalar") != "scalar" or kwargs.pop("baseline", False):
                raise TypeError(
                    f"reduce= and baseline= (per-example PatchingResult) need transformer-lens >= 4; installed: {TL_VERSION_STRING}"
                )
        if isinstance(patching_metric, Metric) and kwargs.get("reduce", "scalar") == "scalar":
            patching_metric = patching_metric.mean_over_batch
        index_df = video_index_df(model, axes)
        out = generic_activation_patch(
            model,
            corrupted_video,
            clean_cache,
            patching_metric,
            patch_setter,
            activation_name,
            index_df=index_df,
            **kwargs,
        )
        shape = [_AXIS_SIZES[a](model.cfg) for a in axes]
        if PatchingResult is not None and isinstance(out, PatchingResult):
            lead = 1 if out.has_metric_axis else 0
            out.values = out.values.reshape(*out.values.shape[:lead], *shape, *out.values.shape[lead + 1 :])
            out.axis_names = list(axes)
            return out
        return out.reshape(shape)

    # TransformerLens's helpers are functools.partial objects (named generic_activation_patch);
    # the twin carries the helper's own name and its docstring, read for video.
    patch.__name__ = patch.__qualname__ = name
    patch.__doc__ = (
        f"Video twin of transformer_lens.patching.{name}: same arguments, with ``corrupted_video``\n"
        f"[batch, frames, C, H, W] for ``corrupted_tokens``. Returns [{', '.join(axes)}] with positions\n"
        f"counted in tokens (n_ctx), one patched forward per cell.\n\nTransformerLens's docstring:\n"
        + (tl_function.__doc__ or "")
    )
    return patch


_pos, _head_pos, _head, _pattern_head, _pattern_pos, _pattern_dest_src = (
    tl_patching.layer_pos_patch_setter,
    tl_patching.layer_pos_head_vector_patch_setter,
    tl_patching.layer_head_vector_patch_setter,
    tl_patching.layer_head_pattern_patch_setter,
    tl_patching.layer_head_pos_pattern_patch_setter,
    tl_patching.layer_head_dest_src_pos_pattern_patch_setter,
)
get_act_patch_resid_pre = _tl_twin("get_act_patch_resid_pre", _pos, "resid_pre", ("layer", "pos"))
get_act_patch_resid_mid = _tl_twin("get_act_patch_resid_mid", _pos, "resid_mid", ("layer", "pos"))
get_act_patch_attn_out = _tl_twin("get_act_patch_attn_out", _pos, "attn_out", ("layer", "pos"))
get_act_patch_mlp_out = _tl_twin("get_act_patch_mlp_out", _pos, "mlp_out", ("layer", "pos"))
get_act_patch_attn_head_out_by_pos = _tl_twin(
    "get_act_patch_attn_head_out_by_pos", _head_pos, "z", ("layer", "pos", "head")
)
get_act_patch_attn_head_q_by_pos = _tl_twin(
    "get_act_patch_attn_head_q_by_pos", _head_pos, "q", ("layer", "pos", "head")
)
get_act_patch_attn_head_k_by_pos = _tl_twin(
    "get_act_patch_attn_head_k_by_pos", _head_pos, "k", ("layer", "pos", "head")
)
get_act_patch_attn_head_v_by_pos = _tl_twin(
    "get_act_patch_attn_head_v_by_pos", _head_pos, "v", ("layer", "pos", "head")
)
get_act_patch_attn_head_pattern_by_pos = _tl_twin(
    "get_act_patch_attn_head_pattern_by_pos", _pattern_pos, "pattern", ("layer", "head_index", "dest_pos")
)
get_act_patch_attn_head_pattern_dest_src_pos = _tl_twin(
    "get_act_patch_attn_head_pattern_dest_src_pos",
    _pattern_dest_src,
    "pattern",
    ("layer", "head_index", "dest_pos", "src_pos"),
)
get_act_patch_attn_head_out_all_pos = _tl_twin("get_act_patch_attn_head_out_all_pos", _head, "z", ("layer", "head"))
get_act_patch_attn_head_q_all_pos = _tl_twin("get_act_patch_attn_head_q_all_pos", _head, "q", ("layer", "head"))
get_act_patch_attn_head_k_all_pos = _tl_twin("get_act_patch_attn_head_k_all_pos", _head, "k", ("layer", "head"))
get_act_patch_attn_head_v_all_pos = _tl_twin("get_act_patch_attn_head_v_all_pos", _head, "v", ("layer", "head"))
get_act_patch_attn_head_pattern_all_pos = _tl_twin(
    "get_act_patch_attn_head_pattern_all_pos", _pattern_head, "pattern", ("layer", "head_index")
)


def get_act_patch_direct_path(
    model: HookedVideoTransformer,
    corrupted_video: PixelValues,
    clean_cache: ActivationCache,
    corrupted_cache: ActivationCache,
    patching_metric: Callable,
    src_layer: int,
    src_head: int,
    component: str = "q",
    verbose: bool = True,
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Direct path patching, head (src_layer, src_head) -> each later head's q, k or v input.

    The source head's clean-minus-corrupted write (``z @ W_O``) is added, at every token, to one
    destination head's own copy of the residual stream before ln1 (``blocks.{l}.hook_{component}_input``,
    switched on for the sweep with ``set_use_split_qkv_input`` and restored after); every other
    reader still sees the corrupted write. ``results[l, h]`` is the metric with the path into
    head (l, h) patched; rows ``l <= src_layer`` are 0.0 placeholders. One forward per later head.
    Both caches must hold ``blocks.{src_layer}.attn.hook_z``.

    The twin of ``transformer_lens.patching.get_act_patch_direct_path`` (TransformerLens >= 4, whose
    own version expects the bridge's ``attn.hook_q_input`` names), here for TransformerLens 3 and 4."""
    from tqdm.auto import tqdm

    cfg = model.cfg
    if component not in ("q", "k", "v"):
        raise ValueError(f"component must be 'q', 'k' or 'v', got {component!r}")
    if not (0 <= src_layer < cfg.n_layers and 0 <= src_head < cfg.n_heads):
        raise ValueError(
            f"source head ({src_layer}, {src_head}) does not exist: layers 0..{cfg.n_layers - 1}, heads 0..{cfg.n_heads - 1}"
        )
    corrupted_video = model.validate_input(corrupted_video)
    z_name = f"blocks.{src_layer}.attn.hook_z"
    for cache in (clean_cache, corrupted_cache):
        check_cache(model, cache, [z_name], corrupted_video.shape[0])
    W_O = model.blocks[src_layer].attn.W_O[src_head]
    delta = (clean_cache[z_name][:, :, src_head] - corrupted_cache[z_name][:, :, src_head]).to(
        W_O.device, W_O.dtype
    ) @ W_O

    def add_delta(fork, hook, head):
        fork = fork.clone()
        fork[:, :, head] += delta
        return fork

    if isinstance(patching_metric, Metric):
        patching_metric = patching_metric.mean_over_batch
    results = torch.zeros(cfg.n_layers, cfg.n_heads)
    saved = cfg.use_split_qkv_input, cfg.use_attn_in
    pairs = [(l, h) for l in range(src_layer + 1, cfg.n_layers) for h in range(cfg.n_heads)]
    try:
        model.set_use_attn_in(False)
        model.set_use_split_qkv_input(True)
        for l, h in tqdm(pairs, desc=f"direct path ({src_layer},{src_head}) -> * [{component}]", disable=not verbose):
            hook = (f"blocks.{l}.hook_{component}_input", partial(add_delta, head=h))
            with torch.no_grad():
                logits = model.run_with_hooks(corrupted_video, fwd_hooks=[hook])
            results[l, h] = float(patching_metric(logits))
    finally:
        model.set_use_split_qkv_input(saved[0])
        model.set_use_attn_in(saved[1])
    return results


if HAS_DIRECT_PATH:
    get_act_patch_direct_path.__doc__ = (get_act_patch_direct_path.__doc__ or "") + (
        "\n\nTransformerLens's docstring:\n" + (tl_patching.get_act_patch_direct_path.__doc__ or "")
    )


def get_act_patch_block_every(model, corrupted_video, clean_cache, metric, **kwargs) -> torch.Tensor:
    """[3, n_layers, n_ctx]: resid_pre, attn_out, mlp_out by (layer, token)."""
    return torch.stack(
        [
            f(model, corrupted_video, clean_cache, metric, **kwargs)
            for f in (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
        ]
    )


def get_act_patch_attn_head_all_pos_every(model, corrupted_video, clean_cache, metric, **kwargs) -> torch.Tensor:
    """[5, n_layers, n_heads]: each head's output, q, k, v and pattern, over all positions."""
    fs = (
        get_act_patch_attn_head_out_all_pos,
        get_act_patch_attn_head_q_all_pos,
        get_act_patch_attn_head_k_all_pos,
        get_act_patch_attn_head_v_all_pos,
        get_act_patch_attn_head_pattern_all_pos,
    )
    return torch.stack([f(model, corrupted_video, clean_cache, metric, **kwargs) for f in fs])


def get_act_patch_attn_head_by_pos_every(model, corrupted_video, clean_cache, metric, **kwargs) -> torch.Tensor:
    """[5, n_layers, n_ctx, n_heads]: head output, q, k, v by position, and pattern by query position."""
    fs = (
        get_act_patch_attn_head_out_by_pos,
        get_act_patch_attn_head_q_by_pos,
        get_act_patch_attn_head_k_by_pos,
        get_act_patch_attn_head_v_by_pos,
    )
    out = [f(model, corrupted_video, clean_cache, metric, **kwargs) for f in fs]
    out.append(
        get_act_patch_attn_head_pattern_by_pos(model, corrupted_video, clean_cache, metric, **kwargs).transpose(1, 2)
    )
    return torch.stack(out)


__all__ = [name for name in dir() if name.startswith("get_act_patch")] + [
    "FrameSlot",
    "Patch",
    "Region",
    "SweepResult",
    "check_cache",
    "component_patches",
    "denoise",
    "frame_slot_patches",
    "head_patches",
    "noise",
    "resolve_positions",
    "run_patches",
    "token_patches",
    "video_index_df",
    "auto_chunk_size",
]
