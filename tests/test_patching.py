"""Video patching: TransformerLens twins equal brute-force loops, the batched engine equals the
one-at-a-time TransformerLens path, both directions, position groups, and hook safety."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching

from hooked_vivit import HookedViViT, compat
from hooked_vivit.causal import patching
from hooked_vivit.causal.metrics import ClassLogit, LogitDiff, SignalRecovery
from hooked_vivit.causal.patching import FrameSlot, Patch, Region
from tests.conftest import SMALL_CONFIGS, make_hf, pixels
from tests.test_analysis import projection
from tests.tolerances import SAFETY, fp32_input_error, fp32_tol

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]


@pytest.fixture(scope="module")
def setup():
    model = HookedViViT.from_hf_model(make_hf(KW))
    clean = pixels(KW, batch=1, seed=1)
    corrupted = clean + 0.3 * pixels(KW, batch=1, seed=2)
    clean_logits, clean_cache = model.run_with_cache(clean)
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupted)
    return model, clean, corrupted, clean_cache, corrupt_cache, clean_logits, corrupt_logits


def metric(logits):
    return logits[:, 2].mean() - logits[:, 5].mean()


def brute_force(model, corrupted, clean_cache, hook_of, index_sets, setter):
    out = []
    for idx in index_sets:
        name = hook_of(idx)

        def hook(act, hook, idx=idx):
            return setter(act.clone(), idx, clean_cache[hook.name])

        out.append(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])))
    return torch.stack(out)


def test_transformer_lens_alone_counts_pixels_not_tokens(setup):
    """Why the twins exist: TransformerLens's helper sizes the position axis by input.shape[-1] (48 pixel
    columns here), so called on the video model it refuses, naming the twin (tests/test_tl_patching_direct.py)."""
    model, clean, corrupted, clean_cache, *_ = setup
    with pytest.raises(
        ValueError, match=r"the width \(48\), not the 49 tokens.*causal\.patching\.get_act_patch_resid_pre"
    ):
        tl_patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    right = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert right.shape == (model.cfg.n_layers, model.cfg.n_ctx)  # 49 tokens


def test_resid_pre_twin_equals_brute_force(setup):
    model, clean, corrupted, clean_cache, *_ = setup
    twin = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    idx = [(l, p) for l in range(model.cfg.n_layers) for p in range(model.cfg.n_ctx)]

    def setter(act, i, src):
        act[:, i[1]] = src[:, i[1]]
        return act

    brute = brute_force(model, corrupted, clean_cache, lambda i: f"blocks.{i[0]}.hook_resid_pre", idx, setter)
    torch.testing.assert_close(twin.flatten(), brute, atol=1e-6, rtol=1e-6)
    assert twin.abs().max() > 0


def test_head_and_pattern_twins_equal_brute_force(setup):
    model, clean, corrupted, clean_cache, *_ = setup
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_ctx
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    assert heads.shape == (L, H)

    def z_setter(act, i, src):
        act[:, :, i[1]] = src[:, :, i[1]]
        return act

    brute = brute_force(
        model,
        corrupted,
        clean_cache,
        lambda i: f"blocks.{i[0]}.attn.hook_z",
        [(l, h) for l in range(L) for h in range(H)],
        z_setter,
    )
    torch.testing.assert_close(heads.flatten(), brute, atol=1e-6, rtol=1e-6)

    pattern = patching.get_act_patch_attn_head_pattern_by_pos(model, corrupted, clean_cache, metric)
    assert pattern.shape == (L, H, P)

    def pattern_setter(act, i, src):
        act[:, i[1], i[2]] = src[:, i[1], i[2]]
        return act

    idx = [(l, h, q) for l in range(L) for h in range(H) for q in range(P)]
    brute = brute_force(
        model, corrupted, clean_cache, lambda i: f"blocks.{i[0]}.attn.hook_pattern", idx, pattern_setter
    )
    torch.testing.assert_close(pattern.flatten(), brute, atol=1e-6, rtol=1e-6)


def test_every_helpers_have_their_axes(setup):
    model, clean, corrupted, clean_cache, *_ = setup
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_ctx
    assert patching.get_act_patch_block_every(model, corrupted, clean_cache, metric).shape == (3, L, P)
    assert patching.get_act_patch_attn_head_all_pos_every(model, corrupted, clean_cache, metric).shape == (5, L, H)
    if compat.PatchingResult is not None:  # per-example results: TransformerLens 4 (tests/test_tl_compat.py covers 3)
        res = patching.get_act_patch_resid_mid(model, corrupted, clean_cache, ClassLogit(2), reduce="none")
        assert res.values.shape == (L, P, 1) and res.axis_names == ["layer", "pos"]


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_engine_equals_transformer_lens_path(setup, chunk_size):
    model, clean, corrupted, clean_cache, *_ = setup
    m = LogitDiff(2, 5)
    twin = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, m)
    sweep = patching.run_patches(
        model,
        patching.token_patches(model, "resid_pre"),
        source_cache=clean_cache,
        target=corrupted,
        metric=m,
        chunk_size=chunk_size,
    )
    torch.testing.assert_close(sweep.values, twin.flatten(), atol=1e-5, rtol=1e-5)

    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, m)
    sweep = patching.run_patches(
        model,
        patching.head_patches(model, "z"),
        source_cache=clean_cache,
        target=corrupted,
        metric=m,
        chunk_size=chunk_size,
    )
    torch.testing.assert_close(sweep.values, heads.flatten(), atol=1e-5, rtol=1e-5)

    pattern = patching.get_act_patch_attn_head_pattern_all_pos(model, corrupted, clean_cache, m)
    sweep = patching.run_patches(
        model,
        patching.head_patches(model, "pattern"),
        source_cache=clean_cache,
        target=corrupted,
        metric=m,
        chunk_size=chunk_size,
    )
    torch.testing.assert_close(sweep.values, pattern.flatten(), atol=1e-5, rtol=1e-5)


def test_engine_head_at_positions_and_embeddings(setup):
    model, clean, corrupted, clean_cache, *_ = setup
    m = LogitDiff(2, 5)
    pos = [0, 3, 17]
    patches = [
        Patch("blocks.1.attn.hook_v", tuple(pos), head=1),
        Patch("hook_embed", tuple(pos)),
        Patch("blocks.0.attn.hook_pattern", (0,), head=2),
    ]
    sweep = patching.run_patches(model, patches, source_cache=clean_cache, target=corrupted, metric=m)

    def v_hook(act, hook):
        act[:, pos, 1] = clean_cache[hook.name][:, pos, 1]
        return act

    def embed_hook(act, hook):
        act[:, pos] = clean_cache[hook.name][:, pos]
        return act

    def pattern_hook(act, hook):
        act[:, 2, 0] = clean_cache[hook.name][:, 2, 0]
        return act

    expected = [
        m(model.run_with_hooks(corrupted, fwd_hooks=[(n, h)])).item()
        for n, h in (
            ("blocks.1.attn.hook_v", v_hook),
            ("hook_embed", embed_hook),
            ("blocks.0.attn.hook_pattern", pattern_hook),
        )
    ]
    torch.testing.assert_close(sweep.values, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_denoise_everything_recovers_clean_and_noise_breaks_it(setup):
    model, clean, corrupted, clean_cache, corrupt_cache, clean_logits, corrupt_logits = setup
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    rec = SignalRecovery(last, clean_cache[last], corrupt_cache[last], positions=0)
    patches = [
        Patch("blocks.0.hook_resid_pre", None, label="all"),
        Patch("blocks.1.hook_resid_pre", (5,), label="one token"),
    ]
    sweep = patching.denoise(model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=rec)
    # Float32 runs through other kernels (SDPA vs explicit path): a few roundings of each residual, times
    # the recovery's conditioning at the clean and the corrupted end (tests/tolerances.py).
    c, k = clean_cache[last][0, 0], corrupt_cache[last][0, 0]
    assert sweep.values[0] == pytest.approx(1.0, abs=fp32_input_error(projection, c, c, k, slack=SAFETY))
    assert abs(sweep.values[1]) < 0.9
    assert sweep.baseline == pytest.approx(0.0, abs=fp32_input_error(projection, k, c, k, slack=SAFETY))
    # Noising: corrupted resid into the clean run gives the corrupted logits.
    broken = patching.noise(model, patches[:1], corrupted_cache=corrupt_cache, clean=clean, metric=ClassLogit(2))
    logit = fp32_tol(clean_logits.abs().max(), model.cfg.d_model)  # float32 logits by other kernels
    assert broken.values[0] == pytest.approx(float(corrupt_logits[0, 2]), abs=logit)
    assert broken.baseline == pytest.approx(float(clean_logits[0, 2]), abs=logit)


def test_batch_target_with_broadcast_source(setup):
    model, clean, corrupted, clean_cache, *_ = setup
    targets = torch.cat([corrupted, clean + 0.5 * pixels(KW, batch=1, seed=9)])
    patches = patching.component_patches(model)
    sweep = patching.run_patches(model, patches, source_cache=clean_cache, target=targets, metric=ClassLogit(1))
    assert sweep.per_example.shape == (len(patches), 2)
    for row in range(2):
        single = patching.run_patches(
            model, patches, source_cache=clean_cache, target=targets[row : row + 1], metric=ClassLogit(1)
        )
        torch.testing.assert_close(sweep.per_example[:, row], single.values, atol=1e-5, rtol=1e-5)
    assert sweep.labels[:2] == ["L0 attn_out", "L0 mlp_out"]


def test_position_groups(setup):
    model = setup[0]
    grid = model.cfg.grid
    assert patching.resolve_positions(model, "cls") == (0,)
    assert patching.resolve_positions(model, None) is None
    assert patching.resolve_positions(model, FrameSlot(1)) == tuple(range(1 + 24, 1 + 48))
    box = patching.resolve_positions(model, Region(frame_slots=[1], rows=[0, 1], cols=[2], include_cls=True))
    assert box == (0, grid.index(1, 0, 2), grid.index(1, 1, 2))
    assert len(patching.frame_slot_patches(model)) == model.cfg.n_layers * grid.n_frame_slots
    with pytest.raises(ValueError, match="unknown position group 'ball'"):
        patching.resolve_positions(model, "ball")
    with pytest.raises(ValueError, match=r"token position 60 is out of range 0\.\.48"):
        patching.resolve_positions(model, [3, 60])


def test_hooks_gone_after_errors(setup):
    model, clean, corrupted, clean_cache, *_ = setup

    def bad_metric(logits):
        raise RuntimeError("metric exploded")

    with pytest.raises(RuntimeError, match="metric exploded"):
        patching.run_patches(
            model, patching.component_patches(model), source_cache=clean_cache, target=corrupted, metric=bad_metric
        )
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    with pytest.raises(RuntimeError, match="metric exploded"):
        patching.get_act_patch_attn_out(model, corrupted, clean_cache, bad_metric)
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    broken_cache = {"blocks.0.hook_resid_pre": clean_cache["blocks.0.hook_resid_pre"][:, :10]}
    with pytest.raises(ValueError, match="source activation blocks.0.hook_resid_pre has shape"):
        patching.run_patches(
            model, [Patch("blocks.0.hook_resid_pre")], source_cache=broken_cache, target=corrupted, metric=ClassLogit(0)
        )
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_clear_errors_for_mismatched_caches(setup):
    model, clean, corrupted, clean_cache, *_ = setup
    other_kw = SMALL_CONFIGS["3layers_4x4x4"]
    other = HookedViViT.from_hf_model(make_hf(other_kw))
    _, other_cache = other.run_with_cache(pixels(other_kw, batch=1))
    with pytest.raises(ValueError, match="cache comes from a model of another shape: n_layers: cache 3 vs model 2"):
        patching.run_patches(
            model, [Patch("blocks.0.hook_resid_pre")], source_cache=other_cache, target=corrupted, metric=ClassLogit(0)
        )
    _, partial_cache = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="lacks 'blocks.1.hook_mlp_out'"):
        patching.run_patches(
            model, [Patch("blocks.1.hook_mlp_out")], source_cache=partial_cache, target=corrupted, metric=ClassLogit(0)
        )
    _, batch3 = model.run_with_cache(torch.cat([clean] * 3))
    with pytest.raises(ValueError, match="batch 3"):
        patching.run_patches(
            model,
            [Patch("blocks.0.hook_resid_pre")],
            source_cache=batch3,
            target=torch.cat([corrupted] * 2),
            metric=ClassLogit(0),
        )
    with pytest.raises(ValueError, match="has no head axis"):
        patching.run_patches(
            model,
            [Patch("blocks.0.hook_resid_pre", head=1)],
            source_cache=clean_cache,
            target=corrupted,
            metric=ClassLogit(0),
        )


def test_scoring_protocol_logit_function_and_activation_metric(setup):
    """The engine scores a plain logit function with logits alone and an ActivationMetric with the
    hooks it declares; both equal the same function applied to a hand-written patched run."""
    from hooked_vivit.causal.metrics import ActivationMetric, metric_hooks

    model, clean, corrupted, clean_cache, *_ = setup
    read = "blocks.1.hook_resid_post"

    def cls_norm(logits, activations):  # reads an activation: must be declared
        return activations[read][:, 0].norm(dim=-1) + logits[:, 0]

    def logit_gap(logits):  # TL's convention: logits only
        return logits[:, 2] - logits[:, 5]

    with_act = ActivationMetric(cls_norm, hooks=read)
    assert metric_hooks(with_act) == (read,) and metric_hooks(logit_gap) == ()
    patches = patching.component_patches(model)[:3]
    for m in (logit_gap, with_act):
        sweep = patching.run_patches(model, patches, source_cache=clean_cache, target=corrupted, metric=m)
        expected = []
        for p in patches:
            hook_name = p.hook

            def put(act, hook, name=hook_name):
                return clean_cache[name]

            with model.hooks(fwd_hooks=[(hook_name, put)]):
                logits, cache = model.run_with_cache(corrupted, names_filter=[read])
            expected.append(m(logits, {read: cache[read]}) if m is with_act else m(logits))
        torch.testing.assert_close(sweep.values, torch.cat(expected), atol=1e-5, rtol=1e-5)
