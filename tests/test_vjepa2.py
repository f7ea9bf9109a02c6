"""HookedVJEPA2 against transformers.VJEPA2ForVideoClassification / VJEPA2Model with every parameter
perturbed: parity (eager and sdpa; logits, every hidden state, every encoder and pooler attention
pattern), the rotary embedding to the bit, patterns only when asked for, the residual decomposition,
hook shapes, checkpoint layouts both ways, the parity and info commands, patching and the viewer."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model

from hooked_vivit import HookedVideoTransformer, HookedVJEPA2
from hooked_vivit.cache_memory import estimate_cache_bytes, hook_shape
from hooked_vivit.parity import compare
from hooked_vivit.testing import make_hf_model, random_pixels
from tests.conftest import max_rel
from tests.test_analysis import projection
from tests.tolerances import fp32_input_error, fp32_tol
from weights_conversion import CheckpointError

TOL = 1e-5

_PRED = dict(pred_hidden_size=12, pred_num_attention_heads=2, pred_num_hidden_layers=1)
# Odd shapes: d_head 10 (6 rotated dims, 4 not), d_head 7 (odd: 6 rotated, 1 not), d_head 24 (all
# rotated), no qkv bias, tubelet 1 and 4, mlp_ratio other than 4 (the pooler keeps 4), 0..2 pooler
# self-attention layers, a tanh gelu.
CONFIGS = {
    "dhead10_ratio3": dict(
        crop_size=24,
        patch_size=8,
        frames_per_clip=6,
        tubelet_size=2,
        hidden_size=30,
        num_attention_heads=3,
        num_hidden_layers=2,
        num_pooler_layers=2,
        mlp_ratio=3.0,
        num_labels=5,
        **_PRED,
    ),
    "dhead7_nobias_tubelet1": dict(
        crop_size=16,
        patch_size=4,
        frames_per_clip=3,
        tubelet_size=1,
        hidden_size=21,
        num_attention_heads=3,
        num_hidden_layers=1,
        num_pooler_layers=1,
        mlp_ratio=2.5,
        qkv_bias=False,
        num_labels=4,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-5,
        **_PRED,
    ),
    "dhead24_3layers_nopoolerblocks": dict(
        crop_size=32,
        patch_size=16,
        frames_per_clip=8,
        tubelet_size=4,
        hidden_size=48,
        num_attention_heads=2,
        num_hidden_layers=3,
        num_pooler_layers=0,
        num_labels=3,
        **_PRED,
    ),
}


def make_hf(kw: dict, attn: str = "eager", seed: int = 0, cls=VJEPA2ForVideoClassification):
    return make_hf_model(cls, VJEPA2Config(**kw), attn, seed)


def pixels(kw: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return random_pixels(kw["frames_per_clip"], kw["crop_size"], batch, seed)


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    kw = CONFIGS[request.param]
    hf = make_hf(kw)
    return request.param, kw, hf, HookedVJEPA2.from_hf_model(hf)


def _pooler_patterns(hf) -> tuple[list, dict]:
    """Forward hooks that keep the eager pooler attentions (transformers returns only the encoder's)."""
    kept: dict[str, torch.Tensor] = {}
    handles = []
    modules = {
        f"pooler.blocks.{i}.attn.hook_pattern": layer.self_attn
        for i, layer in enumerate(hf.pooler.self_attention_layers)
    }
    modules["pooler.cross.attn.hook_pattern"] = hf.pooler.cross_attention_layer.cross_attn
    for name, module in modules.items():
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: kept.__setitem__(name, o[1])))
    return handles, kept


def test_every_hf_parameter_is_perturbed(pair):
    _, _, hf, _ = pair
    fresh = dict(VJEPA2ForVideoClassification._from_config(hf.config).named_parameters())
    for name, p in hf.named_parameters():
        assert not torch.equal(p, fresh[name]), name


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_parity(pair, attn):
    name, kw, hf, model = pair
    report = compare(model, hf, pixels(kw), attn=attn)
    n = kw["num_hidden_layers"]
    assert len(report.rows) == 1 + n * (2 if attn == "eager" else 1) + 1
    assert report.ok(TOL), (name, attn, report.to_markdown(TOL))


def test_pooler_patterns_and_output_match_transformers(pair):
    name, kw, hf, model = pair
    x = pixels(kw)
    hf.set_attn_implementation("eager")  # the shared fixture may have been switched to sdpa
    handles, kept = _pooler_patterns(hf)
    try:
        with torch.no_grad():
            ref = hf(x).logits
            pooled_ref = hf.pooler(hf.vjepa2(x, skip_predictor=True).last_hidden_state)
    finally:
        for h in handles:
            h.remove()
    logits, cache = model.run_with_cache(
        x, names_filter=lambda n: n.endswith("hook_pattern") or n == "pooler.cross.hook_resid_post"
    )
    assert len(kept) == kw["num_pooler_layers"] + 1
    for hook_name, pattern in kept.items():
        assert cache[hook_name].shape == pattern.shape
        assert max_rel(cache[hook_name], pattern) <= TOL, hook_name
    assert max_rel(cache["pooler.cross.hook_resid_post"][:, 0], pooled_ref) <= TOL
    assert max_rel(logits, ref) <= TOL


def test_backbone_returns_last_hidden_state_and_matches_vjepa2model():
    kw = CONFIGS["dhead10_ratio3"]
    hf = make_hf(kw, cls=VJEPA2Model)
    model = HookedVideoTransformer.from_hf_model(hf)
    assert type(model) is HookedVJEPA2 and model.pooler is None and model.unembed is None
    for attn in ("eager", "sdpa"):
        report = compare(model, hf, pixels(kw), attn=attn)
        assert report.rows[-1].name == "last_hidden_state" and report.ok(TOL), report.to_markdown(TOL)


def test_rotated_q_and_k_are_transformers_rotation_to_the_bit(pair):
    _, kw, hf, model = pair
    x = pixels(kw)
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.0.attn.hook_"))
    rope = hf.vjepa2.encoder.layer[0].attention
    pos = rope.get_position_ids(cache["blocks.0.attn.hook_q"])
    for raw, rotated in (("hook_q", "hook_rot_q"), ("hook_k", "hook_rot_k")):
        expected = rope.apply_rotary_embeddings(cache[f"blocks.0.attn.{raw}"].transpose(1, 2), pos).transpose(1, 2)
        assert torch.equal(cache[f"blocks.0.attn.{rotated}"], expected)
    # The rotation is not the identity here: a wrong table could not pass by doing nothing.
    assert not torch.allclose(cache["blocks.0.attn.hook_rot_q"], cache["blocks.0.attn.hook_q"])


def test_a_hook_on_the_rotated_key_changes_the_scores_as_expected(pair):
    _, kw, _, model = pair
    x = pixels(kw)

    def zero_key(act, hook):
        act[:, 0] = 0  # token 0's rotated key
        return act

    names = ["blocks.0.attn.hook_attn_scores"]
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_k", zero_key)]):
        _, cache = model.run_with_cache(x, names_filter=names)
    assert torch.equal(
        cache["blocks.0.attn.hook_attn_scores"][..., 0],
        torch.zeros_like(cache["blocks.0.attn.hook_attn_scores"][..., 0]),
    )


def test_patterns_are_not_materialised_unless_asked(pair, monkeypatch):
    _, kw, _, model = pair
    x = pixels(kw)
    with torch.no_grad():
        expected = model(x)
    calls = []
    real_softmax = torch.nn.functional.softmax
    monkeypatch.setattr(torch.nn.functional, "softmax", lambda *a, **k: calls.append(1) or real_softmax(*a, **k))
    with torch.no_grad():
        fast = model(x)
        _, cache = model.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_z", "hook_resid_post", "hook_rot_q"))
        )
    assert calls == [] and torch.equal(fast, expected)  # fused SDPA everywhere: no softmax, no pattern
    with torch.no_grad():
        slow, _ = model.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
    assert len(calls) == 1 and max_rel(slow, expected) <= TOL  # just the hooked layer goes explicit
    model.cfg.use_sdpa = False  # the per-call switch the other models have: explicit everywhere
    try:
        calls.clear()
        with torch.no_grad():
            explicit = model(x)
    finally:
        model.cfg.use_sdpa = True
    assert len(calls) == kw["num_hidden_layers"] + kw["num_pooler_layers"] + 1
    assert max_rel(explicit, expected) <= TOL


def test_attention_rows_on_the_fused_path_equal_the_rotated_pattern_rows(pair):
    _, kw, _, model = pair
    x = pixels(kw)
    queries = [0, model.cfg.n_ctx - 1]
    rows = model.attention_rows(x, queries=queries)  # [B, L, H, 2, P]
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith("blocks.") and n.endswith("hook_pattern"))
    for l in range(kw["num_hidden_layers"]):
        assert max_rel(rows[:, l], cache["pattern", l][:, :, queries]) <= TOL


def test_every_hook_fires_with_the_shape_cache_memory_predicts(pair):
    _, kw, _, model = pair
    x = pixels(kw)
    model.set_use_attn_result(True)
    try:
        _, cache = model.run_with_cache(x)
        assert set(cache.keys()) == {n for n in model.hook_dict if model._fires(n)}
        for name, act in cache.items():
            assert tuple(act.shape) == hook_shape(model.cfg, name, x.shape[0]), name
        assert estimate_cache_bytes(model, batch=2) == cache.nbytes()
    finally:
        model.set_use_attn_result(False)
    assert not model._fires("pooler.cross.attn.hook_result")


def test_declared_hook_axes_name_real_hooks_with_their_rank():
    import fnmatch

    from hooked_vivit.vjepa2 import VJEPA2_HOOK_AXES

    model = HookedVJEPA2.from_hf_model(make_hf(CONFIGS["dhead10_ratio3"]), use_attn_result=True)
    size = {
        "batch": 2,
        "pos": model.cfg.n_ctx,
        "query": 1,
        "head": model.cfg.n_heads,
        "d_head": model.cfg.d_head,
        "d_model": model.cfg.d_model,
        "d_mlp": model.cfg.pooler_d_mlp,
        "1": 1,
    }
    for pattern, axes in VJEPA2_HOOK_AXES.items():
        names = fnmatch.filter(model.hook_dict, pattern)
        assert names, pattern
        for name in names:
            assert hook_shape(model.cfg, name, 2) == tuple(size[a] for a in axes), name


def test_residual_decomposition_is_complete(pair):
    """Every writer to each residual stream is hooked: encoder tokens, pooler tokens, the query."""
    _, kw, _, model = pair
    x = pixels(kw)
    model.set_use_attn_result(True)
    try:
        logits, cache = model.run_with_cache(x)
    finally:
        model.set_use_attn_result(False)
    L, n_pool = kw["num_hidden_layers"], kw["num_pooler_layers"]
    # Encoder: the tubelet tokens + every attention and MLP output (no position embedding: rotary).
    stack, labels = cache.decompose_resid(layer=None, mode="full", return_labels=True)
    assert labels[0] == "embed" and len(labels) == 1 + 2 * L
    assert max_rel(stack.sum(0), cache[f"blocks.{L - 1}.hook_resid_post"]) <= TOL
    # Pooler self-attention blocks: the normalised tokens + their outputs.
    total = cache["ln_final.hook_normalized"] + sum(
        cache[f"pooler.blocks.{i}.hook_{k}_out"] for i in range(n_pool) for k in ("attn", "mlp")
    )
    last = cache[f"pooler.blocks.{n_pool - 1}.hook_resid_post"] if n_pool else cache["ln_final.hook_normalized"]
    assert max_rel(total, last) <= TOL
    assert (
        max_rel(
            cache["pooler.cross.ln1.hook_normalized"],
            torch.nn.functional.layer_norm(
                last, (model.cfg.d_model,), model.pooler.cross.ln1.w, model.pooler.cross.ln1.b, model.cfg.eps
            ),
        )
        <= TOL
    )
    # The query's stream: learned query + cross-attention heads + MLP; the classifier reads its end.
    heads = cache["pooler.cross.attn.hook_result"]  # [B, 1, H, d]
    assert max_rel(heads.sum(2), cache["pooler.cross.hook_attn_out"]) <= TOL
    query = model.pooler.query.expand(x.shape[0], 1, -1)
    assert torch.equal(cache["pooler.cross.hook_resid_pre"], query)
    pooled = query + heads.sum(2) + cache["pooler.cross.hook_mlp_out"]
    assert max_rel(pooled, cache["pooler.cross.hook_resid_post"]) <= TOL
    assert max_rel(pooled[:, 0] @ model.W_U + model.b_U, logits) <= TOL
    # Each head's output is its attention-weighted values over the video tokens.
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith("pooler.cross.attn."))
    z = torch.einsum("bhqp,bphe->bqhe", cache["pooler.cross.attn.hook_pattern"], cache["pooler.cross.attn.hook_v"])
    assert max_rel(z, cache["pooler.cross.attn.hook_z"]) <= TOL


def test_start_and_stop_at_layer(pair):
    _, kw, _, model = pair
    x = pixels(kw)
    with torch.no_grad():
        mid = model(x, stop_at_layer=1)
        assert max_rel(model(mid, start_at_layer=1), model(x)) <= TOL
        loss = model(x, return_type="loss", labels=0)
        assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)))


@pytest.mark.parametrize("backbone", [False, True])
def test_checkpoints_with_and_without_prefix_load_and_drop_the_predictor(backbone, tmp_path):
    kw = CONFIGS["dhead7_nobias_tubelet1"]
    hf = make_hf(kw, cls=VJEPA2Model if backbone else VJEPA2ForVideoClassification)
    hf.save_pretrained(tmp_path / "m")
    model = HookedVideoTransformer.from_pretrained(tmp_path / "m")
    assert type(model) is HookedVJEPA2 and (model.unembed is None) == backbone
    assert compare(model, hf, pixels(kw), attn="eager").ok(TOL)
    sd = {k: v for k, v in hf.state_dict().items()}
    assert any(k.removeprefix("vjepa2.").startswith("predictor.") for k in sd)
    flipped = {
        (
            k.removeprefix("vjepa2.")
            if k.startswith("vjepa2.")
            else ("vjepa2." + k if k.startswith(("encoder.", "predictor.")) else k)
        ): v
        for k, v in sd.items()
    }
    other = HookedVideoTransformer.from_state_dict(flipped, hf.config.to_dict())
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n


def test_missing_key_is_named():
    kw = CONFIGS["dhead10_ratio3"]
    sd = dict(make_hf(kw).state_dict())
    del sd["pooler.cross_attention_layer.cross_attn.q_proj.weight"]
    with pytest.raises(CheckpointError, match="(?s)missing keys.*cross_attn.q_proj.weight"):
        HookedVJEPA2.from_state_dict(sd, VJEPA2Config(**kw).to_dict())


@pytest.mark.parametrize("layout", ["transformers", "hooked"])  # "hub" writes the same keys as "transformers"
def test_save_pretrained_round_trip_and_transformers_reads_it(layout, tmp_path):
    kw = CONFIGS["dhead7_nobias_tubelet1"]
    hf = make_hf(kw)
    model = HookedVJEPA2.from_hf_model(hf)
    model.save_pretrained(tmp_path / "m", layout=layout)
    again = HookedVideoTransformer.from_pretrained(tmp_path / "m")
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    if layout != "hooked":
        back = VJEPA2ForVideoClassification.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
        x = pixels(kw)
        with torch.no_grad():
            assert max_rel(back(x).logits, hf(x).logits) <= TOL


def test_fold_ln_keeps_the_logits_and_the_rest_is_refused_with_the_reason(pair):
    """fold_ln folds every encoder and pooler LayerNorm (the cross-attention's ln1 into keys and values
    only) and keeps ln_final's affine part; folded logits equal transformers' and the unfolded model's."""
    name, kw, hf, model = pair
    x = pixels(kw)
    folded = HookedVJEPA2.from_hf_model(hf, fold_ln=True)
    in_place = HookedVJEPA2.from_hf_model(hf).process_weights_()
    assert folded.cfg.folded_ln and folded.cfg.normalization_type == "LNPre"
    names = dict(folded.named_parameters())
    assert "ln_final.w" in names and "blocks.0.ln1.w" not in names and "pooler.cross.ln1.w" not in names
    with torch.no_grad():
        ref, unfolded = hf(x).logits, model(x)
        for m in (folded, in_place):
            out = m(x)
            assert max_rel(out, ref) <= TOL and max_rel(out, unfolded) <= TOL, name
            assert m.blocks[0].ln1.w is None and m.pooler.cross.ln2.w is None
    with pytest.raises(ValueError, match="center_writing_weights and fold_value_biases are not available for V-JEPA 2"):
        HookedVJEPA2.from_hf_model(hf, center_writing_weights=True)
    with pytest.raises(ValueError, match="not available for V-JEPA 2"):
        HookedVJEPA2.from_hf_model(hf).process_weights_(fold_value_biases=True)


def test_config_round_trip_and_frames_override():
    kw = CONFIGS["dhead10_ratio3"]
    cfg = HookedVJEPA2.config_class.from_hf_config(VJEPA2Config(**kw).to_dict())
    assert (cfg.d_mlp, cfg.pooler_d_mlp, cfg.n_pooler_layers, cfg.n_ctx) == (90, 120, 2, 3 * 3 * 3)
    back = VJEPA2Config(**cfg.to_hf_config_dict())
    for key in (
        "hidden_size",
        "mlp_ratio",
        "crop_size",
        "patch_size",
        "frames_per_clip",
        "tubelet_size",
        "num_pooler_layers",
    ):
        assert getattr(back, key) == getattr(VJEPA2Config(**kw), key), key
    # More frames than the config says: transformers runs them; so does the hooked model, built for them.
    hf = make_hf(kw)
    model = HookedVJEPA2.from_hf_model(hf, num_frames=10)
    x = torch.randn(1, 10, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_rel(model(x), hf(x).logits) <= TOL


def test_cli_parity_and_info(tmp_path, capsys):
    from hooked_vivit import cli

    kw = CONFIGS["dhead10_ratio3"]
    make_hf(kw).save_pretrained(tmp_path / "m")
    assert cli.main(["parity", "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "pattern 1" in out and "logits" in out and "PASS" in out
    assert cli.main(["info", "--model", str(tmp_path / "m"), "--hooks"]) == 0
    out = capsys.readouterr().out
    assert "HookedVJEPA2" in out and "blocks.1.attn.hook_rot_k" in out and "pooler.cross.attn.hook_pattern" in out


# ------------------------------------------------------------------ analysis tools on a tiny V-JEPA 2
def test_query_attention_on_frames_and_viewer(pair, tmp_path):
    from hooked_vivit import viewer

    _, kw, _, model = pair
    x = pixels(kw, batch=1)
    maps = viewer.token_maps(model, x, "query_attention")
    g = model.cfg.grid
    assert maps.shape == (1, model.cfg.n_heads, g.n_frame_slots, g.n_rows, g.n_cols)
    _, cache = model.run_with_cache(x, names_filter="pooler.cross.attn.hook_pattern")
    pattern = cache["pooler.cross.attn.hook_pattern"][0, :, 0]  # [H, P]
    token = g.index(g.n_frame_slots - 1, g.n_rows - 1, 0)
    np.testing.assert_array_equal(maps[0, :, -1, -1, 0], pattern[:, token].numpy())
    np.testing.assert_allclose(maps.sum((2, 3, 4)), 1.0, rtol=1e-5)
    # The readout's attention is the query's; the attribution map is pooler_token_dla's terms on the grid.
    np.testing.assert_array_equal(viewer.token_maps(model, x, "cls_attention"), maps)
    from hooked_vivit.causal.logit_attribution import pooler_token_dla

    attribution = viewer.token_maps(model, x, "attribution", class_index=0)
    np.testing.assert_allclose(attribution, g.unflatten(pooler_token_dla(model, x, 0)["terms"])[1].numpy())
    frames = np.zeros((kw["frames_per_clip"], kw["crop_size"], kw["crop_size"], 3), np.uint8)
    assert viewer.save_grid_png(model, frames, maps, tmp_path / "q.png").exists()
    assert viewer.save_animation(model, frames, maps, tmp_path / "q.gif", layer=0).exists()


def test_patching_engine_equals_transformer_lens_path():
    from hooked_vivit.causal import patching
    from hooked_vivit.causal.metrics import LogitDiff

    kw = CONFIGS["dhead7_nobias_tubelet1"]
    model = HookedVJEPA2.from_hf_model(make_hf(kw))
    clean = pixels(kw, batch=1, seed=1)
    corrupted = clean + 0.5 * pixels(kw, batch=1, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    m = LogitDiff(0, 1)
    twin = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, m)
    sweep = patching.run_patches(
        model, patching.token_patches(model, "resid_pre"), source_cache=clean_cache, target=corrupted, metric=m
    )
    torch.testing.assert_close(sweep.values, twin.flatten(), atol=1e-5, rtol=1e-5)
    # Patching every token of layer 0's input with the clean run restores the clean metric.
    with torch.no_grad():
        restored = model.run_with_hooks(
            corrupted, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: clean_cache["blocks.0.hook_resid_pre"])]
        )
        torch.testing.assert_close(m(restored), m(model(clean)))


def test_analysis_reads_the_pooler_output_and_equals_hand_written_runs():
    """analyze's readout on V-JEPA 2 is the attentive pooler's output (pooler.cross.hook_resid_post):
    component recovery at the readout equals a run_with_hooks patch whose pooled vector is projected
    by hand; deltas, DLA (exact sum to the logit, head sums = the cross-attention's write) and the
    readout attention (the pooler query's pattern) against the cached hooks."""
    from hooked_vivit.analysis import experiments as ex

    kw = CONFIGS["dhead10_ratio3"]
    # float64: exact claims (tests/tolerances.py); the library's float32 reads are bounded per quantity
    model = HookedVJEPA2.from_hf_model(make_hf(kw), dtype=torch.float64)
    pos, neg = pixels(kw, batch=1, seed=1), pixels(kw, batch=1, seed=2)
    pooled, last = "pooler.cross.hook_resid_post", "blocks.1.hook_resid_post"
    runs = ex.pair_runs(model, pos, neg)
    rec = ex.component_recovery(model, pos, neg, runs=runs)
    assert rec["readout"] == "pooler output" and rec["positions"] == "pooler output"
    with torch.no_grad():
        _, clean = model.run_with_cache(pos)
        _, corrupt = model.run_with_cache(neg, names_filter=[pooled, last])
    d_pooled = (clean[pooled] - corrupt[pooled])[0, 0]
    for l in range(2):
        for kind in ("attn", "mlp"):
            kept = {}
            with torch.no_grad():
                model.run_with_hooks(
                    neg,
                    fwd_hooks=[
                        (f"blocks.{l}.hook_{kind}_out", lambda act, hook: clean[hook.name]),
                        (pooled, lambda act, hook: kept.__setitem__("pooled", act.clone())),
                        (last, lambda act, hook: kept.__setitem__("last", act.clone())),
                    ],
                )
            a, c, k = kept["pooled"][0, 0], clean[pooled][0, 0], corrupt[pooled][0, 0]
            at_readout = pytest.approx(float(projection(a, c, k)), abs=fp32_input_error(projection, a, c, k))
            a, c, k = (t[0].flatten() for t in (kept["last"], clean[last], corrupt[last]))
            over_tokens = pytest.approx(float(projection(a, c, k)), abs=fp32_input_error(projection, a, c, k))
            assert rec["variants"]["cls_projection"][kind][l] == at_readout
            assert rec["projection"][kind][l] == at_readout
            assert rec["variants"]["token_projection"][kind][l] == over_tokens
    deltas = ex.activation_deltas(model, pos, neg, runs=runs)
    assert deltas.readout == "token mean"  # per layer: the pooler reads only the last layer
    assert deltas.readout_vector["norm"] == pytest.approx(float(d_pooled.norm()), rel=1e-5)
    assert deltas.to_json()["readout_vector"] == deltas.readout_vector
    mean_diff = (clean[last] - corrupt[last])[0].mean(0).norm()
    assert deltas.at_readout["resid_post"][-1] == pytest.approx(float(mean_diff), rel=1e-5)
    c = 3
    dla = ex.token_dla(model, pos, c, run=runs.clean)
    assert dla["terms"].shape == (1, 3, model.cfg.n_ctx) and dla["layers"] == ["pooler"]
    assert float(dla["terms"].sum()) + sum(dla["rest"].values()) == pytest.approx(dla["logit"], abs=1e-5)
    with torch.no_grad():
        assert dla["logit"] == pytest.approx(float(model(pos)[0, c]), abs=1e-5)
    W_U = model.W_U[:, c].detach()
    attn_out = clean["pooler.cross.hook_attn_out"][0, 0]  # the heads side by side, d_head each
    E = model.cfg.d_head
    for h in range(3):
        assert float(dla["terms"][0, h].sum()) == pytest.approx(
            float(attn_out[h * E : (h + 1) * E] @ W_U[h * E : (h + 1) * E]), abs=1e-5
        )
    pattern, v = clean["pooler.cross.attn.hook_pattern"][0, :, 0], clean["pooler.cross.attn.hook_v"][0]
    assert float(dla["terms"][0, 1, 5]) == pytest.approx(float(pattern[1, 5] * (v[5, 1] @ W_U[E : 2 * E])), abs=1e-6)
    att = ex.cls_attention(model, pos, run=runs.clean)
    g = model.cfg.grid
    assert att["layers"] == ["pooler"]
    np.testing.assert_allclose(np.array(att["grid"])[0], g.unflatten(pattern)[1].numpy(), atol=1e-6)
    np.testing.assert_allclose(ex.readout_attention(model, pos, ["pooler"])[0].numpy(), pattern.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="encoder layers have no readout query"):
        ex.readout_attention(model, pos, [0, 1])
    signal = ex.OutcomeSignal(model, pos, neg, c, runs=runs)
    # direction = delta . delta / ||delta||^2 in float32: two reductions over d_model, in other orders
    direction = pytest.approx(1.0, abs=fp32_tol(1.0, model.cfg.d_model))
    assert signal.hook == pooled and float(signal.base.direction[0]) == direction


def test_analyze_and_study_run_on_a_tiny_vjepa2(tmp_path):
    from hooked_vivit.analysis import pipeline

    kw = dict(CONFIGS["dhead10_ratio3"], crop_size=32, frames_per_clip=8)  # 4 x 4 x 4 tokens
    model = HookedVJEPA2.from_hf_model(make_hf(kw))
    pair = pipeline.rendered_pair(model, "bowling", 4000001)
    results = pipeline.analyze_pair(model, pair, probe_pairs=0, n_controls=2, progress=False)
    pipeline.write_analysis(tmp_path / "report", model, pair, results)
    data = json.loads((tmp_path / "report" / "results.json").read_text())
    assert data["recovery"]["readout"] == data["dla"]["readout"] == "pooler output"
    assert np.array(data["cls_attention"]["grid"]).shape == (1, 3, 4, 4, 4)  # the pooler query, heads, grid
    html = (tmp_path / "report" / "report.html").read_text()
    assert "attentive pooler&#x27;s learned query" in html or "attentive pooler's learned query" in html
    assert "(d) Pooler query attention" in html and "(d) CLS attention" not in html
    studies = pipeline.run_study(model, ["golf"], 3, tmp_path / "study", progress=False, outcome_pairs=2, probe_pairs=5)
    assert (
        len(studies[0]["recovery"][studies[0]["headline"]]["attn"]["per_pair"]) == 3
        and (tmp_path / "study" / "report.html").exists()
    )


# ------------------------------------------------------------------ the real size
FULL_VJEPA2 = os.environ.get("HOOKED_VIVIT_FULL_VJEPA2", "")


@pytest.mark.slow
@pytest.mark.skipif(
    not FULL_VJEPA2,
    reason="V-JEPA 2 ViT-L at 16 frames x 256 px takes many minutes on 2 CPU cores; "
    "HOOKED_VIVIT_FULL_VJEPA2=1 runs it (=N: the same with N encoder layers)",
)
def test_vjepa2_vitl_16_frames_256px_random_weights():
    """ViT-L: 24 layers x 16 heads, d_model 1024, 2048 tokens (16 frames, 256 px), 3 pooler blocks, 174 classes
    (the SSv2 head), random perturbed weights. HF eager (patterns of the first and last layers and of the
    whole pooler, read with forward hooks) and sdpa, against one hooked model."""
    L = 24 if FULL_VJEPA2 == "1" else int(FULL_VJEPA2)
    kw = dict(frames_per_clip=16, num_labels=174, pred_num_hidden_layers=1, num_hidden_layers=L)
    hf = make_hf(kw, attn="eager")
    model = HookedVJEPA2.from_hf_model(hf)
    assert model.cfg.n_ctx == 2048 and model.cfg.d_model == 1024 and model.cfg.n_layers == L and model.cfg.d_head == 64
    x = torch.randn(1, 16, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    pooler_names = [f"pooler.blocks.{i}.attn.hook_pattern" for i in range(3)] + ["pooler.cross.attn.hook_pattern"]
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    t0 = time.perf_counter()
    logits, cache = model.run_with_cache(
        x, names_filter=names + ["blocks.0.attn.hook_pattern", f"blocks.{L - 1}.attn.hook_pattern", *pooler_names]
    )
    t_hooked_patterns = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        fast = model(x)
    t_hooked = time.perf_counter() - t0
    worst: dict[str, float] = {"hooked fused vs explicit logits": max_rel(fast, logits)}
    timings = {"hooked (fused)": t_hooked, "hooked (explicit, patterns cached)": t_hooked_patterns}
    for attn in ("eager", "sdpa"):
        hf.set_attn_implementation(attn)
        handles, kept = _pooler_patterns(hf)
        for l in (0, L - 1):
            handles.append(
                hf.vjepa2.encoder.layer[l].attention.register_forward_hook(
                    lambda m, i, o, l=l: kept.__setitem__(f"blocks.{l}.attn.hook_pattern", o[1])
                )
            )
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = hf(x, output_hidden_states=True)
        timings[f"hf {attn}"] = time.perf_counter() - t0
        for h in handles:
            h.remove()
        worst[f"{attn} logits"] = max_rel(logits, ref.logits)
        worst[f"{attn} embeddings"] = max_rel(cache["blocks.0.hook_resid_pre"], ref.hidden_states[0])
        worst[f"{attn} hidden states"] = max(
            max_rel(cache["resid_post", l], ref.hidden_states[l + 1]) for l in range(L)
        )
        if attn == "eager":
            assert len(kept) == 6
            for name, pattern in kept.items():
                worst[f"eager {name}"] = max_rel(cache[name], pattern)
    print(
        "\n"
        + "\n".join(f"{k}: {v:.3e}" for k, v in worst.items())
        + "\n"
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    )
    assert max(worst.values()) <= TOL, worst
