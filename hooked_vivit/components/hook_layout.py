"""The hook-layout table: every hook leaf the components define -> its named axes.

One place says which axis of an activation holds what; cache-size estimates
(``cache_memory.hook_shape``), ``cache_memory.without_maps``, patching's head and position axes,
ablation's position axis and the model's "cannot fire" messages are all read from it.

An entry is looked up by the longest dotted suffix of the hook name that the table holds, with
the layer number removed: ``blocks.3.ln1.hook_scale`` tries ``ln1.hook_scale``, then ``hook_scale``;
``ln_final.hook_scale`` tries ``ln_final.hook_scale`` first. ``axes`` is a tuple of axis names, or a
function of the config giving one (layouts that a config switch changes). ``switch`` names the
config field without which the hook never fires.

A new architecture adds its own hook leaves with ``register_hooks({...})`` beside its components
(and any new axis name with its size in ``AXIS_SIZES``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Axes = tuple[str, ...]


@dataclass(frozen=True)
class HookLayout:
    axes: Axes | Callable[[Any], Axes]
    switch: str | None = None  # the config field that must be on for the hook to fire

    def axes_for(self, cfg: Any) -> Axes:
        return self.axes(cfg) if callable(self.axes) else self.axes


# Axis name -> its size under a config (batch is given by the caller).
AXIS_SIZES: dict[str, Callable[[Any], int]] = {
    "pos": lambda cfg: cfg.n_ctx,
    "query_pos": lambda cfg: cfg.n_ctx,
    "key_pos": lambda cfg: cfg.n_ctx,
    # hook_pattern_rows carries the rows of the attention's pattern_row_positions; the default set is one row
    # (hooked_vivit.attention_rows widens it inside its context manager).
    "query_row": lambda cfg: 1,
    "head_index": lambda cfg: cfg.n_heads,
    "d_head": lambda cfg: cfg.d_head,
    "d_model": lambda cfg: cfg.d_model,
    "d_mlp": lambda cfg: cfg.d_mlp,
    "one": lambda cfg: 1,
}

_RESID: Axes = ("batch", "pos", "d_model")
_PER_HEAD: Axes = ("batch", "pos", "head_index", "d_head")
_PER_HEAD_MODEL: Axes = ("batch", "pos", "head_index", "d_model")
_MAP: Axes = ("batch", "head_index", "query_pos", "key_pos")


def _per_head_ln1(cfg: Any) -> bool:
    return bool(cfg.use_split_qkv_input or cfg.use_attn_in)


def _mean_pooled(cfg: Any) -> bool:
    return getattr(cfg, "pooling", "first") == "mean"


HOOK_LAYOUT: dict[str, HookLayout] = {
    # model
    "hook_embed": HookLayout(_RESID),
    "hook_pos_embed": HookLayout(_RESID),
    # block
    "hook_resid_pre": HookLayout(_RESID),
    "hook_resid_mid": HookLayout(_RESID),
    "hook_resid_post": HookLayout(_RESID),
    "hook_attn_out": HookLayout(_RESID),
    "hook_mlp_out": HookLayout(_RESID),
    "hook_mlp_in": HookLayout(_RESID, switch="use_hook_mlp_in"),
    "hook_q_input": HookLayout(_PER_HEAD_MODEL, switch="use_split_qkv_input"),
    "hook_k_input": HookLayout(_PER_HEAD_MODEL, switch="use_split_qkv_input"),
    "hook_v_input": HookLayout(_PER_HEAD_MODEL, switch="use_split_qkv_input"),
    "hook_attn_in": HookLayout(_PER_HEAD_MODEL, switch="use_attn_in"),
    # attention
    "hook_q": HookLayout(_PER_HEAD),
    "hook_k": HookLayout(_PER_HEAD),
    "hook_v": HookLayout(_PER_HEAD),
    "hook_z": HookLayout(_PER_HEAD),
    "hook_result": HookLayout(_PER_HEAD_MODEL, switch="use_attn_result"),
    "hook_attn_scores": HookLayout(_MAP),
    "hook_pattern": HookLayout(_MAP),
    "hook_pattern_rows": HookLayout(("batch", "head_index", "query_row", "key_pos")),
    # mlp
    "hook_pre": HookLayout(("batch", "pos", "d_mlp")),
    "hook_post": HookLayout(("batch", "pos", "d_mlp")),
    # layer norms; ln1 feeds per-head copies when the split inputs are on
    "hook_scale": HookLayout(("batch", "pos", "one")),
    "hook_normalized": HookLayout(_RESID),
    "ln1.hook_scale": HookLayout(
        lambda cfg: ("batch", "pos", "head_index", "one") if _per_head_ln1(cfg) else ("batch", "pos", "one")
    ),
    "ln1.hook_normalized": HookLayout(lambda cfg: _PER_HEAD_MODEL if _per_head_ln1(cfg) else _RESID),
    # the final norm reads the token mean under mean pooling (VideoMAE's fc_norm)
    "ln_final.hook_scale": HookLayout(lambda cfg: ("batch", "one") if _mean_pooled(cfg) else ("batch", "pos", "one")),
    "ln_final.hook_normalized": HookLayout(lambda cfg: ("batch", "d_model") if _mean_pooled(cfg) else _RESID),
}
# The leaves every architecture has; register_hooks adds an architecture's own beside them.
SHARED_HOOKS: tuple[str, ...] = tuple(HOOK_LAYOUT)


def register_hooks(entries: dict[str, HookLayout], axis_sizes: dict[str, Callable[[Any], int]] | None = None) -> None:
    """Add an architecture's own hook leaves (and axis names); an existing entry may not change."""
    for key, layout in entries.items():
        if key in HOOK_LAYOUT and HOOK_LAYOUT[key] != layout:
            raise ValueError(f"hook layout {key!r} is already registered as {HOOK_LAYOUT[key]}")
        HOOK_LAYOUT[key] = layout
    AXIS_SIZES.update(axis_sizes or {})


def lookup(name: str) -> HookLayout:
    """The table entry of a full hook name (longest matching suffix, layer numbers removed)."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    for i in range(len(parts)):
        key = ".".join(parts[i:])
        if key in HOOK_LAYOUT:
            return HOOK_LAYOUT[key]
    raise KeyError(f"hook {name!r} has no entry in the hook-layout table (hooked_vivit.components.hook_layout)")


def hook_axes(name: str, cfg: Any) -> Axes | None:
    """Named axes of a hook under a config, or None when it does not fire there."""
    layout = lookup(name)
    if layout.switch is not None and not getattr(cfg, layout.switch):
        return None
    if layout.switch == "use_attn_in" and cfg.use_split_qkv_input:
        return None  # the split inputs replace the shared per-head copy
    return layout.axes_for(cfg)


def axis_of(name: str, axis_names: tuple[str, ...], cfg: Any = None) -> int | None:
    """Index of the first of ``axis_names`` among the hook's axes (None if it has none of them).
    Without a config, config-dependent layouts are read with every switch off."""
    axes = lookup(name).axes_for(cfg if cfg is not None else _SwitchesOff())
    for a in axis_names:
        if a in axes:
            return axes.index(a)
    return None


def head_axis(name: str, cfg: Any = None) -> int | None:
    return axis_of(name, ("head_index",), cfg)


def pos_axis(name: str, cfg: Any = None) -> int | None:
    """The token axis; for an attention map, the query axis."""
    return axis_of(name, ("pos", "query_pos"), cfg)


def is_attention_map(name: str) -> bool:
    """A [query_pos, key_pos] map per head: the bulk of a full cache."""
    axes = lookup(name).axes_for(_SwitchesOff())
    return "query_pos" in axes and "key_pos" in axes


def markdown_table(configs: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """The table as README markdown, one column per architecture (name -> config): each hook's
    named axes and its shape for batch 1 under that config (a switched hook with its switch on).
    ``keys``: the rows (default: the leaves every architecture shares, not those one registers)."""
    import dataclasses

    names = list(configs)
    rows = ["| hook | fires | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key in keys if keys is not None else SHARED_HOOKS:
        layout = HOOK_LAYOUT[key]
        cells = []
        for cfg in configs.values():
            on = dataclasses.replace(cfg, **{layout.switch: True}) if layout.switch else cfg
            axes = layout.axes_for(on)
            shape = ", ".join(str(1 if a == "batch" else AXIS_SIZES[a](on)) for a in axes)
            cells.append(f"[{', '.join(axes)}] = [{shape}]")
        fires = f"with `{layout.switch}`" if layout.switch else "always"
        rows.append(f"| `{key}` | {fires} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


class _SwitchesOff:
    def __getattr__(self, name: str) -> Any:
        return "first" if name == "pooling" else False


__all__ = [
    "AXIS_SIZES",
    "HOOK_LAYOUT",
    "SHARED_HOOKS",
    "HookLayout",
    "axis_of",
    "head_axis",
    "hook_axes",
    "is_attention_map",
    "lookup",
    "markdown_table",
    "pos_axis",
    "register_hooks",
]
