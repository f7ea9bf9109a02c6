"""HookedTimeSformer against transformers.TimesformerForVideoClassification / TimesformerModel
(divided space-time attention): parity (logits, every hidden state, every spatial and temporal
attention pattern) with every parameter perturbed, the key layouts, the complete residual
decomposition, the layout helpers against brute-force loops, weight processing, the CLI, analysis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TimesformerConfig, TimesformerForVideoClassification, TimesformerModel

from hooked_vivit import HookedTimeSformer, HookedVideoTransformer, HookedViViT
from hooked_vivit.cache_memory import hook_shape
from hooked_vivit.parity import compare
from hooked_vivit.testing import TIMESFORMER_CONFIGS as CONFIGS
from hooked_vivit.testing import make_timesformer as make_hf
from hooked_vivit.testing import max_rel
from hooked_vivit.testing import timesformer_pixels as pixels
from tests.test_analysis import projection
from tests.tolerances import fp32_input_error
from weights_conversion import CheckpointError, converter

TOL = 1e-5


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    kw = CONFIGS[request.param]
    hf = make_hf(kw)
    return request.param, kw, hf, HookedTimeSformer.from_hf_model(hf)


def test_every_hf_parameter_is_perturbed(pair):
    _, _, hf, _ = pair
    fresh = dict(TimesformerForVideoClassification(hf.config).named_parameters())
    for name, p in hf.named_parameters():
        assert not torch.equal(p, fresh[name]), name


def test_parity_logits_hidden_states_both_patterns(pair):
    name, kw, hf, model = pair
    report = compare(model, hf, pixels(kw))
    names = [r.name for r in report.rows]
    assert "temporal pattern 0" in names and "pattern 0" in names and "logits" in names
    assert len(names) == 2 + 3 * kw["num_hidden_layers"]
    assert report.ok(TOL), report.to_markdown(TOL)


def test_transformers_has_no_sdpa_timesformer():
    """HF TimeSformer has one (eager) attention; parity is against it. Our fused path is checked
    against our explicit path below and against HF eager in the other tests."""
    with pytest.raises(ValueError, match="does not support"):
        TimesformerForVideoClassification._from_config(
            TimesformerConfig(**CONFIGS["3layers_one_patch"]), attn_implementation="sdpa"
        )


def test_fast_path_equals_explicit_path(pair):
    _, kw, hf, model = pair
    x = pixels(kw)
    with torch.no_grad():
        fused = model(x)
        model.cfg.use_sdpa = False
        try:
            explicit = model(x)
        finally:
            model.cfg.use_sdpa = True
        ref = hf(x).logits
    assert max_rel(fused, ref) <= TOL and max_rel(explicit, ref) <= TOL


def test_backbone():
    kw = CONFIGS["26px_3frames_3heads"]
    hf = make_hf(kw, cls=TimesformerModel)
    model = HookedVideoTransformer.from_hf_model(hf)
    assert isinstance(model, HookedTimeSformer) and model.unembed is None
    x = pixels(kw)
    with torch.no_grad():
        assert max_rel(model(x), hf(x).last_hidden_state[:, 0]) <= TOL
    assert compare(model, hf, x).ok(TOL)


def test_hf_token_order_is_transformers_order():
    kw = CONFIGS["26px_3frames_3heads"]
    model = HookedTimeSformer.from_hf_model(make_hf(kw))
    order = model.hf_token_order()
    grid = model.cfg.grid
    T = 3
    for t in range(T):
        for r in range(3):
            for c in range(3):
                n = r * 3 + c
                assert order[grid.index(t, r, c)] == 1 + n * T + t  # transformers: position-major
    assert order[0] == 0 and sorted(order.tolist()) == list(range(grid.n_ctx))


@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_checkpoint_layouts_round_trip_and_load_in_transformers(pair, layout, tmp_path):
    _, kw, hf, model = pair
    sd = converter("timesformer").to_hf(model.state_dict(), model.cfg, layout=layout)
    assert set(sd) == set(hf.state_dict())
    reloaded = TimesformerForVideoClassification(hf.config).eval()
    reloaded.load_state_dict(sd, strict=True)
    x = pixels(kw)
    with torch.no_grad():
        assert max_rel(reloaded(x).logits, hf(x).logits) <= TOL
    # Without the prefix, and back to hooked: the same weights.
    bare = {k.removeprefix("timesformer."): v for k, v in hf.state_dict().items()}
    again = converter("timesformer").to_hooked(bare, model.cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(again[k], v), k


def test_temporal_dense_is_folded_into_W_O(pair):
    _, _, hf, model = pair
    layer = hf.timesformer.encoder.layer[0]
    H, E, d = model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model
    W = layer.temporal_attention.output.dense.weight.T @ layer.temporal_dense.weight.T  # [(h e), d]
    torch.testing.assert_close(model.blocks[0].temporal_attn.W_O, W.reshape(H, E, d), atol=1e-6, rtol=1e-6)


def test_missing_and_wrong_keys_are_named():
    kw = CONFIGS["3layers_one_patch"]
    hf = make_hf(kw)
    cfg = HookedTimeSformer.from_hf_model(hf).cfg
    sd = dict(hf.state_dict())
    del sd["timesformer.encoder.layer.1.temporal_dense.weight"]
    with pytest.raises(CheckpointError, match="encoder.layer.1.temporal_dense.weight"):
        converter("timesformer").to_hooked(sd, cfg)


def test_other_attention_types_and_nonsquare_configs_are_refused():
    with pytest.raises(ValueError, match="divided_space_time"):
        HookedTimeSformer.config_class.from_hf_config(TimesformerConfig(attention_type="space_only"))
    with pytest.raises(ValueError, match="must be ints"):
        HookedTimeSformer.config_class.from_hf_config({"model_type": "timesformer", "image_size": [32, 48]})
    with pytest.raises(ValueError, match="tubelet_size must be"):
        HookedTimeSformer.config_class(tubelet_size=(2, 16, 16))


@pytest.mark.parametrize("layout", ["transformers", "hooked"])
def test_save_pretrained_round_trip(pair, layout, tmp_path):
    _, kw, hf, model = pair
    model.save_pretrained(tmp_path / "m", layout=layout)
    loaded = HookedVideoTransformer.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, HookedTimeSformer)
    x = pixels(kw)
    with torch.no_grad():
        assert max_rel(loaded(x), hf(x).logits) <= TOL
    if layout == "transformers":
        with torch.no_grad():
            assert (
                max_rel(TimesformerForVideoClassification.from_pretrained(tmp_path / "m")(x).logits, hf(x).logits)
                <= TOL
            )
    with pytest.raises(ValueError, match="is a HookedTimeSformer, not a HookedViViT"):
        HookedViViT.from_pretrained(tmp_path / "m")


# ------------------------------------------------------------------ hooks
@pytest.fixture(scope="module")
def tiny():
    kw = CONFIGS["26px_3frames_3heads"]
    hf = make_hf(kw)
    model = HookedTimeSformer.from_hf_model(hf)
    x = pixels(kw)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    return model, hf, x, logits, cache


def test_every_hook_fires_with_its_documented_shape(tiny):
    model, _, x, _, cache = tiny
    for name in model.hook_dict:
        expected = hook_shape(model.cfg, name, x.shape[0])
        if expected is None:
            assert name not in cache.cache_dict, name
        else:
            assert tuple(cache[name].shape) == expected, name
    B, T, N, H = 2, 3, 9, 3
    assert cache["blocks.0.temporal_attn.hook_pattern"].shape == (B * N, H, T, T)
    assert cache["blocks.0.attn.hook_pattern"].shape == (B * T, H, 1 + N, 1 + N)
    for leaf in model.hook_axes:
        assert any(n.endswith(leaf) for n in model.hook_dict), leaf


def test_residual_decomposition_is_complete(tiny):
    model, _, _, _, cache = tiny
    L = model.cfg.n_layers
    stack, labels = cache.decompose_resid(layer=None, mode="all", apply_ln=False, return_labels=True)
    assert labels[:3] == ["embed", "pos_embed", "time_embed"] and labels[3:6] == [
        "0_temporal_attn_out",
        "0_attn_out",
        "0_mlp_out",
    ]
    assert len(labels) == 3 + 3 * L
    torch.testing.assert_close(stack.sum(0), cache["resid_post", L - 1], atol=1e-5, rtol=0)
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), cache["resid_mid", 1], atol=1e-5, rtol=0)
    # Through ln2 (which reads resid_mid): the stack's normalised sum is ln2's input normalised.
    normed = cache.decompose_resid(layer=1, mlp_input=True, apply_ln=True).sum(0)
    centred = cache["resid_mid", 1] - cache["resid_mid", 1].mean(-1, keepdim=True)
    torch.testing.assert_close(normed, centred / cache["blocks.1.ln2.hook_scale"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ln1 reads the stream after the temporal attention"):
        cache.decompose_resid(layer=1, apply_ln=True)
    # Temporal attention writes nothing to CLS; the MLP reads what both attentions wrote.
    assert torch.equal(
        cache["blocks.0.hook_temporal_attn_out"][:, 0], torch.zeros_like(cache["blocks.0.hook_temporal_attn_out"][:, 0])
    )
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_mid_temporal"] + cache["blocks.0.hook_attn_out"], cache["resid_mid", 0]
    )


def test_layout_helpers_against_loops(tiny):
    model, _, _, _, cache = tiny
    B, T, N = 2, 3, 9
    z_t = cache["blocks.1.temporal_attn.hook_z"]  # [B*N, T, H, E]
    z_s = cache["blocks.1.attn.hook_z"]  # [B*T, 1+N, H, E]
    on_tokens_t = model.temporal_to_tokens(z_t)
    on_tokens_s = model.spatial_to_tokens(z_s, cls="first")
    grid = model.cfg.grid
    for b in range(B):
        for t in range(T):
            for n in range(N):
                i = grid.index(t, n // 3, n % 3)
                assert torch.equal(on_tokens_t[b, i - 1], z_t[b * N + n, t])
                assert torch.equal(on_tokens_s[b, i], z_s[b * T + t, 1 + n])
        assert torch.equal(on_tokens_s[b, 0], z_s[b * T, 0])


def test_cls_attention_on_the_grid_gives_the_cls_output_exactly(tiny):
    """CLS's effective row (frames' CLS rows / frames, the block averages them) with the values
    on the grid reproduces what the spatial attention writes to CLS, and attention_rows (fused path)
    equals it."""
    model, _, x, _, cache = tiny
    for l in range(model.cfg.n_layers):
        attn = model.blocks[l].attn
        rows = model.cls_pattern_on_tokens(cache["pattern", l])  # [B, H, n_ctx]
        torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))
        v = model.spatial_to_tokens(cache[f"blocks.{l}.attn.hook_v"], cls="first")  # [B, n_ctx, H, E]
        # The CLS copies' values differ per frame only if their inputs did: they do not.
        frames_cls_v = cache[f"blocks.{l}.attn.hook_v"][:, 0].reshape(2, 3, *v.shape[2:])
        torch.testing.assert_close(frames_cls_v, frames_cls_v[:, :1].expand_as(frames_cls_v))
        out = torch.einsum("bhp,bphe,hed->bd", rows, v, attn.W_O) + attn.b_O
        torch.testing.assert_close(out, cache["attn_out", l][:, 0], atol=1e-5, rtol=1e-5)
    fused = model.attention_rows(x)
    assert fused.shape == (2, model.cfg.n_layers, 3, 1, model.cfg.n_ctx)
    for l in range(model.cfg.n_layers):
        torch.testing.assert_close(
            fused[:, l, :, 0], model.cls_pattern_on_tokens(cache["pattern", l]), atol=1e-6, rtol=1e-6
        )


def test_head_results_sum_to_both_attention_outputs(tiny):
    model, _, x, logits, cache = tiny
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            out, c = model.run_with_cache(x)
    finally:
        model.set_use_attn_result(False)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
    blk = model.blocks[0]
    temporal = model.temporal_to_tokens(c["blocks.0.temporal_attn.hook_result"].sum(2) + blk.temporal_attn.b_O)
    torch.testing.assert_close(temporal, c["blocks.0.hook_temporal_attn_out"][:, 1:], atol=1e-5, rtol=1e-5)
    spatial = model.spatial_to_tokens(c["blocks.0.attn.hook_result"].sum(2) + blk.attn.b_O, cls="mean")
    torch.testing.assert_close(spatial, c["blocks.0.hook_attn_out"], atol=1e-5, rtol=1e-5)


def test_split_inputs_are_refused_with_a_reason(tiny):
    model = tiny[0]
    with pytest.raises(ValueError, match="not available on TimeSformer"):
        model.set_use_split_qkv_input(True)
    with pytest.raises(ValueError, match="not available on TimeSformer"):
        model.set_use_attn_in(True)


def test_weight_processing_keeps_the_logits(pair):
    _, kw, hf, _ = pair
    x = pixels(kw)
    with torch.no_grad():
        ref = hf(x).logits
        processed = HookedTimeSformer.from_hf_model(
            hf, fold_ln=True, center_writing_weights=True, fold_value_biases=True
        )
        assert max_rel(processed(x), ref) <= 1e-4
        model = HookedTimeSformer.from_hf_model(hf)
        model.process_weights_()
        assert model.blocks[0].ln_temporal.w is None
        assert max_rel(model(x), ref) <= 1e-4
    W = processed.blocks[0].temporal_attn.W_O
    torch.testing.assert_close(W.mean(-1), torch.zeros_like(W.mean(-1)), atol=1e-6, rtol=0)


def test_cli_parity_and_info(tmp_path, capsys):
    from hooked_vivit import cli

    model = HookedTimeSformer.from_hf_model(make_hf(CONFIGS["26px_3frames_3heads"]))
    model.save_pretrained(tmp_path / "m")
    assert cli.main(["parity", "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "temporal pattern 1" in out and "pattern 1" in out and "logits" in out and "PASS" in out
    assert cli.main(["info", "--model", str(tmp_path / "m"), "--hooks"]) == 0
    out = capsys.readouterr().out
    assert "HookedTimeSformer" in out and "blocks.1.temporal_attn.hook_pattern" in out and "hook_time_embed" in out


@pytest.mark.slow
def test_timesformer_b_kinetics400_shape_random_weights():
    """The real config (facebook/timesformer-base-finetuned-k400): 8 frames, 224 px, 1 + 8 x 196 tokens,
    12 layers, random perturbed weights. Logits, every hidden state, first and last layers' spatial
    and temporal patterns."""
    kw = dict(num_labels=400)
    hf = make_hf(kw)
    model = HookedTimeSformer.from_hf_model(hf)
    assert model.cfg.n_ctx == 1569
    # temporal_dense is folded away: 12 x (768 x 768 + 768) fewer numbers.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters()) - 12 * (
        768 * 768 + 768
    )
    x = torch.randn(1, 8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    names = [f"blocks.{l}.hook_resid_pre" for l in range(12)] + ["blocks.11.hook_resid_post"]
    names += [f"blocks.{l}.{a}.hook_pattern" for l in (0, 11) for a in ("attn", "temporal_attn")]
    with torch.no_grad(), HookedTimeSformer.hf_temporal_patterns(hf) as temporal:
        ref = hf(x, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(x, names_filter=names)
    order = model.hf_token_order()
    worst = {"logits": max_rel(logits, ref.logits)}
    for l in range(12):
        worst[f"resid_pre{l}"] = max_rel(cache["resid_pre", l], ref.hidden_states[l][:, order])
    worst["resid_post11"] = max_rel(cache["resid_post", 11], ref.hidden_states[12][:, order])
    for l in (0, 11):
        worst[f"pattern{l}"] = max_rel(cache["pattern", l], ref.attentions[l])
        worst[f"temporal_pattern{l}"] = max_rel(cache[f"blocks.{l}.temporal_attn.hook_pattern"], temporal[l])
    assert max(worst.values()) <= TOL, worst


# ------------------------------------------------------------------ analysis on a tiny TimeSformer
ANALYSIS = dict(
    image_size=32,
    patch_size=8,
    num_frames=8,
    hidden_size=24,
    num_attention_heads=3,
    num_hidden_layers=2,
    intermediate_size=48,
    num_labels=6,
)


@pytest.fixture(scope="module")
def analysis_model():
    return HookedTimeSformer.from_hf_model(make_hf(ANALYSIS, seed=3))


def test_token_dla_sums_to_each_spatial_heads_cls_write(analysis_model):
    """token_dla reads CLS's effective attention (frames' CLS rows / frames): summed over sources it
    is each spatial head's write to CLS (mean over frames of hook_result at CLS) through ln_final."""
    from hooked_vivit.analysis import experiments as ex

    model = analysis_model
    x = pixels(ANALYSIS, batch=1, seed=4)
    c = 2
    dla = ex.token_dla(model, x, c)
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(x)
    finally:
        model.set_use_attn_result(False)
    direction = ex.class_direction(model, c)
    scale = cache["ln_final.hook_scale"][0, 0, 0]
    for l in range(model.cfg.n_layers):
        cls_write = cache[f"blocks.{l}.attn.hook_result"][:, 0].mean(0)  # [H, d]: frames averaged, as the block does
        cls_write = cls_write - cls_write.mean(-1, keepdim=True)
        torch.testing.assert_close(dla["terms"][l].sum(-1), cls_write @ direction / scale, atol=1e-5, rtol=1e-4)
    # Temporal attention writes nothing to CLS, so the spatial heads are every attention head the logit sees.
    assert np.array(dla["heatmap"]).shape == model.cfg.grid.shape == (8, 4, 4)


def test_patching_both_attentions_equals_a_hand_written_hook(analysis_model):
    from hooked_vivit.causal import patching
    from hooked_vivit.causal.metrics import LogitDiff

    model = analysis_model
    clean, corrupted = pixels(ANALYSIS, batch=1, seed=5), pixels(ANALYSIS, batch=1, seed=6)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    metric = LogitDiff(1, 3)
    patches = patching.component_patches(model, ("temporal_attn_out", "attn_out", "mlp_out"))
    sweep = patching.run_patches(model, patches, source_cache=clean_cache, target=corrupted, metric=metric)
    for i, name in enumerate(["blocks.0.hook_temporal_attn_out", "blocks.0.hook_attn_out"]):

        def put(act, hook, name=name):
            return clean_cache[name].clone()

        with torch.no_grad():
            logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, put)])
        assert float(sweep.values[i]) == pytest.approx(float(logits[0, 1] - logits[0, 3]), abs=1e-5)
    # Heads of both attentions, patched through z in their own [batch * positions | frames, ...]
    # layouts by the batched engine (several variants per forward, two target clips), against a hook.
    targets = torch.cat([corrupted, pixels(ANALYSIS, batch=1, seed=8)])
    heads = [patching.Patch(f"blocks.1.{a}.hook_z", head=h) for a in ("temporal_attn", "attn") for h in range(3)]
    sweep = patching.run_patches(model, heads, source_cache=clean_cache, target=targets, metric=metric, chunk_size=4)
    for i, p in enumerate(heads):

        def put_head(act, hook, h=p.head):
            src = clean_cache[hook.name][:, :, h]
            act[:, :, h] = src.repeat(2, *[1] * (src.ndim - 1))
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(targets, fwd_hooks=[(p.hook, put_head)])
        torch.testing.assert_close(sweep.per_example[i], (logits[:, 1] - logits[:, 3]).float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batches over frames or positions"):
        patching.run_patches(
            model,
            [patching.Patch("blocks.0.attn.hook_z", head=0, positions=(1,))],
            source_cache=clean_cache,
            target=corrupted,
            metric=metric,
        )


def test_viewer_and_frame_to_frame_maps(analysis_model):
    from hooked_vivit import viewer

    model = analysis_model
    x = pixels(ANALYSIS, batch=1, seed=7)
    rows = model.attention_rows(x)[0, :, :, 0]  # [L, H, n_ctx]
    torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("temporal_attn.hook_pattern"))
    frame_maps = model.temporal_maps(cache, 0)  # [H, frames, frames, rows, cols]
    pattern = cache["blocks.0.temporal_attn.hook_pattern"]  # [positions, H, T, T]
    assert frame_maps.shape == (3, 8, 8, 4, 4)
    for n in (0, 5, 15):
        assert torch.equal(frame_maps[:, :, :, n // 4, n % 4], pattern[n])
    torch.testing.assert_close(frame_maps.sum(2), torch.ones_like(frame_maps.sum(2)))
    maps = viewer.token_maps(model, x, "frame_attention")  # [L, H, frames, rows, cols]
    np.testing.assert_allclose(maps[0], frame_maps.mean(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        viewer.token_maps(model, x, "cls_attention")[1], model.cfg.grid.unflatten(rows[1])[1].numpy(), atol=1e-6
    )
    assert viewer.token_maps(model, x, "attribution").shape == (2, 3, 8, 4, 4)


def test_analyze_command_on_a_tiny_timesformer(analysis_model, tmp_path):
    from hooked_vivit.cli import main

    ckpt = analysis_model.save_pretrained(tmp_path / "tsf")
    out = tmp_path / "report"
    assert (
        main(
            [
                "analyze",
                "--model",
                str(ckpt),
                "--domain",
                "bowling",
                "--seed",
                "4000001",
                "--probe-pairs",
                "6",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    import json

    data = json.loads((out / "results.json").read_text())
    assert {"deltas", "recovery", "dla", "cls_attention", "probes", "outcome"} <= set(data)
    assert np.array(data["cls_attention"]["grid"]).shape == (2, 3, 8, 4, 4)  # layers, heads, frames, rows, cols
    assert (out / "report.html").exists()


def test_component_recovery_has_the_temporal_attention_and_equals_hand_written_patches(analysis_model):
    """analyze's component recovery patches three writers per block (temporal attention, spatial
    attention, MLP); each value equals a run_with_hooks patch measured by hand on the last resid_post."""
    from hooked_vivit.analysis import experiments as ex

    # float64: an exact claim (tests/tolerances.py); the library's float32 reads are bounded per value
    model = HookedTimeSformer.from_hf_model(make_hf(ANALYSIS, seed=3), dtype=torch.float64)
    pos, neg = pixels(ANALYSIS, batch=1, seed=5), pixels(ANALYSIS, batch=1, seed=6)
    assert ex.component_kinds(model) == ("temporal_attn_out", "attn_out", "mlp_out")
    rec = ex.component_recovery(model, pos, neg)
    assert set(rec["variants"]["cls_projection"]) == {"temporal_attn", "attn", "mlp"}
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, clean = model.run_with_cache(pos)
        _, corrupt = model.run_with_cache(neg, names_filter=last)
    for l in range(model.cfg.n_layers):
        for kind in ex.component_kinds(model):
            name = f"blocks.{l}.hook_{kind}"
            kept = {}
            with torch.no_grad():
                model.run_with_hooks(
                    neg,
                    fwd_hooks=[
                        (name, lambda act, hook: clean[hook.name]),
                        (last, lambda act, hook: kept.__setitem__("r", act.clone())),
                    ],
                )
            key = kind.removesuffix("_out")
            for variant, rows in (
                ("cls_projection", lambda t: t[0, 0]),
                ("token_projection", lambda t: t[0].flatten()),
            ):
                a, c, k = (rows(t) for t in (kept["r"], clean[last], corrupt[last]))
                want = pytest.approx(float(projection(a, c, k)), abs=fp32_input_error(projection, a, c, k))
                assert rec["variants"][variant][key][l] == want, (variant, key, l)


def test_attribution_patching_scores_both_attentions_per_token(analysis_model):
    """attribution_patch on TimeSformer's z hooks ([batch * positions, frames, ...] temporal,
    [batch * frames, 1 + patches, ...] spatial): each (token, head) score is (clean - corrupt) . grad
    summed over d_head at that token's row, by a hand-written loop; CLS sums its frames' copies."""
    from hooked_vivit.causal.attribution import attribution_patch
    from hooked_vivit.causal.metrics import LogitDiff

    model = analysis_model
    clean, corrupted = pixels(ANALYSIS, batch=1, seed=5), pixels(ANALYSIS, batch=1, seed=6)
    metric = LogitDiff(1, 3)
    acts = ("temporal_attn.hook_z", "z", "temporal_attn_out")
    attr = attribution_patch(model, clean, corrupted, metric, acts=acts)
    T, N, H = model.cfg.num_frames, model.cfg.grid.n_rows * model.cfg.grid.n_cols, model.cfg.n_heads
    names = [f"blocks.{l}.{h}" for l in range(2) for h in ("temporal_attn.hook_z", "attn.hook_z")]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept[hook.name] = act
        return act

    x = corrupted.clone()
    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
        emb = model(x, stop_at_layer=0).detach().requires_grad_(True)
        metric(model(emb, start_at_layer=0)).sum().backward()
    for l in range(2):
        temporal = ((clean_cache[names[2 * l]] - kept[names[2 * l]].detach()) * kept[names[2 * l]].grad).sum(-1)
        spatial = ((clean_cache[names[2 * l + 1]] - kept[names[2 * l + 1]].detach()) * kept[names[2 * l + 1]].grad).sum(
            -1
        )
        want_t, want_s = torch.zeros(1 + T * N, H), torch.zeros(1 + T * N, H)
        for t in range(T):
            want_s[0] += spatial[t, 0]  # [T, 1 + N, H]: CLS, once per frame
            for n in range(N):
                want_t[1 + t * N + n] = temporal[n, t]  # [N, T, H]: CLS takes no part
                want_s[1 + t * N + n] = spatial[t, 1 + n]
        torch.testing.assert_close(attr.scores["temporal_attn.hook_z"][l], want_t, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(attr.scores["z"][l], want_s, atol=1e-6, rtol=1e-4)
    assert attr.scores["temporal_attn_out"].shape == (2, 1 + T * N)
    with pytest.raises(ValueError, match="query and a key axis"):
        attribution_patch(model, clean, corrupted, metric, acts=("temporal_attn.hook_pattern",))


def test_study_runs_on_a_tiny_timesformer(analysis_model, tmp_path):
    from hooked_vivit.analysis import pipeline

    studies = pipeline.run_study(
        analysis_model, ["golf"], 3, tmp_path / "study", progress=False, outcome_pairs=2, probe_pairs=5
    )
    st = studies[0]
    temporal = st["recovery"]["cls_projection"]["temporal_attn"]
    assert len(temporal["per_pair"]) == 3 and len(temporal["mean"]) == 2 and "temporal_attn" not in st
    assert set(st["recovery"]["cls_projection"]) == {"attn", "mlp", "temporal_attn"}
    np.testing.assert_allclose(temporal["mean"], np.mean(temporal["per_pair"], 0))
    assert (tmp_path / "study" / "report.html").exists()
