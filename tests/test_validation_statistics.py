"""``hooked-vivit validate``'s inference (issue 30, "valid inference"): verdicts from matched nulls, the
outcome-region ablation against matched control boxes with per-pair Monte-Carlo p-values and a paired
test across pairs, and Holm's adjustment across the report, each on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon
from statsmodels.stats.multitest import multipletests

from hooked_vivit import planted
from hooked_vivit.analysis import validation
from hooked_vivit.causal import statistics


# ------------------------------------------------------------------------------ the across-pairs test
def test_signed_rank_test_is_scipys_one_sided_wilcoxon_with_its_rank_biserial():
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0, -0.5])
    t = validation.signed_rank_test(d)
    # |d| ranks 2, 3, 4, 5, 6 positive, 1 negative: W+ = 20, W- = 1; exactly, P(W+ >= 20) = P(W- <= 1) = 2 / 2^6
    assert t["w_plus"] == 20 and t["rank_biserial"] == pytest.approx(19 / 21)
    assert t["p"] == pytest.approx(2 / 64) and t["p"] == pytest.approx(wilcoxon(d, alternative="greater").pvalue)
    assert t["mean_difference"] == pytest.approx(d.mean()) and t["pairs"] == 6 and t["nonzero"] == 6
    # Against a null of 1 (an enrichment): the values minus 1; differences within atol are zeros, dropped.
    e = np.array([1.5, 1.2, 0.9, 1.4, 1.3, 1.0 + 1e-12, 1.1])
    t = validation.signed_rank_test(e, 1.0)
    kept = (e - 1)[np.abs(e - 1) > 1e-9]
    assert t["nonzero"] == 6 and t["p"] == pytest.approx(wilcoxon(kept, alternative="greater").pvalue)
    # Four non-zero pairs cannot reach 5 % one-sided (1/16): no test.
    assert validation.signed_rank_test([1.0, 2.0, 3.0, 4.0, 0.0]) is None


# ------------------------------------------------------------------------------ matched-control ablation
def _pairs(n: int, region_at_blob: bool = True) -> tuple[planted.PlantedModel, list[validation.ValidationPair]]:
    """single_head's pairs (blob on vs off) with a second, equal difference beside the blob: the negative
    clip carries the blob's pixel difference copied 16 pixels to the left, where the planted head does not
    read. Each of the two boxes holds exactly half of the pair's pixel difference. The region is the blob's
    box (``region_at_blob``) or the copy's."""
    pm = planted.build("single_head")
    cfg = pm.cfg
    b = pm.pixel_box(pm.truth.variables[0])  # frames 4..8, rows 8..24, cols 16..32 of 32 x 32
    region = np.zeros((cfg.num_frames, *cfg.image_size), dtype=bool)
    x0 = b.x0 if region_at_blob else b.x0 - 16
    region[b.t0 : b.t1, b.y0 : b.y1, x0 : x0 + 16] = True
    out = []
    for seed in range(n):
        pos, neg = pm.pair(seed)
        neg = neg.clone()
        sl = (slice(None), slice(b.t0, b.t1), slice(None), slice(b.y0, b.y1))
        neg[(*sl, slice(b.x0 - 16, b.x1 - 16))] += pos[(*sl, slice(b.x0, b.x1))] - neg[(*sl, slice(b.x0, b.x1))]
        out.append(validation.ValidationPair(pos, neg, region, b.t0, (pm.truth.positive, pm.truth.negative)))
    return pm, out


def _subject(ablation: dict) -> dict:
    return {"subject": "constructed", "outcome_is_label": True, "truth": {}, "domains": {"d": {"ablation": ablation}}}


def test_region_ablation_against_matched_controls_finds_the_blob():
    torch.set_num_threads(1)
    pm, pairs = _pairs(6)
    ab = validation.region_ablation(pm.model, pairs, n_controls=4)
    assert ab["tested_pairs"] == 6 and ab["controls_found"] == [4] * 6
    for e in ab["per_pair"]:
        # the region holds half of the pair's pixel difference; every control holds its share within the band
        assert e["region_share"] == pytest.approx(0.5, abs=1e-6)
        lo, hi = statistics.share_band(e["region_share"])
        assert (
            e["band"] == pytest.approx([lo, hi])
            and lo <= e["control_share_range"][0] <= e["control_share_range"][1] <= hi
        )
        # zeroing the blob swings the logit difference by ~7.1 in the positive clip (it becomes "no blob"):
        # more than every control, so the Monte-Carlo p is its floor 1/(4 + 1)
        assert e["region_effect"] > max(e["control_effects"])
        assert e["control_p"] == pytest.approx(
            statistics.monte_carlo_p(e["region_effect"], e["control_effects"], "greater")
        )
        assert e["control_p"] == pytest.approx(1 / 5)
    assert ab["per_pair"][0]["control_p_holm"] == pytest.approx(multipletests([0.2] * 6, method="holm")[1][0])
    # the paired test over pairs: region minus the mean of its matched controls, scipy's one-sided Wilcoxon
    diff = [e["region_effect"] - np.mean(e["control_effects"]) for e in ab["per_pair"]]
    t = ab["test"]
    assert t["p"] == pytest.approx(wilcoxon(diff, alternative="greater").pvalue) and t["p"] == pytest.approx(1 / 64)
    assert t["rank_biserial"] == 1.0 and t["mean_difference"] == pytest.approx(np.mean(diff))
    assert ab["to_twin"]["positive"]["mean"] == 1.0  # every positive clip flips to "no blob"
    rows = {f["method"]: f for f in validation.findings(_subject(ab), {})}
    row = rows["outcome-region ablation (4 matched boxes per pair)"]
    # one test in the subject's family: Holm leaves it as it is, below 5 %
    assert row["verdict"] == "found" and row["p"] == row["p_holm"] == pytest.approx(1 / 64)


def test_region_ablation_misses_a_region_the_model_ignores_and_reports_unmatched_pairs():
    torch.set_num_threads(1)
    pm, pairs = _pairs(6, region_at_blob=False)  # the region is the copy: the blob's box is among its controls
    ab = validation.region_ablation(pm.model, pairs, n_controls=4)
    assert ab["tested_pairs"] == 6 and ab["test"]["p"] > 0.5
    row = {f["method"]: f for f in validation.findings(_subject(ab), {})}[
        "outcome-region ablation (4 matched boxes per pair)"
    ]
    assert row["verdict"] == f"missed (Holm p = {row['p_holm']:.2g} >= 5% over 6 pairs)"
    # single_head's own pairs differ only inside the blob: no other place of its size differs as much
    pm = planted.build("single_head")
    b = pm.pixel_box(pm.truth.variables[0])
    region = np.zeros((pm.cfg.num_frames, *pm.cfg.image_size), dtype=bool)
    region[b.t0 : b.t1, b.y0 : b.y1, b.x0 : b.x1] = True
    own = [validation.ValidationPair(p, n, region, b.t0, (1, 0)) for p, n in pm.pairs(5)]
    ab = validation.region_ablation(pm.model, own, n_controls=3)
    assert ab["tested_pairs"] == 0 and ab["controls_found"] == [0] * 5 and ab["test"] is None
    assert ab["region_share"]["mean"] == pytest.approx(1.0)
    assert all(e["control_p"] is None and e["untested"] for e in ab["per_pair"])
    rows = {f["method"]: f["verdict"] for f in validation.findings(_subject(ab), {})}
    assert rows["outcome-region ablation (3 matched boxes per pair)"].startswith(
        "untestable: no pair has a matched control"
    )


# ------------------------------------------------------------------------------ enrichment verdicts
def _maps(differing: np.ndarray, base_differing: float = 0.5, all_tokens: float = 8.0) -> dict:
    """attribution_maps' layout from per-pair enrichments: against the differing tokens ``differing``,
    against all tokens ``all_tokens`` (times a small spread), one attention layer alike."""
    n = len(differing)
    spread = np.linspace(0.95, 1.05, n)
    e_all = all_tokens * spread
    ci, test = validation._ci, validation.signed_rank_test
    testable = base_differing < 1
    dla = {
        "share": ci(0.8 * spread),
        "enrichment": ci(e_all),
        "enrichment_differing": ci(differing),
        "share_after_divergence": ci(np.full(n, 0.9)),
        "enrichment_test": test(e_all, 1.0),
        "enrichment_differing_test": test(differing, 1.0) if testable else None,
    }
    att = {
        "enrichment_per_layer": ci(e_all[:, None]),
        "share_per_layer": ci(0.8 * spread[:, None]),
        "best_layer": 0,
        "best_enrichment": ci(e_all),
        "best_enrichment_differing": ci(differing),
        "enrichment_differing_per_layer": ci(differing[:, None]),
        "tests_per_layer": [test(e_all, 1.0)],
        "tests_differing_per_layer": [test(differing, 1.0) if testable else None],
    }
    return {
        "pairs": n,
        "base_rate": ci(np.full(n, 0.1)),
        "base_rate_differing": ci(np.full(n, base_differing)),
        "max_enrichment_differing": 1 / base_differing,
        "dla_zero_pairs": 0,
        "differential_dla": dla,
        "attention": att,
    }


def _maps_test(row: dict) -> dict:
    """The test a findings row reports (its p and Holm p), as _missed reads it."""
    return {"p": row["p"], "p_holm": row["p_holm"], "pairs": 8}


def _verdicts(maps: dict, outcome_is_label: bool = True) -> dict:
    res = {
        "subject": "constructed",
        "outcome_is_label": outcome_is_label,
        "truth": {},
        "domains": {"d": {"maps": maps}},
    }
    return {f["method"]: f for f in validation.findings(res, {})}


@pytest.mark.parametrize("level, verdict", [(1.3, "found"), (0.7, "missed")])
def test_the_enrichment_verdict_reads_the_differing_tokens(level, verdict):
    """The all-token enrichment is 8 (its interval far above 1) either way: the verdict follows the
    enrichment against the differing tokens across 1, and the all-token one is printed beside it."""
    rows = _verdicts(_maps(level * np.linspace(0.97, 1.03, 8)))
    dla, att = rows["differential DLA on the outcome region"], rows["attention enrichment on the outcome region"]
    if verdict == "found":
        assert dla["verdict"] == "found" and att["verdict"] == "found (layers 0)"
    else:  # the test said no: the verdict says which test and over how many pairs
        assert dla["verdict"] == validation._missed(dla_test := _maps_test(dla)) and dla_test["p"] == 1.0
        assert att["verdict"].startswith("missed (Holm p = 1 >= 5% over 8 pairs")
    assert "against all tokens (base rate 10%; not the verdict's null): enrichment 8.00" in dla["found"]
    assert dla["found"].endswith("enriched; 90% [90%, 90%] of its mass after the divergence")
    # the row's p is the differing-token test's: 8 pairs all above (below) 1 give 1/256 (255/256... = 1)
    assert dla["p"] == pytest.approx(1 / 256 if verdict == "found" else 1.0)
    # The region holding every differing token: untestable, whatever the all-token enrichment says.
    rows = _verdicts(_maps(np.ones(8), base_differing=1.0))
    assert rows["differential DLA on the outcome region"]["verdict"].startswith("untestable: the region holds every")
    assert rows["attention enrichment on the outcome region"]["verdict"].startswith("untestable")


def test_the_action_organisms_negative_control_row_shows_each_null():
    rows = _verdicts(_maps(0.7 * np.linspace(0.97, 1.03, 8)), outcome_is_label=False)
    neg = rows["negative control: enrichment under each null"]
    assert neg["verdict"] == "all-token null: false positive; differing-token null: correct negative"
    assert "differential DLA: all tokens 8.00" in neg["found"] and "differing tokens 0.70" in neg["found"]
    assert rows["differential DLA on the outcome region"]["verdict"] == "not enriched"
    assert "negative control: enrichment under each null" not in _verdicts(_maps(np.full(8, 0.7)))


# ------------------------------------------------------------------------------ Holm across the report
def test_validate_holm_adjusts_every_test_of_the_report_as_one_family():
    torch.set_num_threads(1)
    data = validation.validate(
        (),
        ("single_head", "and_composition"),
        n_pairs=5,
        methods=("differential DLA", "attention enrichment", "ablation"),
        progress=False,
    )
    tests = [d for s in data["subjects"] for _, d in validation._tests(s["domains"])]
    mc = data["multiple_comparisons"]
    assert mc["family"] == len(tests) > 2 and {t.split(":")[0] for t in mc["tests"]} == {
        "planted single_head",
        "planted and_composition",
    }
    expected = multipletests([t["p"] for t in tests], method="holm")[1]
    assert [t["p_holm"] for t in tests] == pytest.approx(list(expected))
    # the all-token enrichments are tested (8 of 64 tokens, 5 pairs: 1/32 each) but set no verdict; the
    # differing-token ones are tested too: validate's planted pairs show a confound box as large as the
    # blob, so the blob is half of what differs and its attribution (all of it) is 2-fold enriched in each pair
    sh = data["subjects"][0]["domains"]["single_head"]["maps"]
    assert sh["differential_dla"]["enrichment_test"]["p"] == pytest.approx(1 / 32)
    assert sh["differential_dla"]["enrichment_differing_test"]["p"] == pytest.approx(1 / 32)
    assert sh["differential_dla"]["enrichment_differing"]["mean"] == pytest.approx(2.0, abs=1e-6)
    table = validation.validation_markdown(data)
    assert "| p (Holm) |" in table and f"Holm-adjusted across the whole report ({len(tests)} tests" in table
