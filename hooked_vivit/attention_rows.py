"""Attention pattern rows of a few query positions, at fused-attention cost.

Caching ``hook_pattern`` holds [heads x tokens x tokens] per layer (5.7 GB per ViViT-B clip in
fp32) and forces the explicit attention path. Most figures need only a few query rows (the CLS
row above all). ``blocks.{l}.attn.hook_pattern_rows`` carries just those rows,
[batch, heads, n_queries, n_ctx], recomputed from q and k while the fused (SDPA) path stays on:
softmax(q_rows · kᵀ / sqrt(d_head)) in fp32, the explicit path's arithmetic, so the rows equal
the corresponding rows of ``hook_pattern``.

    rows = model.attention_rows(x, queries="cls")         # [batch, layers, heads, 1, n_ctx]
    rows[:, l, :, 0]                                       # == cache["pattern", l][:, :, 0]

    with pattern_row_queries(model, FrameSlot(3)):         # run_with_cache-friendly
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern_rows"))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from hooked_vivit.positions import PositionGroup, resolve_positions

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer


def _positions(model: HookedVideoTransformer, queries: PositionGroup) -> tuple[int, ...]:
    positions = resolve_positions(model, queries)
    return tuple(range(model.cfg.n_ctx)) if positions is None else positions


@contextmanager
def pattern_row_queries(model: HookedVideoTransformer, queries: PositionGroup = "cls") -> Iterator[tuple[int, ...]]:
    """Within the block, ``hook_pattern_rows`` of every layer carries the rows of these query
    positions (a position group as in ``hooked_vivit.causal.patching``: "cls", a token index or list,
    ``FrameSlot``, ``Region``, "patches", "all"). Yields the sorted token indices (the row order)."""
    positions = _positions(model, queries)
    before = [block.attn.pattern_row_positions for block in model.blocks]
    for block in model.blocks:
        block.attn.pattern_row_positions = positions
    try:
        yield positions
    finally:
        for block, old in zip(model.blocks, before):
            block.attn.pattern_row_positions = old


def attention_rows(
    model: HookedVideoTransformer,
    pixel_values: torch.Tensor,
    queries: PositionGroup = "cls",
    layers: Sequence[int] | None = None,
) -> Float[torch.Tensor, "batch layers heads n_queries n_ctx"]:
    """Attention pattern rows of the query positions for every head of ``layers`` (all by default),
    in the order of ``layers``; the rows are the sorted query token indices. One forward, stopped
    after the last layer asked for, with the fused attention path on."""
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    if not layers:
        raise ValueError("layers is empty; pass None for every layer or a list of layer indices")
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers must lie in 0..{n_layers - 1}, got {bad}")
    rows: dict[int, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        rows[int(hook.name.split(".")[1])] = act

    hooks = [(f"blocks.{l}.attn.hook_pattern_rows", keep) for l in sorted(set(layers))]
    with pattern_row_queries(model, queries), model.hooks(fwd_hooks=hooks), torch.inference_mode():
        model(pixel_values, stop_at_layer=max(layers) + 1)
    return torch.stack([rows[l] for l in layers], dim=1)
