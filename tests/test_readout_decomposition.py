"""cache.logit_attrs and cache.logit_lens where the classifier reads no single token: V-JEPA 2's
attentive pooler and VideoMAE's token mean refuse, naming the library's exact alternative, and that
alternative sums to the logit; ViViT's CLS attribution still does."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedVideoMAE, HookedViViT, HookedVJEPA2
from hooked_vivit.causal.logit_attribution import pooler_token_dla
from tests import test_videomae as tm
from tests import test_vjepa2 as tv
from tests.conftest import SMALL_CONFIGS, make_hf, pixels


def _run(model, x):
    with torch.no_grad():
        return model.run_with_cache(x)


@pytest.fixture(scope="module")
def vjepa2():
    kw = tv.CONFIGS["dhead10_ratio3"]
    model = HookedVJEPA2.from_hf_model(tv.make_hf(kw), fold_ln=True)
    x = tv.pixels(kw)
    return (model, x, *_run(model, x))


@pytest.fixture(scope="module")
def videomae():
    kw = tm.CONFIGS["mean_nonsquare_5frames"]
    model = HookedVideoMAE.from_hf_model(tm.make_hf(kw), fold_ln=True)
    x = tm.pixels(kw)
    return (model, x, *_run(model, x))


def test_vjepa2_logit_attrs_refuses_naming_pooler_dla_which_is_exact(vjepa2):
    model, x, logits, cache = vjepa2
    for pos_slice in (0, None):
        with pytest.raises(ValueError) as e:
            cache.logit_attrs(cache.decompose_resid(pos_slice=pos_slice), tokens=1, pos_slice=pos_slice)
        msg = str(e.value)
        assert "HookedVJEPA2 classifies the output of its attentive pooler" in msg and "with fold_ln or without" in msg
        assert "hooked_vivit.causal.logit_attribution.pooler_token_dla(model, pixel_values, class_index)" in msg
    dla = pooler_token_dla(model, x, 1)
    assert dla["terms"].sum().item() + sum(dla["rest"].values()) == pytest.approx(float(logits[0, 1]), abs=1e-5)


def test_videomae_logit_attrs_at_a_position_refuses_and_the_pooled_stack_is_exact(videomae):
    model, _, logits, cache = videomae
    with pytest.raises(ValueError) as e:
        cache.logit_attrs(cache.decompose_resid(pos_slice=0), tokens=1, pos_slice=0)
    msg = str(e.value)
    assert msg.startswith("cache.logit_attrs with pos_slice=0: HookedVideoMAE classifies the token mean")
    assert "model.pooled_logit_terms(cache, classes)" in msg
    assert "cache.logit_attrs(cache.decompose_resid().mean(-2), tokens) without pos_slice" in msg
    stack = cache.decompose_resid()  # [components, batch, n_ctx, d_model]
    assert stack.shape == (6, 2, model.cfg.n_ctx, model.cfg.d_model) == (6, 2, 24, 24)
    with pytest.raises(ValueError, match=r"with a per-token stack \(shape \(6, 2, 24, 24\)\)"):
        cache.logit_attrs(stack, tokens=1)
    # What the message names: both sum to the logit.
    for c in (1, 3):
        attrs = cache.logit_attrs(stack.mean(-2), tokens=c)
        torch.testing.assert_close(attrs.sum(0) + model.b_U[c], logits[:, c], atol=1e-5, rtol=1e-5)
        terms, _, constant = model.pooled_logit_terms(cache, c)
        torch.testing.assert_close(terms.sum((0, 2)) + constant, logits[:, c], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["videomae", "vjepa2"])
def test_logit_lens_refuses_where_no_token_is_read_and_the_named_lens_ends_at_the_logits(arch, request):
    model, _, logits, cache = request.getfixturevalue(arch)
    with pytest.raises(ValueError, match=r"last entry would not be the logits.*start_at_layer=model\.cfg\.n_layers"):
        cache.logit_lens()
    L = model.cfg.n_layers
    with torch.no_grad():
        last = model(cache["resid_post", L - 1], start_at_layer=L)
        first = model(cache["resid_pre", 0], start_at_layer=L)
    torch.testing.assert_close(last, logits, atol=1e-5, rtol=1e-5)
    assert first.shape == logits.shape and not torch.allclose(first, logits, atol=1e-3)


def test_vivit_cls_logit_attrs_still_sum_to_the_logit():
    kw = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]
    model = HookedViViT.from_hf_model(make_hf(kw), fold_ln=True)
    logits, cache = _run(model, pixels(kw))
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=0), tokens=4, pos_slice=0)
    torch.testing.assert_close(attrs.sum(0) + model.b_U[4], logits[:, 4], atol=1e-5, rtol=1e-5)
