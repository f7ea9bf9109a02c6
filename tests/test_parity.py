"""Exact parity with transformers.VivitForVideoClassification: logits, every residual stream,
every attention pattern; eager and sdpa; small configs and the real ViViT-B shape."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedViViT
from tests.conftest import make_hf, max_rel, pixels

TOL = 1e-5


def _compare(hf, model, x, *, patterns: bool, layers=None):
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else layers
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, output_attentions=patterns)
        names = [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
        if patterns:
            names += [f"blocks.{l}.attn.hook_pattern" for l in layers]
        logits, cache = model.run_with_cache(x, names_filter=names)
    worst = {"logits": max_rel(logits, ref.logits)}
    for l in range(n):
        worst[f"resid_pre{l}"] = max_rel(cache["resid_pre", l], ref.hidden_states[l])
    worst["resid_post_last"] = max_rel(cache["resid_post", n - 1], ref.hidden_states[n])
    if patterns:
        for l in layers:
            worst[f"pattern{l}"] = max_rel(cache["pattern", l], ref.attentions[l])
    return worst


def test_small_configs_eager(small_pair):
    name, kw, hf, model = small_pair
    worst = _compare(hf, model, pixels(kw), patterns=True)
    assert max(worst.values()) <= TOL, (name, worst)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_small_configs_plain_forward_both_hf_paths(small_pair, attn):
    name, kw, _, _ = small_pair
    hf = make_hf(kw, attn=attn)
    model = HookedViViT.from_hf_model(hf)
    x = pixels(kw, seed=5)
    with torch.no_grad():
        assert max_rel(model(x), hf(x).logits) <= TOL, name  # hooked SDPA path
        worst = _compare(hf, model, x, patterns=False)
    assert max(worst.values()) <= TOL, (name, worst)


def test_sdpa_path_equals_explicit_path(small_pair):
    _, kw, _, model = small_pair
    x = pixels(kw)
    with torch.no_grad():
        fast = model(x)
        slow = model.run_with_hooks(x, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)])
    assert max_rel(fast, slow) <= TOL
    assert not torch.equal(fast, torch.zeros_like(fast))


@pytest.mark.slow
def test_vivit_b_kinetics400_shape_random_weights():
    """The real config: 32 frames, 224 px, 3137 tokens, 89M parameters (random, perturbed weights)."""
    from transformers import VivitConfig

    kw = VivitConfig().to_dict()
    kw = {
        k: kw[k]
        for k in (
            "image_size",
            "num_frames",
            "tubelet_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
        )
    }
    kw["num_labels"] = 400
    torch.manual_seed(0)
    hf = make_hf(kw, attn="eager")
    model = HookedViViT.from_hf_model(hf)
    assert model.cfg.n_ctx == 3137
    assert abs(sum(p.numel() for p in model.parameters()) - 89e6) < 1e6
    assert model.cfg.id2label[31] == "bowling"
    x = pixels(kw, batch=1)
    # Patterns of the first and last layer only: all twelve would hold ~1.4 GB twice.
    worst = _compare(hf, model, x, patterns=True, layers=[0, 11])
    assert max(worst.values()) <= TOL, worst
    with torch.no_grad():
        hf.set_attn_implementation("sdpa")
        assert hf.config._attn_implementation == "sdpa"
        assert max_rel(model(x), hf(x).logits) <= TOL
