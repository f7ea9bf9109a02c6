"""Hook points: names, shapes, every hook's output flows on, attention path switch, split inputs,
typos, cleanup."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from hooked_vivit import HookedViViT, HookNameError
from tests.conftest import max_rel

PER_LAYER = [
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_pattern_rows",
    "attn.hook_z",
    "attn.hook_result",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_attn_in",
    "hook_mlp_in",
]


def all_switches(model: HookedViViT, **switches) -> HookedViViT:
    cfg = dataclasses.replace(model.cfg, **switches)
    other = HookedViViT(cfg, init_weights=False)
    other.load_state_dict(model.state_dict())
    return other


def test_hook_names_and_shapes(tiny):
    model, x, _ = tiny
    cfg = model.cfg
    expected = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"}
    expected |= {f"blocks.{l}.{h}" for l in range(cfg.n_layers) for h in PER_LAYER}
    assert set(model.hook_dict) == expected
    _, cache = model.run_with_cache(x)
    B, P, d, H, E = x.shape[0], cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_head
    assert cache["hook_embed"].shape == (B, P, d)
    assert cache["blocks.0.attn.hook_q"].shape == (B, P, H, E)
    assert cache["blocks.0.attn.hook_z"].shape == (B, P, H, E)
    assert cache["blocks.0.attn.hook_pattern"].shape == (B, H, P, P)
    assert cache["blocks.0.attn.hook_attn_scores"].shape == (B, H, P, P)
    assert cache["blocks.0.mlp.hook_post"].shape == (B, P, cfg.d_mlp)
    assert cache["blocks.0.ln1.hook_scale"].shape == (B, P, 1)
    torch.testing.assert_close(cache["pattern", 0].sum(-1), torch.ones(B, H, P))


def test_embed_hook_holds_cls_first(tiny):
    model, x, _ = tiny
    _, cache = model.run_with_cache(x)
    cls = model.embed.cls_token
    torch.testing.assert_close(cache["hook_embed"][:, 0], cls.expand(x.shape[0], -1))
    torch.testing.assert_close(cache["hook_pos_embed"][0], model.W_pos)


def test_residual_decomposition_is_complete(tiny):
    model, x, _ = tiny
    _, cache = model.run_with_cache(x)
    n = model.cfg.n_layers
    total = cache["hook_embed"] + cache["hook_pos_embed"]
    total = total + sum(cache["attn_out", l] + cache["mlp_out", l] for l in range(n))
    assert max_rel(total, cache["resid_post", n - 1]) < 1e-6


@pytest.mark.parametrize(
    "switches",
    [dict(), dict(use_attn_result=True), dict(use_split_qkv_input=True, use_hook_mlp_in=True), dict(use_attn_in=True)],
    ids=["default", "attn_result", "split_qkv+mlp_in", "attn_in"],
)
def test_every_firing_hook_flows_on(tiny, switches):
    """Adding a perturbation at any hook changes the logits."""
    model, x, _ = tiny
    model = all_switches(model, **switches)
    base, cache = model.run_with_cache(x)
    fired = list(cache.cache_dict)
    assert len(fired) >= 5 * model.cfg.n_layers
    for name in fired:

        def bump(act, hook):
            # Non-uniform noise: a uniform scale or shift would vanish in the next LayerNorm.
            gen = torch.Generator().manual_seed(0)
            return act + 0.5 * act.std() * torch.randn(act.shape, generator=gen)

        out = model.run_with_hooks(x, fwd_hooks=[(name, bump)])
        assert (out - base).abs().max() > 1e-4, f"patching {name} did not change the logits"


@pytest.mark.parametrize(
    "switches",
    [
        dict(use_attn_result=True),
        dict(use_split_qkv_input=True),
        dict(use_attn_in=True),
        dict(use_hook_mlp_in=True),
        dict(use_sdpa=False),
    ],
)
def test_switches_keep_the_function(tiny, switches):
    model, x, _ = tiny
    other = all_switches(model, **switches)
    with torch.no_grad():
        assert max_rel(other(x), model(x)) <= 1e-5
    _, cache = other.run_with_cache(x)
    if switches.get("use_attn_result"):
        attn_out = cache["result", 0, "attn"].sum(-2) + other.blocks[0].attn.b_O
        assert max_rel(attn_out, cache["attn_out", 0]) <= 1e-5
    if switches.get("use_split_qkv_input"):
        assert cache["blocks.0.hook_q_input"].shape[2] == model.cfg.n_heads


def test_split_qkv_input_patches_one_head_only(tiny):
    model, x, _ = tiny
    model = all_switches(model, use_split_qkv_input=True)
    _, base = model.run_with_cache(x)

    def zero_head1(act, hook):
        act[:, :, 1] = 0.0
        return act

    _, cache = model.run_with_cache(x, names_filter="blocks.0.attn.hook_q")
    with model.hooks(fwd_hooks=[("blocks.0.hook_q_input", zero_head1)]):
        _, patched = model.run_with_cache(x, names_filter="blocks.0.attn.hook_q")
    q0, q1 = cache["q", 0], patched["q", 0]
    torch.testing.assert_close(q1[:, :, 0], q0[:, :, 0])
    assert (q1[:, :, 1] - q0[:, :, 1]).abs().max() > 1e-3


def test_sdpa_used_only_when_no_pattern_hook(tiny):
    model, x, _ = tiny
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as spy:
        model(x)
        assert spy.call_count == model.cfg.n_layers
        spy.reset_mock()
        model.run_with_cache(x)  # caching attaches hooks to pattern and scores
        assert spy.call_count == 0
        spy.reset_mock()
        model.run_with_cache(x, names_filter=lambda n: n.endswith("resid_post"))
        assert spy.call_count == model.cfg.n_layers
        spy.reset_mock()
        model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_attn_scores", lambda t, hook: None)])
        assert spy.call_count == model.cfg.n_layers - 1


def test_pattern_patch_changes_output_on_explicit_path(tiny):
    model, x, _ = tiny

    def uniform(pattern, hook):
        return torch.full_like(pattern, 1.0 / pattern.shape[-1])

    base = model(x)
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)]):
        out, cache = model.run_with_cache(x, names_filter=["blocks.0.attn.hook_v", "blocks.0.attn.hook_z"])
    # Uniform attention makes every query's z the mean of the values.
    expected_z = cache["v", 0].mean(1, keepdim=True).expand_as(cache["z", 0])
    torch.testing.assert_close(cache["z", 0], expected_z)
    assert (out - base).abs().max() > 1e-5


def test_typo_suggests_nearest_names(tiny):
    model, x, _ = tiny
    with pytest.raises(HookNameError, match="blocks.0.hook_resid_pre"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pr", lambda t, hook: None)])
    with pytest.raises(HookNameError, match=r"Did you mean 'blocks.1.hook_resid_pre' \(get_act_name\('resid_pre1'\)\)"):
        model.run_with_cache(x, names_filter=["resid_pre1"])
    with pytest.raises(HookNameError, match=r"Layer 3 does not exist: this model has layers 0..1"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.3.hook_resid_pre", lambda t, hook: None)])
    with pytest.raises(HookNameError, match="blocks.1.attn.hook_pattern"):
        model.run_with_cache(x, names_filter="blocks.1.attn.hook_patern")
    with pytest.raises(HookNameError, match="blocks.1.mlp.hook_post"):
        model.add_hook("blocks.1.mlp.hook_pots", lambda t, hook: None)
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_hooks_removed_even_when_a_hook_raises(tiny):
    model, x, _ = tiny

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_mid", boom)])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", boom)]):
            model(x)
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_get_act_name_short_names_index_cache(tiny):
    from transformer_lens.utilities import get_act_name

    model, x, _ = tiny
    _, cache = model.run_with_cache(x)
    assert torch.equal(cache["resid_pre", 1], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache[get_act_name("pattern", 0)], cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(cache["scale", 1, "ln2"], cache["blocks.1.ln2.hook_scale"])
    assert torch.equal(cache["resid_post", -1], cache["blocks.1.hook_resid_post"])


def test_remove_batch_dim(tiny):
    model, x, _ = tiny
    _, cache = model.run_with_cache(x[:1], remove_batch_dim=True)
    assert cache["resid_pre", 0].shape == (model.cfg.n_ctx, model.cfg.d_model)
    assert not cache.has_batch_dim


def test_stop_and_start_at_layer(tiny):
    model, x, _ = tiny
    logits, cache = model.run_with_cache(x)
    torch.testing.assert_close(model(x, stop_at_layer=1), cache["resid_pre", 1])
    torch.testing.assert_close(model(cache["resid_pre", 1], start_at_layer=1), logits)
    with pytest.raises(ValueError, match=r"takes the residual stream \[batch, 49, 24\]"):
        model(x, start_at_layer=1)


def test_backward_through_hooks(tiny):
    model, x, _ = tiny
    grads = {}

    def save_grad(g, hook):
        grads[hook.name] = g.detach()

    model.add_hook("blocks.0.hook_resid_mid", save_grad, dir="bwd")
    try:
        model(x)[:, 0].sum().backward()
    finally:
        model.reset_hooks()
    assert grads["blocks.0.hook_resid_mid"].shape == (x.shape[0], model.cfg.n_ctx, model.cfg.d_model)
    assert grads["blocks.0.hook_resid_mid"].abs().sum() > 0
