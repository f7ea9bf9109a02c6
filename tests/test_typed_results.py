"""The experiments return dataclasses; results.json holds their to_json(), in the layout it had when
they returned dicts (keys, key order, value types: written out below from a results.json of the
dict-returning code), and the pipeline's numbers are the dataclasses' fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.causal.probes import cross_validated_probe
from tests.conftest import make_hf
from tests.tolerances import fp32_tol

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
KINDS = {"resid_pre": "list", "resid_post": "list", "attn_out": "list", "mlp_out": "list"}
SEQUENTIAL = {"p": "float", "used": "int", "exceedances": "int", "stopped_early": "bool", "n_max": "int", "h": "int"}
# analyze's region tests run Besag-Clifford's sequential test (stop_after): each change records where it stopped
CHANGE = {
    "change": "float",
    "control_mean": "float",
    "control_std": "float",
    "control_p": "float",
    "sequential": SEQUENTIAL,
}
MATCHED = {
    "matching": "str",
    "region_share": "float",
    "band": "list",
    "requested": "int",
    "found": "int",
    "candidates": "int",
    "enough": "bool",
    "shares": "list",
    "overlap_mean": "float",
    "used": "int",
}
REGION = {
    "pixels": "int",
    "control_pixels_mean": "float",
    "frames": "list",
    "controls": MATCHED,
    "descriptive": "bool",
    # control_p_holm: added by the pipeline's Holm adjustment over the report
    **{
        s: {**CHANGE, "relative_change": "float", "control_p_holm": "float"}
        for s in ("class_logit", "logit_gap", "direction")
    },
}
# The ball of this pair holds 24 % of the pixel difference and no box elsewhere holds as much: no control,
# no p-value (None), and the layout says so rather than falling back to unmatched boxes.
UNMATCHED = {
    **REGION,
    "control_pixels_mean": "NoneType",
    "controls": {**MATCHED, "overlap_mean": "NoneType"},
    **{
        s: {
            "change": "float",
            "control_mean": "NoneType",
            "control_std": "NoneType",
            "control_p": "NoneType",
            "sequential": "NoneType",
            "relative_change": "float",
            "control_p_holm": "NoneType",
        }
        for s in ("class_logit", "logit_gap", "direction")
    },
}
ENRICH = {"mean_share": "float", "base_rate": "float", "enrichment": "float"}
DIFFERING = {"base_rate_differing": "float", "enrichment_differing": "float"}
ENRICHMENT = {
    "CLS attention (positive clip)": {"share": "list", **ENRICH, **DIFFERING},
    **{w: {"share": "float", **ENRICH, **DIFFERING} for w in ("|class DLA| (positive clip)", "|differential DLA|")},
}
PROBE = {
    "pairs": "int",
    "folds": "int",
    "repeats": "int",
    "train_pairs_per_fold": "int",
    "test_pairs_per_fold": "int",
    "train_accuracy": "float",
    "accuracy": "float",
    "accuracy_ci95": "list",
    "paired_accuracy": "float",
    "paired_accuracy_ci95": "list",
    "control_accuracy": "float",
    "control_accuracy_ci95": "list",
    "control_paired_accuracy": "float",
    "control_paired_accuracy_ci95": "list",
    "selectivity": "float",
}
NESTED = {  # the probe's layer x pooling choice cross-validated (nested), on the trained or random-weights model
    "configurations": "list",
    "pairs": "int",
    "folds": "int",
    "inner_folds": "int",
    "repeats": "int",
    "selection": "str",
    "accuracy": "float",
    "accuracy_ci95": "list",
    "paired_accuracy": "float",
    "paired_accuracy_ci95": "list",
    "chosen": "list",
    "chosen_counts": [{"configuration": "str", "folds": "int"}],
    "control_accuracy": "float",
    "control_accuracy_ci95": "list",
    "control_paired_accuracy": "float",
    "control_paired_accuracy_ci95": "list",
    "control_chosen": "list",
    "selectivity": "float",
}
LAYOUT = {
    "deltas": {"layers": "list", "readout": "str", "cls": KINDS, "tokens": KINDS},
    "region_ablation": {
        "tokens": "list",
        "box": {k: "int" for k in ("t0", "t1", "y0", "y1", "x0", "x1")},
        "mode": "str",
        "table": [{"class": "int", "name": "str", "before": "float", "after": "float", "delta": "float"}],
        "top1_before": "str",
        "top1_after": "str",
        "box_tokens": "int",
        "class": "int",
        "change": "float",
        "relative_change": "float",
        "controls": {**MATCHED, "control_pixels_mean": "float"},
        "control_mean": "float",
        "control_std": "float",
        "control_p": "float",
        "sequential": SEQUENTIAL,
        "descriptive": "bool",
        "n_tokens": "int",
        "last_frame": "int",
        "last_row": "int",
        "last_col": "int",
        "control_p_holm": "float",
    },
    "outcome": {
        "class": "int",
        "divergence_frame": "int",
        "from_frame": "int",
        "differential_dla": {
            "class": "int",
            "class_name": "str",
            "logit_difference": "float",
            "attention_total": "float",
            "per_head": "list",
            "cls_source": "float",
            "heatmap": "list",
            "per_slot_abs": "list",
            "share_after_divergence": "float",
        },
        "top_class_dla_tokens": "list",
        "top_differential_dla_tokens": "list",
        "ablation": {
            "n_controls": "int",
            "matching": {"relative_tolerance": "float", "absolute_tolerance": "float", "max_overlap": "float"},
            "mode": "str",
            "base": {"direction": "float", "logit_gap": "float", "class_logit": "float"},
            "regions": {
                "top class-DLA tokens": REGION,
                "top differential-DLA tokens": REGION,
                "object: ball": UNMATCHED,
                "object: pins": REGION,
            },
        },
        "differing_tokens": "int",
        "descriptive": "str",
        "enrichment": {"ball": ENRICHMENT, "pins": ENRICHMENT},
    },
    "probes": {
        "layers": "list",
        "pairs": "int",
        "folds": "int",
        "repeats": "int",
        "method": "str",
        "cls": [PROBE],
        "mean": [PROBE],
        "pixels": PROBE,
        "pixels_mean": PROBE,
        "train_pairs_per_fold": "int",
        "test_pairs_per_fold": "int",
        "nested": NESTED,
        "random_weights": {"seed": "int", **NESTED},
        "pixel_ceiling": {
            "metric": "str",
            "baseline": "str",
            "pixels": "float",
            "pixels_ci95": "list",
            "probe": "float",
            "probe_ci95": "list",
            "pixels_above_chance": "bool",
            "pixels_reach_probe": "bool",
            "fingerprint": "bool",
            "rule": "str",
            "random_weights": "float",
            "above_random_weights": "bool",
        },
        "seeds": "list",
        "domain": "str",
        "best": {"pooling": "str", "index": "int", "layer": "str"},
    },
}


def layout(x):
    """Keys in order and value types; a list of dicts by its first element."""
    if isinstance(x, dict):
        return {k: layout(v) for k, v in x.items()}
    if isinstance(x, list) and x and isinstance(x[0], dict):
        return [layout(x[0])]
    return type(x).__name__


@pytest.fixture(scope="module")
def analyzed():
    model = HookedViViT.from_hf_model(make_hf(SQUARE, seed=3))
    pair = pipeline.rendered_pair(model, "bowling", 4_000_001)
    return model, pair, pipeline.analyze_pair(model, pair, probe_pairs=5, n_controls=3, progress=False)


def test_results_keep_their_layout_and_are_plain_json(analyzed):
    _, _, res = analyzed
    for section, want in LAYOUT.items():
        got = layout(res[section])
        assert got == want and json.dumps(got) == json.dumps(want), section  # dumps: the key order too
    json.dumps(res, allow_nan=False)  # no tensor, array or dataclass rides along


def test_results_hold_the_dataclass_fields(analyzed):
    model, pair, res = analyzed
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    runs = ex.pair_runs(model, pos, neg)
    c = res["prediction"]["positive"]["class"]
    d = ex.activation_deltas(model, pos, neg, runs=runs)
    assert res["deltas"]["cls"] == d.at_readout and res["deltas"]["tokens"] == d.token_mean
    assert d.readout == "CLS" and d.at_readout["resid_pre"][0] == 0.0  # CLS starts alike in both clips

    dla = ex.token_dla(model, pos, c, run=runs.clean)
    a = ex.region_ablation(model, pos, dla, before=runs.clean.logits)
    ra = res["region_ablation"]
    assert ra["tokens"] == a.tokens and (ra["n_tokens"], ra["last_frame"], ra["last_row"], ra["last_col"]) == (
        len(a.tokens),
        a.box.t1 - 1,
        a.box.y1 - 1,
        a.box.x1 - 1,
    )
    assert ra["top1_before"] == a.table[0]["name"] == model.cfg.id2label[c]

    o = ex.outcome_analysis(
        model,
        pos,
        neg,
        c,
        pair_masks=pair.masks,
        divergence_frame=pair.divergence_frame,
        positive_dla=dla,
        runs=runs,
        n_controls=3,
    )
    ro = res["outcome"]
    assert ro["class"] == o.class_index == c and ro["from_frame"] == o.from_frame == pair.divergence_frame
    diff = o.differential_dla
    assert ro["differential_dla"]["logit_difference"] == diff.logit_difference
    slots = np.abs(np.array(diff.heatmap)).sum((1, 2))  # |grid| per frame slot, by hand
    g = model.cfg.grid  # float32 sums of rows x cols non-negative terms (tests/tolerances.py)
    np.testing.assert_allclose(diff.per_slot_abs, slots, rtol=fp32_tol(1.0, g.n_rows * g.n_cols))
    div_slot = model.cfg.grid.frame_slot_of_frame(pair.divergence_frame)
    assert ro["differential_dla"]["share_after_divergence"] == pytest.approx(slots[div_slot:].sum() / slots.sum())
    region = o.ablation.regions["object: ball"]
    assert ro["ablation"]["regions"]["object: ball"]["logit_gap"]["change"] == region.logit_gap.change
    assert ro["ablation"]["base"]["logit_gap"] == pytest.approx(
        float(runs.clean.logits[0, c] - runs.corrupted.logits[0, c]), abs=1e-6
    )
    e = o.enrichment["ball"]["|differential DLA|"]
    assert ro["enrichment"]["ball"]["|differential DLA|"]["enrichment"] == e.enrichment == e.mean_share / e.base_rate
    assert o.to_json()["differential_dla"] == {
        k: v for k, v in ro["differential_dla"].items() if k != "share_after_divergence"
    }

    # The probes: the pixel baseline's probe, refitted on the same pairs' features, is what results.json holds.
    f = ex.probe_features(model, pipeline.rendered_probe_pairs(model, "bowling", 5, pipeline.ANALYSIS_SEEDS["probe"]))
    pixels = cross_validated_probe(f.pixels, f.labels, f.groups, k=5, repeats=5, seed=0)
    assert res["probes"]["pixels"] == pixels.to_json()
    assert pixels.selectivity == pixels.accuracy - pixels.control_accuracy and pixels.test_pairs_per_fold == 1
    assert f.labels.tolist() == [1, 0] * 5 and f.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert f.cls.shape == (model.cfg.n_layers + 1, 10, model.cfg.d_model) and torch.is_tensor(diff.terms)


def test_every_p_value_of_the_report_is_monte_carlo_and_holm_adjusted(analyzed):
    """Every control_p of results.json is (k + 1)/(n + 1) over its matched boxes (never below 1/(n + 1))
    and carries its Holm adjustment over the report's family (statsmodels on the same list)."""
    from statsmodels.stats.multitest import multipletests

    from hooked_vivit.analysis.report import lookup

    model, pair, res = analyzed
    mc = res["multiple_comparisons"]
    assert mc["method"] == "holm" and mc["family"] == len(mc["tests"]) == 10  # 3 regions x 3 signals + the class box
    assert mc["untested"] == [f"outcome.ablation.regions.object: ball.{s}" for s in ex.SIGNALS]
    raw = [lookup(res, p)["control_p"] for p in mc["tests"]]
    want = multipletests(raw, method="holm")[1]
    assert [lookup(res, p)["control_p_holm"] for p in mc["tests"]] == want.tolist()
    for path in mc["tests"]:
        d = lookup(res, path)
        n = res["outcome"]["ablation"]["n_controls"]
        found = (lookup(res, path.rsplit(".", 1)[0])["controls"] if "regions" in path else d["controls"])["found"]
        assert (
            found == n and d["control_p"] >= 1 / (n + 1) and d["control_p"] * (n + 1) == round(d["control_p"] * (n + 1))
        )
    assert (mc["min_p"], mc["min_p_holm"]) == (1 / 4, 1.0)
    # ... so the caption says no test can reach 5 % with 3 boxes per region (min_p_holm 1.0 > alpha 0.05)
    import copy

    captions = pipeline.analysis_captions(copy.deepcopy(res))
    assert (
        "after Holm over 10 tests at least 1.00, above 5%: no test here can reach significance"
        in captions["outcome_ablation"]
    )
    # the ball, which no other place matches, is said to be untested (and has no p-value in the family)
    n = res["outcome"]["ablation"]["regions"]["object: ball"]["controls"]["candidates"]
    assert (
        f"no box of the region's size among {n} candidates holds a matching share of the pixel difference: untested"
        in captions["outcome_ablation"]
    )
    # the class-logit box: its controls and p-value from region_ablation given the pair's negative clip
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    runs = ex.pair_runs(model, pos, neg)
    c = res["prediction"]["positive"]["class"]
    a = ex.region_ablation(
        model, pos, ex.token_dla(model, pos, c, run=runs.clean), before=runs.clean.logits, negative=neg, n_controls=3
    )
    ra = res["region_ablation"]
    assert (ra["control_p"], ra["controls"], ra["change"], ra["descriptive"]) == (
        a.control_p,
        a.controls,
        a.change,
        True,
    )
    assert ra["box_tokens"] >= ra["n_tokens"]
