"""Issue 30: the normalised logit-difference recovery, (m(patched) - m(corrupted)) / (m(clean) - m(corrupted))
with m = logit(positive outcome) - logit(negative outcome): on constructed logits, against hand-made patches
in float64, on the planted models (whose answer is exactly 1 or 0), at no extra forward, and as the
headline wherever the model has a logit per outcome."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT, planted
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis.cost import ForwardCounter
from hooked_vivit.causal.metrics import LogitDiffRecovery
from tests.conftest import make_hf
from tests.tolerances import FP32_EPS, SAFETY, fp32_tol

SQUARE = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=6,
)


@pytest.fixture(scope="module")
def model64():
    return HookedViViT.from_hf_model(make_hf(SQUARE, seed=3), dtype=torch.float64)


@pytest.fixture(scope="module")
def and_composition():
    return planted.build("and_composition")


@pytest.fixture(scope="module")
def single_head():
    return planted.build("single_head")


def _f32(value: float, logit_error: float = 0.0, scale: float = 1.0) -> float:
    """The library returns each recovery as float32 (the rounding of the value itself), from logits that
    may carry float32-sized rounding of their own (``logit_error``, in logit units) divided by the
    normalisation ``scale`` = m(clean) - m(corrupted)."""
    return SAFETY * FP32_EPS * max(1.0, abs(value)) + 4 * logit_error / abs(scale)


# --------------------------------------------------------------------------------- the metric itself
def test_logit_diff_recovery_on_constructed_logits():
    clean = torch.tensor([[3.0, -1.0, 0.5]])  # m = 3 - (-1) = 4
    corrupt = torch.tensor([[0.0, 2.0, 0.5]])  # m = -2
    metric = LogitDiffRecovery(0, 1, clean, corrupt)
    assert (metric.clean_value, metric.corrupt_value) == (4.0, -2.0)
    patched = torch.tensor(
        [
            [3.0, -1.0, 9.0],  # the clean difference (the third logit does not enter): 1
            [0.0, 2.0, -9.0],  # the corrupted difference: 0
            [1.0, 0.0, 0.0],  # m = 1: half way
            [6.0, -3.0, 0.0],  # m = 9: overshoot 11/6
            [0.0, 5.0, 0.0],  # m = -5: the wrong way, -1/2
        ]
    )
    np.testing.assert_allclose(metric(patched).numpy(), [1.0, 0.0, 0.5, 11 / 6, -0.5], atol=1e-7)
    assert metric.hooks == ()  # reads only the logits: no activation to collect
    with pytest.raises(ValueError, match="nothing to recover"):
        LogitDiffRecovery(0, 1, torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 2.0]]))
    # a gap of float rounding (the planted null: 2e-6 on logits of about 3.5) is no gap: at most 1e-5 of the
    # largest |logit| is refused, just above it is a pair with an outcome to recover
    big = 5.0
    with pytest.raises(ValueError, match="nothing to recover"):
        LogitDiffRecovery(0, 1, torch.tensor([[big, 0.0]]), torch.tensor([[big - 2e-6, 0.0]]))
    with pytest.raises(ValueError, match="nothing to recover"):
        LogitDiffRecovery(0, 1, torch.tensor([[big, 0.0]]), torch.tensor([[big - 0.99e-5 * big, 0.0]]))
    assert LogitDiffRecovery(0, 1, torch.tensor([[big, 0.0]]), torch.tensor([[big - 1.01e-5 * big, 0.0]]))._scale > 0
    with pytest.raises(ValueError, match="must differ"):
        LogitDiffRecovery(1, 1, clean, corrupt)


def test_outcome_class_pair_names_indices_and_errors(single_head):
    m = single_head.model
    assert ex.outcome_class_pair(m, None) is None
    assert ex.outcome_class_pair(m, ("blob", "no blob")) == (0, 1)
    assert ex.outcome_class_pair(m, ["1", 0]) == (1, 0)
    with pytest.raises(ValueError, match="nearest"):
        ex.outcome_class_pair(m, ("blobs", "no blob"))
    with pytest.raises(ValueError, match="out of range"):
        ex.outcome_class_pair(m, (0, 7))
    with pytest.raises(ValueError, match="differ"):
        ex.outcome_class_pair(m, (0, 0))
    with pytest.raises(ValueError, match="two classes"):
        ex.outcome_class_pair(m, (0,))


# ----------------------------------------------------------------------- against hand-made patches
@torch.inference_mode()
def test_component_and_head_logit_diff_match_hand_made_patches(model64):
    """Every component's and every head's logit_diff against a patch made by hand with hooks and the
    formula in float64 (the library returns float32 values: compared within their rounding)."""
    model = model64
    pair = pipeline.rendered_pair(model, "golf", 4_000_011)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    c, o = 2, 4
    rec = ex.component_recovery(model, pos, neg, outcome_classes=(c, o), heads=True)
    assert rec["headline"] == ex.LOGIT_DIFF_RECOVERY
    clean_logits, clean = model.run_with_cache(pos)
    corrupt_logits = model(neg)
    m = lambda logits: float(logits[0, c].double() - logits[0, o].double())  # noqa: E731
    m_clean, m_corrupt = m(clean_logits), m(corrupt_logits)
    # The fused-attention forward the engine runs and the explicit one run_with_cache runs round apart (the
    # softmax's float32 accumulation): the logits agree to float32 rounding of their size, not to float64's.
    logit_error = fp32_tol(float(torch.cat([clean_logits, corrupt_logits]).abs().max()), model.cfg.d_model)
    assert rec["outcome_classes"]["logit_diff_clean"] == pytest.approx(m_clean, abs=2 * logit_error)
    assert rec["outcome_classes"]["logit_diff_corrupted"] == pytest.approx(m_corrupt, abs=2 * logit_error)
    formula = lambda logits: (m(logits) - m_corrupt) / (m_clean - m_corrupt)  # noqa: E731
    tol = lambda want: _f32(want, logit_error, m_clean - m_corrupt)  # noqa: E731
    values = []
    for layer in range(model.cfg.n_layers):
        for comp in ("attn", "mlp"):
            logits = model.run_with_hooks(
                neg, fwd_hooks=[(f"blocks.{layer}.hook_{comp}_out", lambda a, hook: clean[hook.name])]
            )
            want = formula(logits)
            values.append(want)
            assert rec["variants"]["logit_diff"][comp][layer] == pytest.approx(want, abs=tol(want)), (comp, layer)
        for h in range(model.cfg.n_heads):

            def patch_head(a, hook, h=h):
                a = a.clone()
                a[:, :, h] = clean[hook.name][:, :, h]
                return a

            want = formula(model.run_with_hooks(neg, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch_head)]))
            assert rec["heads"]["values"][layer][h] == pytest.approx(want, abs=tol(want)), (layer, h)
    assert len(set(np.round(values, 6))) > 1  # a real test: the components recover different shares
    # The representation variants stay beside it, each labelled with its question.
    assert set(rec["variants"]) == {ex.LOGIT_DIFF_RECOVERY, *ex.RECOVERY_VARIANTS}
    assert set(rec["questions"]) == set(rec["variants"])


def test_logit_diff_costs_no_forward(model64):
    """The logit_diff column is read from the logits of the patched runs the other variants already run."""
    model = model64
    pair = pipeline.rendered_pair(model, "golf", 4_000_011)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    runs = ex.pair_runs(model, pos, neg, ex.recovery_hooks(model))
    costs = []
    for classes in (None, (2, 4)):
        with ForwardCounter(model) as cost:
            ex.component_recovery(model, pos, neg, runs=runs, outcome_classes=classes)
        costs.append(cost.summary()["total"])
    assert costs[0] == costs[1] > 0


def test_without_outcome_logits_the_representation_headline_says_what_remains(model64):
    model = model64
    pair = pipeline.rendered_pair(model, "golf", 4_000_011)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    rec = ex.component_recovery(model, pos, neg)
    assert rec["headline"] == "cls_projection" and rec["outcome_classes"] is None
    assert ex.LOGIT_DIFF_RECOVERY not in rec["variants"] and "heads" not in rec
    assert "cannot be asked" in rec["headline_reason"] and "remains answerable" in rec["headline_reason"]
    # Outcome classes whose logit difference is the same in both clips (two equal classifier rows): undefined,
    # said so, and the representation headline.
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.unembed.W_U[:, 1] = twin.unembed.W_U[:, 0]
        twin.unembed.b_U[1] = twin.unembed.b_U[0]
    rec = ex.component_recovery(twin, pos, neg, outcome_classes=(0, 1))
    assert rec["headline"] == "cls_projection" and ex.LOGIT_DIFF_RECOVERY not in rec["variants"]
    assert "nothing to recover" in rec["outcome_classes"]["undefined"] and "undefined" in rec["headline_reason"]


# --------------------------------------------------------------------------------- planted models
def test_and_composition_logit_diff_ranks_the_composing_mlp_first(and_composition):
    """The composing MLP restores the whole decision (1), every attention block and every head alone
    nothing (0: one gathered blob without the other does not fire the AND neuron), on several pairs;
    cls_projection, beside it, ranks the MLP last (the reason for the headline)."""
    pm = and_composition
    for seed in range(3):
        pos, neg = pm.pair(seed)
        rec = ex.component_recovery(
            pm.model, pos, neg, outcome_classes=(pm.truth.positive, pm.truth.negative), heads=True
        )
        assert rec["headline"] == "logit_diff"
        ld = rec["variants"]["logit_diff"]
        assert ld["mlp"][2] == pytest.approx(1.0, abs=1e-5)
        for comp in ("attn", "mlp"):
            for layer in range(3):
                if (comp, layer) != ("mlp", 2):
                    assert ld[comp][layer] == pytest.approx(0.0, abs=1e-5), (comp, layer)
        np.testing.assert_allclose(rec["heads"]["values"], 0.0, atol=1e-5)
        proj = rec["variants"]["cls_projection"]
        assert proj["mlp"][2] < max(proj["attn"])


def test_single_head_logit_diff_ranks_the_planted_head_first(single_head):
    """At the shipped level the planted model has distractors that respond within the pair (a cancelled head
    and the neurons cancelling it, a backup), so recovery is not exactly 1 / 0: each component's value is
    recomputed by hand (its output at every position patched from the positive run with a raw hook, the
    normalised logit difference in float64) and the planted head's layer and the planted head rank first."""
    pm = single_head
    m = pm.model
    c, o = pm.truth.positive, pm.truth.negative

    def ld(logits):
        return (logits[0, c] - logits[0, o]).double()

    for seed in range(3):
        pos, neg = pm.pair(seed)
        rec = ex.component_recovery(m, pos, neg, outcome_classes=("blob", "no blob"), heads=True)
        got = rec["variants"]["logit_diff"]
        with torch.inference_mode():
            clean_logits, cache = m.run_with_cache(pos)
            corrupt = ld(m(neg))
        clean = ld(clean_logits)
        for kind, hook in (("attn", "hook_attn_out"), ("mlp", "hook_mlp_out")):
            for layer in range(m.cfg.n_layers):
                name = f"blocks.{layer}.{hook}"
                with torch.inference_mode():
                    patched = ld(m.run_with_hooks(neg, fwd_hooks=[(name, lambda a, hook: cache[hook.name])]))
                want = float((patched - corrupt) / (clean - corrupt))
                assert got[kind][layer] == pytest.approx(want, abs=1e-4), (kind, layer)
        values = {(k, l): v for k in ("attn", "mlp") for l, v in enumerate(got[k])}
        assert max(values, key=values.get) == ("attn", 1)
        heads = np.asarray(rec["heads"]["values"])
        assert np.unravel_index(heads.argmax(), heads.shape) == (1, 2)


# ----------------------------------------------------------------------------- analyze, study, CLI
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = HookedViViT.from_hf_model(make_hf(SQUARE, seed=3))
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def test_study_with_outcome_classes_headlines_logit_diff(saved_model, tmp_path):
    """Any classifier given (positive, negative) outcome classes: the study's headline ("attn" / "mlp",
    results.json's "headline") is the logit-difference recovery, the representation variants beside it."""
    import json

    model = HookedViViT.from_pretrained(saved_model)
    studies = pipeline.run_study(
        model, ["golf"], 5, tmp_path / "study", progress=False, outcome_pairs=2, probe_pairs=5, outcome_classes=(0, 1)
    )
    st = studies[0]
    assert st["headline"] == "logit_diff" and st["outcome_classes"] == [model.cfg.id2label[0], model.cfg.id2label[1]]
    assert "attn" not in st and len(st["recovery"]["logit_diff"]["attn"]["per_pair"]) == 5  # one name per value
    assert set(st["recovery"]) == {"logit_diff", *ex.RECOVERY_VARIANTS} == set(st["questions"])
    data = json.loads((tmp_path / "study" / "results.json").read_text())
    assert data["studies"][0]["headline"] == "logit_diff"
    html = (tmp_path / "study" / "report.html").read_text()
    assert "golf: logit_diff" in html and "Zhang &amp; Nanda" in html
    assert "The question each variant answers" in html and "outcome decision" in html
    # A pair placed among the study's pairs: by the headline where the study has it, else by cls_projection.
    summary = pipeline.study_summary(model, studies)
    first = {
        "headline": "logit_diff",
        "variants": {v: {c: r[c]["per_pair"][0] for c in ("attn", "mlp")} for v, r in st["recovery"].items()},
    }
    placed = pipeline.place_in_distribution(first, summary, "golf")
    assert placed["headline"] == "logit_diff" and placed["largest"]["value"] == max(
        (first["variants"]["logit_diff"][c][l] for c in ("attn", "mlp") for l in range(2)), key=abs
    )
    summary["domains"]["golf"]["recovery_per_pair"].pop("logit_diff")
    assert pipeline.place_in_distribution(first, summary, "golf")["headline"] == "cls_projection"
    # Without outcome classes (a random model's labels name no outcome): the representation headline.
    st = pipeline.study_domain(model, "golf", 5, outcome_pairs=0, probe_pairs=5, progress=False)
    assert st["headline"] == "cls_projection" and "logit_diff" not in st["recovery"]
    assert "attn" not in st and len(st["recovery"]["cls_projection"]["attn"]["per_pair"]) == 5


def test_analyze_outcome_classes_on_the_command_line(saved_model, tmp_path, capsys):
    import json

    from hooked_vivit.cli import main

    out = tmp_path / "a"
    argv = ["analyze", "--model", str(saved_model), "--probe-pairs", "0", "--quiet", "--out", str(out)]
    assert main([*argv, "--outcome-classes", "LABEL_0", "1"]) == 0
    assert "(logit_diff)" in capsys.readouterr().out  # the printed summary is the headline's
    data = json.loads((out / "results.json").read_text())
    rec = data["recovery"]
    assert rec["headline"] == "logit_diff" and rec["outcome_classes"]["positive"] == 0
    assert rec["outcome_classes"]["negative"] == 1 and "logit_diff" in rec["summary"]
    assert "logit_diff" in (out / "report.html").read_text()
    # Every number of every caption (the recovery caption names the classes and their logit differences) is
    # the value at a path of results.json.
    from tests.test_analysis import check_captions

    check_captions(data, (data["model"], *data["pair"]["names"], data["dla"]["class_name"]))
    (caption,) = [c["text"] for c in data["captions"] if c["section"] == "recovery"]
    assert "logit-difference recovery (logit_diff)" in caption and "'LABEL_0' minus that of 'LABEL_1'" in caption
    assert main([*argv[:-1], str(tmp_path / "b"), "--outcome-classes", "LABEL_0", "nope"]) == 2
    assert "'nope' is not one of the model's labels" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_analyze_on_the_outcomes_organism_reads_its_outcome_logits():
    """The outcomes organism has a logit per outcome ("bowling strike", "bowling gutter"): analyze picks
    them for a rendered pair without being told, and the logit-difference recovery is the headline; the
    action organism has none, and its report says which question remains."""
    from hooked_vivit import organism

    for name, headline in (("outcomes", "logit_diff"), ("actions", "cls_projection")):
        model = organism.load(name)
        pair = pipeline.rendered_pair(model, "bowling", 4_000_000)
        classes = pipeline.pair_outcome_classes(model, pair.domain, pair.names)
        pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
        rec = ex.component_recovery(model, pos, neg, outcome_classes=classes)
        assert rec["headline"] == headline, name
        if name == "outcomes":
            assert rec["outcome_classes"]["names"] == ["bowling strike", "bowling gutter"]
            assert rec["outcome_classes"]["logit_diff_clean"] > rec["outcome_classes"]["logit_diff_corrupted"]
        else:
            assert classes is None and "remains answerable" in rec["headline_reason"]


def test_study_over_real_pairs_with_outcome_classes(saved_model):
    """study --pairs MANIFEST's per-pair measures and summary (pair_study): with outcome classes every pair
    carries logit_diff and the summary's headline (attn / mlp) is it; without, cls_projection."""
    from hooked_vivit.analysis import pair_study

    model = HookedViViT.from_pretrained(saved_model)
    pairs = [pipeline.rendered_pair(model, "golf", 4_000_100 + i) for i in range(5)]
    pixels = [(pipeline.model_pixels(model, p.positive), pipeline.model_pixels(model, p.negative)) for p in pairs]
    for classes, headline in (((0, 1), "logit_diff"), (None, "cls_projection")):
        per_pair = [
            pair_study.pair_measures(model, pos, neg, outcome=False, outcome_classes=classes) for pos, neg in pixels
        ]
        st = pair_study.summarize_pairs(model, per_pair)
        assert st["headline"] == headline and set(st["questions"]) == set(st["recovery"])
        assert "attn" not in st and len(st["recovery"][headline]["attn"]["per_pair"]) == len(per_pair)
        assert (ex.LOGIT_DIFF_RECOVERY in st["recovery"]) == (classes is not None)
