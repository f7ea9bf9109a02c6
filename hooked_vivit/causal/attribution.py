"""Attribution patching: a first-order estimate of every patch at once.

For an activation a and metric M, patching a from the clean run into the corrupted run changes M by
about  (a_clean - a_corrupt) . dM/da  (gradient taken on the corrupted run). One clean forward
(or a clean cache you already have), one corrupted forward and one backward give the estimate for
every (layer, position) of resid_pre / attn_out / mlp_out and every (layer, position, head) of z.
Only input gradients are taken (``torch.autograd.grad``), never parameter gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from hooked_vivit.cache_memory import hook_shape
from hooked_vivit.causal.metrics import metric_rows
from hooked_vivit.components import hook_layout

if TYPE_CHECKING:  # annotations only: the causal tools take any HookedVideoTransformer (ViViT, VideoMAE, ...)
    from hooked_vivit.model import HookedVideoTransformer

DEFAULT_ACTS = ("resid_pre", "attn_out", "mlp_out", "z")


@dataclass
class AttributionResult:
    """``scores[act]``: [n_layers, n_ctx] for resid/attn_out/mlp_out, [n_layers, n_ctx, n_heads] for
    z (and q/k/v); n_layers counts the attributed ``layers``. ``baseline`` is the metric on the corrupted run."""

    scores: dict[str, torch.Tensor]
    baseline: float
    grid: Any
    layers: list[int] | None = None  # the layers along the scores' first axis (None: all)

    def by_frame_slot(self, act: str) -> Float[torch.Tensor, "n_layers n_frame_slots"]:
        """Sum over the patch tokens of each frame slot: the estimate for patching the slot whole."""
        s = self.scores[act]
        if s.ndim != 2:
            s = s.sum(-1)
        return self.grid.unflatten(s, dim=1)[1].sum(dim=(-1, -2))

    def by_component(self, act: str) -> Float[torch.Tensor, " n_layers"]:
        """Sum over all tokens: the estimate for patching the whole component of each layer."""
        s = self.scores[act]
        return s.sum(dim=tuple(range(1, s.ndim)))

    def by_head(self, act: str = "z") -> Float[torch.Tensor, "n_layers n_heads"]:
        return self.scores[act].sum(1)


def _per_position_and_head(x: torch.Tensor, name: str, cfg: Any) -> torch.Tensor:
    """[batch, ...] -> [pos] or [pos, head] (axes as the hook-layout table names them; an attention
    map's query axis is its position): the batch mean, summed over every other axis."""
    axes = hook_layout.hook_axes(name, cfg)
    assert axes is not None and axes[0] == "batch" and x.ndim == len(axes)
    keep = [i for i in (hook_layout.pos_axis(name, cfg), hook_layout.head_axis(name, cfg)) if i is not None]
    summed = [i for i in range(1, len(axes)) if i not in keep]
    x = x.mean(0)
    if summed:
        x = x.sum([i - 1 for i in summed])
    ranked = sorted(keep)  # the kept axes, now in ascending order: put them as (pos, head)
    return x.permute(*[ranked.index(k) for k in keep])


def _scores_on_tokens(model: HookedVideoTransformer, name: str, x: torch.Tensor) -> torch.Tensor:
    """_per_position_and_head, also for hooks that batch over positions or frames (TimeSformer's
    attentions: [batch * positions, frames, ...] / [batch * frames, 1 + patches, ...]), which the
    model first puts on its tokens (batched_hook_on_tokens): [n_ctx] or [n_ctx, head]."""
    shape = hook_shape(model.cfg, name, 1)
    if not shape or shape[0] == 1:
        return _per_position_and_head(x, name, model.cfg)
    on_tokens = getattr(model, "batched_hook_on_tokens", None)
    if on_tokens is None:
        raise ValueError(
            f"{name} batches over {shape[0]} rows per clip and {type(model).__name__} cannot put it on its tokens"
        )
    return on_tokens(name, x).mean(0).sum(-1)  # the batch mean, summed over the feature axis


def _layer_of(name: str, n_layers: int) -> int:
    """The block a hook belongs to: -1 before the blocks, n_layers after them."""
    if name.startswith("blocks."):
        return int(name.split(".")[1])
    return -1 if name.startswith(("hook_embed", "hook_pos_embed")) else n_layers


def _readout_row_only(model: HookedVideoTransformer, metric_hooks: Sequence[str]) -> bool:
    """Whether the last block may run for token 0 alone: the metric reads only the logits, and the model
    says a readout-row run is possible (its logits read token 0 alone, no other hook, the user's, sits
    where it would see one row)."""
    return not metric_hooks and model.readout_row_suffices()


def _run_last_block_readout_row(model: HookedVideoTransformer, resid: torch.Tensor) -> torch.Tensor:
    """The last block for token 0 only (keys and values from every token), then the logits."""
    return model.readout_logits(model.blocks[-1](resid, query_positions=[0]), [0])


@contextmanager
def _parameters_frozen(model: HookedVideoTransformer) -> Iterator[None]:
    """No parameter requires grad inside: autograd then keeps only what input gradients need."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def attribution_patch(
    model: HookedVideoTransformer,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    metric: Callable,
    *,
    acts: Sequence[str] = DEFAULT_ACTS,
    clean_cache: Any = None,
    layers: Sequence[int] | None = None,
) -> AttributionResult:
    """Estimate denoising patches (clean into corrupted) for every (layer, position[, head]) of
    ``layers`` (all by default; the scores' first axis follows ``layers``). ``acts``: TransformerLens
    names (resid_pre, attn_out, z, ...) or a hook inside each block ("temporal_attn.hook_z");
    TimeSformer's attention hooks, batched over positions or frames, are scored per token
    (HookedTimeSformer.batched_hook_on_tokens: CLS sums its per-frame copies).

    Cost: the clean forward caches only the attributed hooks and stops after the last attributed
    layer; the corrupted forward runs the blocks before the earliest attributed layer without a
    graph, makes the residual stream there a leaf, and the backward stops at it. Parameters are
    frozen meanwhile (only input gradients are taken). Where the logits read token 0 alone (pooling
    "first", a metric of the logits, nothing else hooked in the last block), both runs compute only
    that row of the last block (its keys and values from every token): the other rows of its
    outputs reach no logit, so their gradients and scores are exactly 0, and are written as 0."""
    from transformer_lens.utilities import get_act_name

    n_layers = model.cfg.n_layers
    layer_list = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layer_list if not 0 <= l < n_layers]
    if not layer_list or bad:
        raise ValueError(f"layers must be a non-empty list of layers in 0..{n_layers - 1}, got {list(layers or [])}")
    # An act with a dot is a hook inside each block (e.g. TimeSformer's "temporal_attn.hook_z").
    names = [f"blocks.{l}.{a}" if "." in a else get_act_name(a, l) for a in acts for l in layer_list]
    model.check_hook_names(names)
    metric_hooks = tuple(getattr(metric, "hooks", ()))
    layers = [_layer_of(n, n_layers) for n in names]
    readout_row = _readout_row_only(model, metric_hooks)
    if clean_cache is None:
        last = max(layers)
        if readout_row and last == n_layers - 1:
            clean_cache = {}

            def keep_clean(act: torch.Tensor, hook) -> None:
                clean_cache[hook.name] = act

            with torch.inference_mode(), model.hooks(fwd_hooks=[(n, keep_clean) for n in names]):
                _run_last_block_readout_row(model, model(clean, stop_at_layer=n_layers - 1))
        else:
            with torch.inference_mode():
                _, clean_cache = model.run_with_cache(
                    clean, names_filter=names, stop_at_layer=last + 1 if last < n_layers else None
                )
    corrupted = model.validate_input(corrupted)
    # The leaf: the residual stream entering the earliest attributed block (a metric reading an
    # earlier hook gets its value from the graph-free prefix, which does not depend on the leaf).
    first = max(0, min(layers))

    stored: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook) -> torch.Tensor:
        stored[hook.name] = act
        return act

    hooks = [(n, keep) for n in dict.fromkeys(names + list(metric_hooks))]
    with _parameters_frozen(model), model.hooks(fwd_hooks=hooks):
        with torch.no_grad():
            resid = model(corrupted, stop_at_layer=first)
        with torch.enable_grad():
            resid.requires_grad_(True)
            if readout_row:
                x = resid if first == n_layers - 1 else model(resid, start_at_layer=first, stop_at_layer=n_layers - 1)
                logits = _run_last_block_readout_row(model, x)
            else:
                logits = model(resid, start_at_layer=first)
            values = metric_rows(metric, logits, {h: stored[h] for h in metric_hooks})
            if values.shape != (resid.shape[0],):
                raise ValueError(
                    f"the metric must return one value per batch row, shape ({resid.shape[0]},), got shape {tuple(values.shape)} "
                    "(a [batch, classes] tensor? pick a class: hooked_vivit.causal.metrics.ClassLogit(c) or LogitDiff(c, other))"
                )
            targets = [stored[n] for n in names]
            grads = torch.autograd.grad(values.sum(), targets, allow_unused=True)

    scores: dict[str, list[torch.Tensor]] = {a: [] for a in acts}
    for (name, act, grad), a in zip(
        ((n, stored[n], g) for n, g in zip(names, grads)), [a for a in acts for _ in layer_list]
    ):
        clean_act = clean_cache[name]
        rows_only = act.shape != clean_act.shape  # a last-block hook of a readout-row run; a full clean cache given
        if rows_only:
            clean_act = clean_act.narrow(hook_layout.pos_axis(name, model.cfg), 0, 1)
        delta = clean_act.to(act.device, act.dtype) - act.detach()
        g = torch.zeros_like(act) if grad is None else grad
        # Sum over the feature axes, mean over the batch: one number per position (and head),
        # on the same scale as run_patches' batch-mean values. Kept on the device until stacked:
        # one transfer per activation kind, not one per hook.
        score = _scores_on_tokens(model, name, delta * g).detach()
        if score.shape[0] != model.cfg.n_ctx:  # only the readout row was run: every other row scores exactly 0
            score = torch.cat([score, score.new_zeros((model.cfg.n_ctx - 1, *score.shape[1:]))])
        scores[a].append(score)
    return AttributionResult(
        scores={a: torch.stack(v).float().cpu() for a, v in scores.items()},
        baseline=float(values.detach().float().mean()),
        grid=model.cfg.grid,
        layers=layer_list,
    )
