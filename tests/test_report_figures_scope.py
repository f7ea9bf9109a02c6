"""The report's figures and scope box (issue 30, items 5 and 6): every layer axis has one integer tick
per layer and every axis a label; the scope box lists the reference paper's eight claims, says which
this model can test and why, and writes what a run found from the numbers of results.json."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis import report as rp
from tests.conftest import make_hf

TINY = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=[2, 8, 8],
    hidden_size=16,
    num_attention_heads=2,
    intermediate_size=32,
    num_labels=6,
)
L = 5  # layers of the synthetic figure data


@pytest.fixture
def figures(monkeypatch):
    """Every figure a report function draws, kept open (report functions close theirs)."""
    kept = []
    close = plt.close
    monkeypatch.setattr(rp.plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def _labelled(fig) -> None:
    """Every axis that shows tick labels has a non-empty label (a colorbar's label counts)."""
    fig.canvas.draw()
    for ax in fig.axes:
        if not ax.axison:
            continue
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            shown = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
            if shown:
                assert label.strip(), (ax.get_title(), shown)


def _layer_ticks(ax, n: int) -> None:
    """One tick per layer, at the integers 0..n-1, each labelled with a whole layer number."""
    assert list(ax.get_xticks()) == list(range(n))
    for t in ax.get_xticklabels():
        assert re.fullmatch(r"(?:\D*\s)?\d+", t.get_text()), t.get_text()


def _variants(rng):
    return {
        v: {c: rng.normal(0.3, 0.4, L).tolist() for c in ("attn", "mlp")}
        for v in ("logit_diff", "cls_projection", "token_projection", "norm_ratio_cls", "norm_recovery")
    }


def test_every_figure_labels_its_axes_and_ticks_layers_as_integers(tmp_path, figures):
    rng = np.random.default_rng(0)
    kinds = ("resid_pre", "resid_post", "attn_out", "mlp_out")
    deltas = {
        "layers": list(range(L)),
        "readout": "CLS",
        **{w: {k: rng.random(L).tolist() for k in kinds} for w in ("cls", "tokens")},
    }
    rp.fig_deltas(deltas, tmp_path / "d.png")
    fig = figures[-1]
    _labelled(fig)
    for ax in fig.axes:
        _layer_ticks(ax, L)
        assert "residual-stream units" in ax.get_ylabel()
    # the study's form: no "layers" key, with intervals
    ci = {w: {k: (np.zeros(L).tolist(), np.ones(L).tolist()) for k in kinds} for w in ("cls", "tokens")}
    rp.fig_deltas({w: deltas[w] for w in ("cls", "tokens")}, tmp_path / "d2.png", ci)
    for ax in figures[-1].axes:
        _layer_ticks(ax, L)

    variants = _variants(rng)
    for kind in ("cls_projection", "logit_diff"):
        rp.fig_recovery(variants, tmp_path / f"r_{kind}.png", kind=kind)
        (ax,) = figures[-1].axes
        _labelled(figures[-1])
        _layer_ticks(ax, L)
        assert ax.get_ylabel() == rp.RECOVERY_UNITS[kind] and "%" in ax.get_ylabel()
    assert "outcome logit difference" in rp.RECOVERY_UNITS["logit_diff"]

    rp.fig_recovery_variants(variants, tmp_path / "rv.png")
    fig = figures[-1]
    _labelled(fig)
    assert len(fig.axes) == len(variants)
    for ax, v in zip(fig.axes, variants):
        _layer_ticks(ax, L)
        assert ax.get_ylabel() == rp.RECOVERY_UNITS[v] and ax.get_title() == rp.VARIANT_LABELS[v]

    def change(c):
        return {"change": c, "control_mean": c / 2, "control_std": 0.1, "control_p": 0.5}

    ablation = {
        "n_controls": 20,
        "regions": {
            "top class-DLA tokens": {
                "pixels": 4096,
                **{s: change(-0.1) for s in ("class_logit", "logit_gap", "direction")},
            },
            "object: ball": {
                "pixels": 804,
                **{
                    s: {**change(0.2), "control_mean": None, "control_std": None}
                    for s in ("class_logit", "logit_gap", "direction")
                },
            },
        },
    }
    rp.fig_outcome_ablation(
        ablation, tmp_path / "oa.png", labels={"top class-DLA tokens": "top class-DLA tokens (8 tokens, 4096 px)"}
    )
    fig = figures[-1]
    _labelled(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [rp.SIGNAL_LABELS[s][0] for s in ("class_logit", "logit_gap", "direction")]
    assert not any("_" in t for t in titles)  # readable titles, not variable names
    assert [ax.get_xlabel() for ax in fig.axes] == [
        rp.SIGNAL_LABELS[s][1] for s in ("class_logit", "logit_gap", "direction")
    ]
    assert "(logits)" in fig.axes[0].get_xlabel()
    # each region named with its size: the label given (tokens), else its pixels from the ablation
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names == ["top class-DLA tokens (8 tokens, 4096 px)", "object: ball (804 px)"]

    enr = {
        o: {w: {"enrichment": float(rng.random() * 3)} for w in ("CLS attention", "|class DLA|")}
        for o in ("ball", "pins")
    }
    rp.fig_enrichment(enr, tmp_path / "e.png")
    _labelled(figures[-1])
    assert figures[-1].axes[0].get_xlabel() == "rendered object"

    def probe(a):
        return {
            "accuracy": a,
            "accuracy_ci95": [a - 0.1, a + 0.05],
            "paired_accuracy": a,
            "paired_accuracy_ci95": [a - 0.1, a + 0.05],
            "control_accuracy": 0.5,
            "control_paired_accuracy": 0.5,
        }

    names = [f"resid_pre {l}" for l in range(L)] + [f"resid_post {L - 1}"]
    probes = {
        "layers": names,
        "cls": [probe(0.6 + 0.05 * i) for i in range(L + 1)],
        "mean": [probe(0.55 + 0.05 * i) for i in range(L + 1)],
        "pixels": probe(0.7),
        "pixels_mean": probe(0.6),
        "nested": probe(0.8),
        "random_weights": probe(0.55),
    }
    rp.fig_probes_ci(probes, tmp_path / "p.png")
    fig = figures[-1]
    _labelled(fig)
    for ax in fig.axes:
        _layer_ticks(ax, L + 1)
        assert [t.get_text() for t in ax.get_xticklabels()] == names and "%" in ax.get_ylabel()

    dla = {"heatmap": rng.normal(size=(4, 3, 3)).tolist(), "class_name": "bowling"}
    rp.fig_dla(dla, tmp_path / "dla.png")
    fig = figures[-1]
    _labelled(fig)  # the panels are images without axes; the colorbar's axis carries the unit
    assert any("(logits)" in ax.get_ylabel() for ax in fig.axes if ax.axison)


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_hf_model(make_hf({**TINY, "num_hidden_layers": 2}, seed=1))


@pytest.fixture(scope="module")
def model12():
    """Twelve layers, as ViViT-B: the paper's layer numbers apply unmapped."""
    return HookedViViT.from_hf_model(make_hf({**TINY, "num_hidden_layers": 12}, seed=1))


def test_scope_lists_the_papers_eight_claims_with_testability(model, model12):
    sc = rp.scope(model)
    ids = [c["id"] for c in sc["claims"]]
    assert ids == [
        "deltas",
        "attention_recovery",
        "mlp_recovery",
        "dla_objects",
        "cls_attention",
        "region_ablation",
        "probe_fingerprint",
        "gather_compose",
    ]
    assert len(sc["claims"]) == len(rp.PAPER_CLAIMS) == 8
    claims = {c["id"]: c for c in sc["claims"]}
    for c in sc["claims"]:
        assert c["status"] in (rp.TESTABLE, rp.MAPPED, rp.NOT_TESTABLE) and c["needs"]
        assert c["testable"] == (c["status"] != rp.NOT_TESTABLE)
    # no logit per outcome (labels are LABEL_0..5): claim 8 is not testable, and says why
    assert not rp.has_outcome_logits(model.cfg)
    g = claims["gather_compose"]
    assert g["status"] == rp.NOT_TESTABLE and "no logit per outcome" in g["needs"]
    # two layers: the paper's layers 5-11 map to 0-1, too few for a trend; layer 4 maps to 0, 9 and 10 to 1 and 1
    assert claims["deltas"]["status"] == rp.NOT_TESTABLE and claims["deltas"]["mapped_layers"]["here"] == [0, 1]
    assert claims["mlp_recovery"]["status"] == rp.MAPPED and claims["mlp_recovery"]["mapped_layers"]["here"] == [0]
    assert claims["cls_attention"]["mapped_layers"]["here"] == [1, 1]
    # twelve layers: the paper's own layer numbers, nothing mapped
    c12 = {c["id"]: c for c in rp.scope(model12)["claims"]}
    assert c12["deltas"]["status"] == rp.TESTABLE and c12["deltas"]["mapped_layers"]["here"] == [5, 11]
    assert c12["mlp_recovery"]["mapped_layers"]["here"] == [4] and c12["cls_attention"]["mapped_layers"]["here"] == [
        9,
        10,
    ]
    assert [rp.paper_layer(l, 4) for l in (4, 5, 9, 10, 11)] == [1, 1, 2, 3, 3]
    # a model whose labels name both outcomes of a domain can test claim 8; so can scope told so
    assert rp.scope(model, outcome_logits=True)["claims"][-1]["status"] == rp.TESTABLE
    from types import SimpleNamespace

    assert rp.has_outcome_logits(SimpleNamespace(label2id={"bowling strike": 0, "bowling gutter": 1}, id2label={}))
    assert not rp.has_outcome_logits(SimpleNamespace(label2id={"bowling strike": 0}, id2label={}))
    html = rp.scope_html(sc)
    assert html.count("<li>") == 8 and "<b>not testable</b>" in html and "no logit per outcome" in html


def test_spearman_rise_is_exact_for_few_layers():
    t = rp.spearman_rise([1.0, 2.0, 3.0])
    assert (t["rho"], t["p"], t["exact"]) == (pytest.approx(1.0), pytest.approx(1 / 6), True)
    assert rp.spearman_rise([3.0, 2.0, 1.0])["p"] == pytest.approx(1.0)
    t = rp.spearman_rise(list(range(7)))
    assert t["p"] == pytest.approx(1 / 5040)  # seven layers (5..11): only the increasing order reaches rho = 1
    from scipy import stats

    v = [0.3, 0.1, 0.5, 0.4, 0.9, 0.8, 1.2, 1.0, 1.5, 1.3]  # ten: scipy's p
    t = rp.spearman_rise(v)
    assert not t["exact"] and t["p"] == pytest.approx(stats.spearmanr(range(10), v, alternative="greater").pvalue)


def _results(model, deltas_tokens, rec, *, logit_diff: bool = False) -> dict:
    """A results.json of an analysis, with the fields the scope findings read (values chosen here)."""
    n = model.cfg.n_layers
    variants = {"cls_projection": rec}
    if logit_diff:
        variants["logit_diff"] = {"attn": [0.1] * n, "mlp": [0.9] * n}
    return {
        "model": model.cfg.model_name,
        "scope": rp.scope(model),
        "deltas": {"layers": list(range(n)), "readout": "CLS", "tokens": {"resid_post": deltas_tokens}},
        "recovery": {"headline": "logit_diff" if logit_diff else "cls_projection", "variants": variants},
        "dla": {"top_tokens_before_divergence": 3, "top_tokens_n": 8},
        "cls_attention": {
            "object_share": {
                "ball": [[0.1 * (l + 1)] * 2 for l in range(n)],
                "ball (token share of the grid)": 0.05,
            }
        },
        "outcome": {
            "enrichment": {
                "ball": {"|class DLA| (positive clip)": {"enrichment": 2.5, "enrichment_differing": 0.4}},
            }
        },
        "region_ablation": {
            "change": -2.742,
            "relative_change": -0.307,
            "control_mean": -0.343,
            "control_p": 0.005,
            "control_p_holm": 0.035,
            "box_tokens": 24,
            "n_tokens": 8,
        },
        "probes": {
            "pixel_ceiling": {
                "baseline": "pixels",
                "pixels": 0.9,
                "pixels_ci95": [0.8, 0.97],
                "probe": 0.85,
                "probe_ci95": [0.75, 0.95],
                "fingerprint": True,
            }
        },
    }


def _check(results: dict) -> int:
    """Every number of every finding is the formatted value at its recorded path (as captions)."""
    from collections import Counter

    n = 0
    for cap in results["captions"]:
        written = Counter(rp.numbers_in(cap["text"], (results["model"],)))
        referenced = Counter(
            t for path, fmt in cap["numbers"] for t in rp.numbers_in(rp.format_number(rp.lookup(results, path), fmt))
        )
        assert written == referenced, (cap["section"], written - referenced, referenced - written)
        n += 1
    return n


def test_scope_findings_are_generated_from_the_numbers(model12, model):
    n = 12
    rising = [0.1 * l for l in range(n)]
    rec = {"attn": [0.5, 0.2] + [0.3] * (n - 2), "mlp": [0.2] * 4 + [1.2, 0.8] + [1.5] * (n - 6)}
    res = _results(model12, rising, rec)
    found = rp.scope_findings(res)
    claims = {c["id"]: c for c in res["scope"]["claims"]}
    assert _check(res) == len(found) == 7  # every claim but claim 8 (no outcome logits)
    # claim 1: Spearman over layers 5..11 of the mean per-token difference, exact one-sided p = 1/7!
    t = claims["deltas"]["test"]
    assert t["layers"] == [5, 11] and t["rho"] == pytest.approx(1.0) and t["p"] == pytest.approx(1 / 5040)
    assert t["rises"] and "it rises at the 5% level" in found["deltas"] and "p = 0.000" in found["deltas"]
    assert f"{rising[5]:.3f} to {rising[11]:.3f}" in found["deltas"]
    # claim 2: one attention block of 12 in 45-65 %; claim 3: MLPs from layer 4 on, 6 of 8 above 100 %
    a = claims["attention_recovery"]["test"]
    assert (a["in_range"], a["of"], a["min"], a["max"]) == (1, 12, 0.2, 0.5)
    assert (
        "Attention blocks recover 20% to 50% (cls_projection); 1 of 12 lie in the paper's 45% to 65%"
        in found["attention_recovery"]
    )
    m = claims["mlp_recovery"]["test"]
    assert (m["from_layer"], m["above"], m["of"]) == (4, 7, 8)
    assert (
        "MLP blocks from layer 4 on recover 80% to 150% (cls_projection); 7 of 8 exceed 100%" in found["mlp_recovery"]
    )
    # claim 5: CLS attention at layers 9 and 10, mean over heads: (1.0 + 1.1) / 2 = 1.05 over a base rate of 5 %
    c5 = claims["cls_attention"]["test"]
    assert c5["layers"] == [9, 10] and c5["objects"]["ball"]["share"] == pytest.approx(1.05)
    assert c5["objects"]["ball"]["enrichment"] == pytest.approx(21.0)
    # claim 6: the class logit's drop, its matched boxes and p, and the word from Holm's p against 5 %
    assert found["region_ablation"].startswith(
        "The class logit changes by -2.742 (-31%) when the box of 24 tokens around the 8"
    )
    assert "p = 0.005, Holm p = 0.035, below 5%; descriptive, not claimed significant" in found["region_ablation"]
    # claim 7: the pixel-ceiling rule's verdict, not a word of its own
    assert "a pixel fingerprint by the report's rule" in found["probe_fingerprint"]
    assert claims["gather_compose"]["finding"] is None and not claims["gather_compose"]["testable"]

    # flat deltas: no rise claimed; Holm p above 5 %: not distinguishable; no fingerprint by the rule
    res = _results(model12, [1.0, 0.5] * 6, rec)
    res["region_ablation"]["control_p_holm"] = 0.333
    res["probes"]["pixel_ceiling"]["fingerprint"] = False
    found = rp.scope_findings(res)
    _check(res)
    assert "no rise shown at the 5% level" in found["deltas"] and "rises" not in found["deltas"]
    assert "Holm p = 0.333, above 5%; descriptive" in found["region_ablation"]
    assert "not a pixel fingerprint" in found["probe_fingerprint"]

    # a run that read outcome logits makes claim 8 testable, its finding from the logit-difference recovery
    res = _results(model12, rising, rec, logit_diff=True)
    found = rp.scope_findings(res)
    _check(res)
    g = {c["id"]: c for c in res["scope"]["claims"]}["gather_compose"]
    assert g["testable"] and g["test"] == {"attn_mean": pytest.approx(0.1), "mlp_mean": pytest.approx(0.9)}
    assert "attention blocks 10%, MLP blocks 90%" in found["gather_compose"]

    # two layers: no trend can be tested; the box shows the claim as not testable, with no finding
    res = _results(model, [0.1, 0.2], {"attn": [0.5, 0.6], "mlp": [1.2, 0.9]})
    found = rp.scope_findings(res)
    _check(res)
    assert "deltas" not in found and {c["id"]: c for c in res["scope"]["claims"]}["deltas"]["finding"] is None
    html = rp.scope_html(res["scope"])
    assert html.count("This run:") == len(found) and "fewer than 3 layers" in html
    res["probes"] = {}  # probes not run: testable, not measured
    rp.scope_findings(res)
    assert "Not measured in this run." in rp.scope_html(res["scope"])


def test_class_logit_ablation_table_shows_controls_and_box_size():
    a = {
        "change": -2.742,
        "relative_change": -0.307,
        "control_mean": -0.343,
        "control_std": 0.166,
        "control_p": 0.048,
        "control_p_holm": 0.333,
        "box_tokens": 24,
        "n_tokens": 8,
        "controls": {"found": 20, "requested": 20},
    }
    html = pipeline.class_logit_ablation_table_html({"region_ablation": a})
    for text in (
        "class-logit box (e): 24 tokens around the top 8",
        "-2.742",
        "-31%",
        "-0.343 ± 0.166",
        "20 / 20",
        "0.048",
        "0.333",
    ):
        assert text in html, text
    assert pipeline.class_logit_ablation_table_html({"region_ablation": {**a, "change": None}}) == ""
    labels = pipeline.outcome_region_labels(
        {
            "outcome": {
                "top_class_dla_tokens": list(range(8)),
                "top_differential_dla_tokens": list(range(8)),
                "ablation": {"regions": {"top class-DLA tokens": {"pixels": 4096}, "object: ball": {"pixels": 804}}},
            }
        }
    )
    assert labels == {
        "top class-DLA tokens": "top class-DLA tokens (8 tokens, 4096 px)",
        "object: ball": "object: ball (804 px)",
    }
