"""The paper's experiments: exact decompositions, agreement with hand-made patches, probes with
controls, and the analyze / study commands writing whole, self-contained reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT, synthetic
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.cli import main
from hooked_vivit.probes import probe_accuracy
from hooked_vivit.video import write_video
from tests.conftest import make_hf

SQUARE = dict(image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=2,
              num_attention_heads=2, intermediate_size=64, num_labels=6)


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_hf_model(make_hf(SQUARE, seed=3))


@pytest.fixture(scope="module")
def pair(model):
    return pipeline.rendered_pair(model, "bowling", 2)


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def px(model, frames):
    return pipeline.model_pixels(model, frames)


def test_token_dla_sums_to_head_attributions_and_logit(model, pair):
    x = px(model, pair.positive)
    c = 4
    dla = ex.token_dla(model, x, c)
    _, cache = model.run_with_cache(x)
    heads = cache.stack_head_results(layer=-1, pos_slice=0, apply_ln=True)  # [L*H, 1, d]
    direction = ex.class_direction(model, c)
    per_head = (heads[:, 0] @ direction).view(model.cfg.n_layers, model.cfg.n_heads)
    torch.testing.assert_close(dla["terms"].sum(-1), per_head, atol=1e-5, rtol=1e-4)
    # Every component of the final residual at CLS, through the final LN, adds up to the logit.
    full = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=0, expand_neurons=False, project_output_onto=direction)
    logit = full.sum(0) + model.ln_final.b @ model.W_U[:, c] + model.b_U[c]
    assert float(logit[0]) == pytest.approx(dla["logit"], abs=1e-4)
    assert np.array(dla["heatmap"]).shape == model.cfg.grid.shape


def test_activation_deltas_match_the_cache(model, pair):
    pos, neg = px(model, pair.positive), px(model, pair.negative)
    d = ex.activation_deltas(model, pos, neg)
    _, cp = model.run_with_cache(pos)
    _, cn = model.run_with_cache(neg)
    delta = cp["mlp_out", 1] - cn["mlp_out", 1]
    assert d["cls"]["mlp_out"][1] == pytest.approx(float(delta[0, 0].norm()), abs=1e-5)  # SDPA vs explicit path noise
    assert d["tokens"]["resid_post"][0] == pytest.approx(float((cp["resid_post", 0] - cn["resid_post", 0])[0].norm(dim=-1).mean()), rel=1e-5)
    assert d["cls"]["resid_pre"][0] == 0.0  # CLS starts identical: only pixels differ


def test_component_recovery_matches_a_hand_made_patch(model, pair):
    pos, neg = px(model, pair.positive), px(model, pair.negative)
    rec = ex.component_recovery(model, pos, neg)
    _, clean = model.run_with_cache(pos)
    _, corrupt = model.run_with_cache(neg)
    last = "blocks.1.hook_resid_post"
    captured = {}

    def patch(act, hook):
        return clean[hook.name]

    def grab(act, hook):
        captured["a"] = act

    model.run_with_hooks(neg, fwd_hooks=[("blocks.0.hook_mlp_out", patch), (last, grab)])
    delta = clean[last][0, 0] - corrupt[last][0, 0]
    expected = float((captured["a"][0, 0] - corrupt[last][0, 0]) @ delta / (delta @ delta))
    assert rec["projection"]["mlp"][0] == pytest.approx(expected, abs=1e-4)
    # Patching the last MLP block restores the last resid_post exactly up to its own input.
    assert -1 < rec["projection"]["attn"][1] < 2


def test_token_masks_and_object_shares(model, pair):
    masks = pair.masks["positive"]
    tm = ex.token_masks(model, masks["ball"])
    assert tm.shape == (model.cfg.n_ctx,) and tm[0] == 0
    t, r, c = 1, 2, 3
    frames, rows, cols = model.cfg.grid.pixel_box(model.cfg.grid.index(t, r, c))
    assert float(tm[model.cfg.grid.index(t, r, c)]) == pytest.approx(masks["ball"][frames.start:frames.stop, rows, cols].mean())
    att = ex.cls_attention(model, px(model, pair.positive), masks=masks)
    for name in ("ball", "pins"):
        shares = np.array(att["object_share"][name])
        assert shares.shape == (model.cfg.n_layers, model.cfg.n_heads) and (shares >= 0).all() and (shares <= 1).all()
    assert np.array(att["grid"]).shape == (model.cfg.n_layers, model.cfg.n_heads, *model.cfg.grid.shape)


def test_region_ablation_table(model, pair):
    x = px(model, pair.positive)
    dla = ex.token_dla(model, x, 0)
    res = ex.region_ablation(model, x, dla, n_tokens=3, k=4)
    assert len(res["table"]) == 4 and len(res["tokens"]) == 3
    box = res["box"]
    for tok in res["tokens"]:
        frames, rows, cols = model.cfg.grid.pixel_box(tok)
        assert box["t0"] <= frames.start and frames.stop <= box["t1"] and box["y0"] <= rows.start and box["x0"] <= cols.start


def test_probe_reads_a_planted_feature_and_control_does_not():
    rng = np.random.default_rng(0)
    n_pairs, d = 40, 16
    labels = np.tile([1, 0], n_pairs)
    groups = np.repeat(np.arange(n_pairs), 2)
    feats = rng.normal(size=(2 * n_pairs, d))
    feats[:, 3] += 6 * (labels - 0.5)  # the outcome, linearly (Bayes accuracy 99.9 %)
    res = probe_accuracy(feats, labels, groups)
    assert res.accuracy > 0.95 and res.control_accuracy < 0.75 and res.selectivity > 0.2
    noise = probe_accuracy(rng.normal(size=(2 * n_pairs, d)), labels, groups)
    assert noise.accuracy < 0.8


def test_layer_probes_shapes(model):
    pairs = [(px(model, p), px(model, n)) for p, n, _ in (synthetic.render_pair("golf", s, num_frames=8, size=32) for s in range(6))]
    res = ex.layer_probes(model, pairs)
    f = ex.probe_features(model, pairs)
    with torch.inference_mode():
        expected = torch.cat([model(torch.cat(p)).argmax(-1) for p in pairs]).numpy()
    np.testing.assert_array_equal(f["predictions"], expected)
    np.testing.assert_array_equal(f["labels"][:4], [1, 0, 1, 0])
    assert len(res["cls"]) == len(res["mean"]) == model.cfg.n_layers + 1
    assert 0 <= res["pixels"]["accuracy"] <= 1


def test_analyze_command_writes_a_whole_report(saved_model, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", "--model", str(saved_model), "--domain", "bowling", "--seed", "1", "--probe-pairs", "4", "--out", str(out), "--quiet"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "results.json", "fig1_activation_deltas.png", "fig2_component_recovery.png", "fig3_token_dla.png",
            "fig4_cls_attention.png", "fig5_probes.png", "frames.png"} <= names
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and 'src="http' not in html
    data = json.loads((out / "results.json").read_text())
    assert {"deltas", "recovery", "dla", "cls_attention", "region_ablation", "probes"} <= set(data)
    assert len(data["recovery"]["projection"]["attn"]) == 2


def test_analyze_with_video_files_and_bad_input(saved_model, tmp_path, capsys):
    pos, neg, _ = synthetic.render_pair("golf", 3, num_frames=8, size=48)
    write_video(pos, tmp_path / "in.mp4")
    write_video(neg, tmp_path / "miss.mp4")
    out = tmp_path / "files"
    assert main(["analyze", "--model", str(saved_model), "--clean", str(tmp_path / "in.mp4"), "--corrupted", str(tmp_path / "miss.mp4"),
                 "--out", str(out), "--quiet"]) == 0
    assert "probes" not in json.loads((out / "results.json").read_text())  # no domain: no probe set
    (tmp_path / "bad.mp4").write_text("not a video")
    bad_out = tmp_path / "bad_report"
    assert main(["analyze", "--model", str(saved_model), "--clean", str(tmp_path / "bad.mp4"), "--corrupted", str(tmp_path / "miss.mp4"),
                 "--out", str(bad_out), "--quiet"]) == 2
    assert "bad.mp4" in capsys.readouterr().err and not bad_out.exists()
    assert main(["analyze", "--model", str(tmp_path / "no_model"), "--out", str(bad_out), "--quiet"]) == 2
    assert not bad_out.exists()


def test_study_has_intervals(saved_model, tmp_path):
    model = HookedViViT.from_pretrained(saved_model)
    studies = pipeline.run_study(model, ["golf"], 5, tmp_path / "study", progress=False)
    st = studies[0]
    lo, hi = np.array(st["attn"]["ci95"][0]), np.array(st["attn"]["ci95"][1])
    mean = np.array(st["attn"]["mean"])
    assert (lo <= mean + 1e-9).all() and (mean <= hi + 1e-9).all()
    assert np.array(st["mlp"]["per_pair"]).shape == (5, model.cfg.n_layers)
    assert (tmp_path / "study" / "report.html").exists()
