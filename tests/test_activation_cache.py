"""TransformerLens's ActivationCache methods, checked for their exact meaning on this model."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedViViT
from tests.conftest import SMALL_CONFIGS, make_hf, max_rel, pixels

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]


@pytest.fixture(scope="module")
def folded():
    """Loaded with fold_ln=True and use_attn_result, as logit attribution wants."""
    hf = make_hf(KW)
    model = HookedViViT.from_hf_model(hf, fold_ln=True, use_attn_result=True)
    x = pixels(KW)
    logits, cache = model.run_with_cache(x)
    return model, x, logits, cache


def test_fold_ln_logit_attrs_sum_to_the_logit(folded):
    model, _, logits, cache = folded
    n = model.cfg.n_layers
    for c in (0, 3, 6):
        stack = cache.decompose_resid(pos_slice=0)  # CLS: [components, batch, d_model]
        assert stack.shape[0] == 2 + 2 * n
        attrs = cache.logit_attrs(stack, tokens=c, pos_slice=0)  # final LN scale applied inside
        torch.testing.assert_close(attrs.sum(0) + model.b_U[c], logits[:, c], atol=1e-5, rtol=1e-5)


def test_logit_attrs_accepts_class_names_and_differences(folded):
    model, _, logits, cache = folded
    stack = cache.decompose_resid(pos_slice=0)
    name = model.cfg.id2label[2]
    by_name = cache.logit_attrs(stack, tokens=name, pos_slice=0)
    by_index = cache.logit_attrs(stack, tokens=2, pos_slice=0)
    torch.testing.assert_close(by_name, by_index)
    diff = cache.logit_attrs(stack, tokens=2, incorrect_tokens=5, pos_slice=0).sum(0)
    expected = (logits[:, 2] - model.b_U[2]) - (logits[:, 5] - model.b_U[5])
    torch.testing.assert_close(diff, expected, atol=1e-5, rtol=1e-5)
    # Per-example targets ([batch] tensor of classes).
    per_example = cache.logit_attrs(stack, tokens=torch.tensor([1, 4]), pos_slice=0).sum(0)
    torch.testing.assert_close(per_example + model.b_U[[1, 4]], logits[[0, 1], [1, 4]], atol=1e-5, rtol=1e-5)


def test_tokens_to_residual_directions(folded):
    model, *_ = folded
    torch.testing.assert_close(model.tokens_to_residual_directions(3), model.W_U[:, 3])
    dirs = model.tokens_to_residual_directions(torch.tensor([[1, 2], [3, 4]]))
    assert dirs.shape == (2, 2, model.cfg.d_model)
    torch.testing.assert_close(dirs[1, 0], model.W_U[:, 3])
    with pytest.raises(KeyError, match="unknown class name"):
        model.tokens_to_residual_directions("no such class")


def test_decompose_resid_sums_to_each_layer_input(folded):
    model, _, _, cache = folded
    for layer in range(model.cfg.n_layers + 1):
        stack = cache.decompose_resid(layer=layer)
        target = cache["resid_pre", layer] if layer < model.cfg.n_layers else cache["resid_post", -1]
        assert max_rel(stack.sum(0), target) < 1e-5
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    assert max_rel(mid.sum(0), cache["resid_mid", 1]) < 1e-5


def test_accumulated_resid(folded):
    model, _, _, cache = folded
    acc, labels = cache.accumulated_resid(return_labels=True)
    n = model.cfg.n_layers
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    assert torch.equal(acc[-1], cache["resid_post", n - 1])
    assert torch.equal(acc[1], cache["resid_pre", 1])
    # apply_ln on the full stack recomputes the final LN per entry: last entry = ln_final output.
    acc_ln = cache.accumulated_resid(apply_ln=True)
    assert max_rel(acc_ln[-1], cache["ln_final.hook_normalized"]) < 1e-5


def test_stack_head_results_add_up_to_attn_out(folded):
    model, _, _, cache = folded
    heads, labels = cache.stack_head_results(layer=-1, return_labels=True)
    n, H = model.cfg.n_layers, model.cfg.n_heads
    assert heads.shape[0] == n * H and labels[H] == "L1H0"
    for l in range(n):
        total = heads[l * H : (l + 1) * H].sum(0) + model.blocks[l].attn.b_O
        assert max_rel(total, cache["attn_out", l]) < 1e-5


def test_head_results_recomputed_from_z_match_hook_result():
    """Without use_attn_result the cache rebuilds per-head results from hook_z and W_O."""
    hf = make_hf(KW)
    with_result = HookedViViT.from_hf_model(hf, use_attn_result=True)
    without = HookedViViT.from_hf_model(hf)
    x = pixels(KW)
    _, c1 = with_result.run_with_cache(x)
    _, c2 = without.run_with_cache(x)
    assert max_rel(c2.stack_head_results(), c1.stack_head_results()) < 1e-5


def test_full_resid_decomposition_adds_up(folded):
    model, _, logits, cache = folded
    full, labels = cache.get_full_resid_decomposition(return_labels=True, expand_neurons=True)
    n, H, d_mlp = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_mlp
    assert full.shape[0] == n * H + n * d_mlp + 3
    assert labels[-3:] == ["embed", "pos_embed", "bias"]
    assert max_rel(full.sum(0), cache["resid_post", -1]) < 1e-5
    # Projected straight onto a class direction with the final LN applied: a complete DLA.
    c = 4
    projected = cache.get_full_resid_decomposition(apply_ln=True, project_output_onto=model.W_U[:, c], pos_slice=0)
    torch.testing.assert_close(projected.sum(0) + model.b_U[c], logits[:, c], atol=1e-5, rtol=1e-5)


def test_apply_ln_to_stack_equals_ln_of_the_sum(folded):
    model, _, _, cache = folded
    stack = cache.decompose_resid(layer=1)
    normed = cache.apply_ln_to_stack(stack, layer=1)
    # LNPre after fold_ln: the sum of the normalised parts is ln1's output.
    assert max_rel(normed.sum(0), cache["blocks.1.ln1.hook_normalized"]) < 1e-5


def test_accumulated_bias(folded):
    model, *_ = folded
    expected = model.blocks[0].attn.b_O + model.blocks[0].mlp.b_out + model.blocks[1].attn.b_O
    torch.testing.assert_close(model.accumulated_bias(1, mlp_input=True), expected)
    torch.testing.assert_close(model.accumulated_bias(1, include_mlp_biases=False), model.blocks[0].attn.b_O)
