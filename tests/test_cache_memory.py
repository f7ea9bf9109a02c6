"""The cache-size estimate equals what run_with_cache holds; a too-big cache warns first."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hooked_vivit import HookedViViT, cache_memory
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]


@pytest.mark.parametrize(
    "switches",
    [dict(), dict(use_attn_result=True, use_hook_mlp_in=True), dict(use_split_qkv_input=True), dict(use_attn_in=True)],
)
@pytest.mark.parametrize(
    "names_filter",
    [None, cache_memory.without_maps, ["blocks.0.attn.hook_pattern", "hook_embed"], "blocks.1.mlp.hook_post"],
)
def test_estimate_equals_cached_bytes(switches, names_filter):
    base = HookedViViT.from_hf_model(make_hf(KW))
    model = HookedViViT(dataclasses.replace(base.cfg, **switches), init_weights=False)
    model.load_state_dict(base.state_dict())
    x = pixels(KW, batch=3)
    _, cache = model.run_with_cache(x, names_filter=names_filter)
    estimate = cache_memory.estimate_cache_bytes(model, names_filter, batch=3)
    assert estimate == cache.nbytes()  # exact: a hook the estimate missed (or counted twice) shows


def test_vivit_b_attention_maps_are_about_11_gb_per_clip():
    from hooked_vivit import HookedViViTConfig

    with torch.device("meta"):
        model = HookedViViT(HookedViViTConfig(device="meta"), init_weights=False)
    full = cache_memory.estimate_cache_bytes(model)
    rest = cache_memory.estimate_cache_bytes(model, cache_memory.without_maps)
    maps = 2 * 12 * 12 * 3137**2 * 4  # patterns and scores, 12 layers x 12 heads, fp32
    assert full - rest == maps and 11e9 < maps < 11.5e9
    assert 2e9 < rest < 2.5e9  # everything else


def test_warns_with_a_filter_that_fits(monkeypatch, tiny):
    model, x, _ = tiny
    monkeypatch.setattr("hooked_vivit.model.free_bytes", lambda device: 1000)
    with pytest.warns(UserWarning, match="names_filter=hooked_vivit.cache_memory.without_maps"):
        model.run_with_cache(x)


def test_cache_repr_summarises(tiny):
    model, x, _ = tiny
    _, cache = model.run_with_cache(x)
    text = repr(cache)
    assert text.startswith(f"VideoActivationCache: {len(cache.cache_dict)} hooks")
    assert "attn.hook_pattern" in text and "x2" in text
    assert cache.nbytes() == sum(v.numel() * 4 for v in cache.cache_dict.values())
