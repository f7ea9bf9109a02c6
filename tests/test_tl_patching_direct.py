"""TransformerLens's own patching helpers called directly on a video model: the ones that would count
positions along the pixel width refuse, naming the library's twin; the rest run and agree with it."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from hooked_vivit import HookedViViT
from hooked_vivit.causal import patching as vp
from hooked_vivit.compat import HAS_DIRECT_PATH
from hooked_vivit.model import HookNameError
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]  # 48 pixels wide, 49 tokens


@pytest.fixture(scope="module")
def setup():
    model = HookedViViT.from_hf_model(make_hf(KW))
    clean = pixels(KW)
    corrupted = clean.flip(0)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    return model, clean, corrupted, cache


def metric(logits):
    return logits[:, 0].mean()


def test_tl_helpers_that_index_positions_refuse_naming_the_twin(setup):
    model, _, corrupted, cache = setup
    assert corrupted.shape[-1] == 48 and model.cfg.n_ctx == 49
    with pytest.raises(ValueError) as e:
        tlp.get_act_patch_resid_pre(model, corrupted, cache, metric)
    msg = str(e.value)
    assert "transformer_lens.patching.get_act_patch_resid_pre counts the 'pos' axis" in msg
    assert "is the width (48), not the 49 tokens" in msg and "only tokens 0..47 of the 49" in msg
    assert "use hooked_vivit.causal.patching.get_act_patch_resid_pre" in msg
    with pytest.raises(ValueError, match=r"hooked_vivit\.causal\.patching\.get_act_patch_attn_head_out_by_pos"):
        tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    with pytest.raises(
        ValueError, match=r"'dest_pos'.*hooked_vivit\.causal\.patching\.get_act_patch_attn_head_pattern_by_pos"
    ):
        model.cfg.use_sdpa = False  # the pattern hook fires only on the explicit path
        try:
            tlp.get_act_patch_attn_head_pattern_by_pos(model, corrupted, cache, metric)
        finally:
            model.cfg.use_sdpa = True
    # A sweep of several names the sweep's twin.
    with pytest.raises(ValueError, match=r"hooked_vivit\.causal\.patching\.get_act_patch_block_every"):
        tlp.get_act_patch_block_every(model, corrupted, cache, metric)


def test_the_twin_counts_tokens_and_each_cell_is_that_patch(setup):
    model, _, corrupted, cache = setup
    out = vp.get_act_patch_resid_pre(model, corrupted, cache, metric)
    assert out.shape == (model.cfg.n_layers, 49)
    layer, pos = 1, 48  # the token TransformerLens's own helper would never reach

    def patch(act, hook):
        act[:, pos] = cache[hook.name][:, pos]
        return act

    with torch.no_grad():
        expected = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)]))
    torch.testing.assert_close(out[layer, pos], expected.float(), atol=1e-5, rtol=1e-5)


def test_tl_helpers_with_token_positions_or_without_positions_run(setup):
    model, _, corrupted, cache = setup
    # TransformerLens's index_df path (what the twins pass) counts tokens: accepted, the same numbers.
    index_df = vp.video_index_df(model, ("layer", "pos"))
    flat = tlp.generic_activation_patch(
        model, corrupted, cache, metric, tlp.layer_pos_patch_setter, "resid_pre", index_df=index_df
    )
    twin = vp.get_act_patch_resid_pre(model, corrupted, cache, metric)
    torch.testing.assert_close(flat.reshape(twin.shape), twin)
    # Per-head over all positions: no position axis, so TransformerLens's helper is right as it is.
    tl_heads = tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)
    torch.testing.assert_close(tl_heads, vp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric))
    assert tl_heads.shape == (model.cfg.n_layers, model.cfg.n_heads) and tl_heads.abs().sum() > 0


@pytest.mark.skipif(not HAS_DIRECT_PATH, reason="transformer_lens.patching.get_act_patch_direct_path is TL >= 4")
def test_tl_direct_path_names_the_twin(setup):
    model, clean, corrupted, cache = setup
    with torch.no_grad():
        _, corrupted_cache = model.run_with_cache(corrupted)
    with pytest.raises(HookNameError) as e:
        tlp.get_act_patch_direct_path(model, corrupted, cache, corrupted_cache, metric, 0, 0, verbose=False)
    msg = str(e.value)
    assert "unknown hook name 'blocks.1.attn.hook_q_input'" in msg and "'blocks.1.hook_q_input'" in msg
    assert "transformer_lens.patching.get_act_patch_direct_path adds this hook" in msg
    assert "use hooked_vivit.causal.patching.get_act_patch_direct_path" in msg
    # The flags TransformerLens switched for the sweep are restored, and the twin runs.
    assert not model.cfg.use_split_qkv_input
    twin = vp.get_act_patch_direct_path(model, corrupted, cache, corrupted_cache, metric, 0, 0, verbose=False)
    assert twin.shape == (model.cfg.n_layers, model.cfg.n_heads) and twin[1].abs().sum() > 0


def test_every_tl_helper_the_errors_name_has_a_twin_of_that_name():
    """The model names TransformerLens's helper's twin by its name (the core does not import the causal layer)."""
    for name in dir(tlp):
        if name.startswith("get_act_patch") and name != "get_act_patch_direct_path_all_sources":  # calls the next
            assert callable(getattr(vp, name, None)), name


def test_generic_activation_patch_with_position_axes_points_to_index_df(setup):
    model, _, corrupted, cache = setup

    def setter(act, index, clean):
        act[:, index[1]] = clean[:, index[1]]
        return act

    with pytest.raises(ValueError) as e:
        tlp.generic_activation_patch(
            model, corrupted, cache, metric, setter, "resid_post", index_axis_names=("layer", "pos")
        )
    msg = str(e.value)
    assert msg.startswith("transformer_lens.patching.generic_activation_patch counts the 'pos' axis")
    assert msg.endswith(
        "Instead pass index_df=hooked_vivit.causal.patching.video_index_df(model, axes) to count tokens."
    )
