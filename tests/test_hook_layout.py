"""The hook-layout table against the tensors the hooks really carry: for every hook of a tiny ViViT
and VideoMAE (both poolings), under every switch set, the derived shape is the cached shape, the
derived head / position axes hold n_heads / n_ctx entries, and without_maps drops exactly the
[query, key] maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hooked_vivit import HookedVideoMAE, HookedViViT, cache_memory
from hooked_vivit.causal.patching import _head_axis, _pos_axis
from hooked_vivit.components import hook_layout

SWITCHES = [
    dict(),
    dict(use_attn_result=True, use_hook_mlp_in=True),
    dict(use_split_qkv_input=True),
    dict(use_attn_in=True),
]
# Every size different, so an axis can be told by its length: n_ctx 2*3*2 (+1 CLS), heads 3, d_head 5, d_mlp 11.
SIZES = dict(
    num_frames=4,
    image_size=(24, 16),
    tubelet_size=(2, 8, 8),
    d_model=15,
    d_head=5,
    n_heads=3,
    n_layers=2,
    d_mlp=11,
    n_classes=4,
)


def _models(switches: dict):
    vivit = HookedViViT(HookedViViT.config_class(**SIZES, **switches))
    mean = HookedVideoMAE(HookedVideoMAE.config_class(**SIZES, **switches))
    first = HookedVideoMAE(HookedVideoMAE.config_class(**SIZES, pooling="first", **switches))
    return {"vivit": vivit, "videomae_mean": mean, "videomae_first": first}


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(s) or "default")
def test_derived_layout_equals_the_cached_tensors(switches):
    for arch, model in _models(switches).items():
        torch.manual_seed(0)
        for p in model.parameters():
            p.data.normal_(0, 0.5)
        x = torch.randn(2, 4, 3, 24, 16)
        _, cache = model.run_with_cache(x)
        fired = set(cache.cache_dict)
        predicted = {n for n in model.hook_dict if cache_memory.hook_shape(model.cfg, n, 2) is not None}
        assert fired == predicted, (arch, switches, fired ^ predicted)
        n_ctx, H = model.cfg.n_ctx, model.cfg.n_heads
        assert n_ctx in (12, 13) and len({n_ctx, H, 5, 11, 15}) == 5
        for name, act in cache.cache_dict.items():
            where = (arch, switches, name)
            assert cache_memory.hook_shape(model.cfg, name, 2) == tuple(act.shape), where
            axes = hook_layout.hook_axes(name, model.cfg)
            head, pos = _head_axis(name, model.cfg), _pos_axis(name, model.cfg)
            assert head == (axes.index("head_index") if "head_index" in axes else None), where
            if head is not None:
                assert act.shape[head] == H, where
            if pos is not None:
                assert act.shape[pos] == n_ctx, where
            else:  # only the pooled vector of a mean-pooling model, and the pattern rows, have no token axis
                assert (
                    name.startswith("ln_final.") and model.cfg.pooling == "mean" or name.endswith("hook_pattern_rows")
                ), where
            # A [query, key] map is exactly what without_maps drops.
            is_map = act.ndim == 4 and act.shape[-2:] == (n_ctx, n_ctx)
            assert cache_memory.without_maps(name) is not is_map, where


def test_pattern_rows_and_switch_names():
    model = _models({})["vivit"]
    _, cache = model.run_with_cache(
        torch.randn(1, 4, 3, 24, 16), names_filter=lambda n: n.endswith("hook_pattern_rows")
    )
    assert tuple(cache["blocks.0.attn.hook_pattern_rows"].shape) == cache_memory.hook_shape(
        model.cfg, "blocks.0.attn.hook_pattern_rows", 1
    )
    assert hook_layout.lookup("blocks.1.hook_mlp_in").switch == "use_hook_mlp_in"
    assert hook_layout.lookup("blocks.1.attn.hook_result").switch == "use_attn_result"
    # ln1's own entry wins over the generic LayerNorm one; ln2's falls back to it.
    on = dataclasses.replace(model.cfg, use_split_qkv_input=True)
    assert hook_layout.hook_axes("blocks.0.ln1.hook_scale", on) == ("batch", "pos", "head_index", "one")
    assert hook_layout.hook_axes("blocks.0.ln2.hook_scale", on) == ("batch", "pos", "one")
    with pytest.raises(KeyError, match="no entry in the hook-layout table"):
        hook_layout.lookup("blocks.0.attn.hook_rotary")


def test_a_new_architecture_registers_its_own_leaves():
    saved = dict(hook_layout.HOOK_LAYOUT), dict(hook_layout.AXIS_SIZES)
    try:
        hook_layout.register_hooks(
            {"hook_time_mix": hook_layout.HookLayout(("batch", "frame", "d_model"))},
            {"frame": lambda cfg: cfg.num_frames},
        )
        cfg = HookedViViT.config_class(**SIZES)
        assert cache_memory.hook_shape(cfg, "blocks.1.hook_time_mix", 3) == (3, 4, 15)
        assert _pos_axis("blocks.1.hook_time_mix") is None and cache_memory.without_maps("blocks.1.hook_time_mix")
        with pytest.raises(ValueError, match="already registered"):
            hook_layout.register_hooks({"hook_z": hook_layout.HookLayout(("batch", "pos", "d_model"))})
    finally:
        hook_layout.HOOK_LAYOUT.clear(), hook_layout.HOOK_LAYOUT.update(saved[0])
        hook_layout.AXIS_SIZES.clear(), hook_layout.AXIS_SIZES.update(saved[1])


def test_readme_table_is_the_generated_one():
    from pathlib import Path

    from hooked_vivit import HookedVideoMAEConfig, HookedViViTConfig

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = readme.split("<!-- hook-layout-table -->\n", 1)[1].split("\n<!-- /hook-layout-table -->", 1)[0]
    table = hook_layout.markdown_table(
        {
            "ViViT-B (`google/vivit-b-16x2-kinetics400`)": HookedViViTConfig(),
            "VideoMAE-B (`MCG-NJU/videomae-base-finetuned-kinetics`)": HookedVideoMAEConfig(),
        }
    )
    assert shown == table
    assert "| `ln_final.hook_scale` | always | [batch, pos, one] = [1, 3137, 1] | [batch, one] = [1, 1] |" in table
