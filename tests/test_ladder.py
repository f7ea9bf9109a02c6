"""hooked_vivit.analysis.ladder: the per-pair decision rules of the validation methods over the planted
models' difficulty ladder, recall / false-positive rates with Clopper-Pearson intervals."""

from __future__ import annotations

import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from hooked_vivit import planted
from hooked_vivit.analysis import ladder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_rate_is_clopper_pearson_over_decided_pairs():
    r = ladder.rate([True, True, False, None, True])
    assert (r.k, r.n, r.undecided, r.rate) == (3, 4, 1, 0.75)
    lo, hi = proportion_confint(3, 4, alpha=0.05, method="beta")
    assert r.ci95 == pytest.approx((lo, hi))
    assert r.ci95[0] == pytest.approx(0.19412, abs=1e-5) and r.ci95[1] == pytest.approx(0.99369, abs=1e-5)
    empty = ladder.rate([None, None])
    assert (empty.n, empty.rate, empty.ci95, empty.undecided) == (0, None, None, 2)


def test_decisions_on_the_default_single_head():
    # every causal rule finds the planted head; the planted head's tokens are every differing token, so
    # the region's enrichment against them cannot exceed 1: undecided
    d = ladder.pair_decisions(planted.build("single_head"), 0)
    assert d == {
        "recovery": True,
        "cls_projection": True,
        "heads": True,
        "dla": True,
        "dla_region": None,
        "attribution": True,
    }


def test_dla_prefers_the_cancelled_head_at_the_hardest_level():
    """At level 4 the cancelled head (the planted head's attention, g = 1.2 H along signal_a) gets
    g / H = 1.2 x the planted head's direct attribution: DLA's top head is not a planted head, while the
    causal rules still find it (the cancelling MLP erases the cancelled head's output)."""
    pm = planted.build("single_head", level=4)
    d = ladder.pair_decisions(pm, 0)
    assert d["dla"] is False and d["recovery"] is True and d["heads"] is True
    from hooked_vivit.analysis import experiments as ex

    pos, neg = pm.pair(0)
    per_head = ex.differential_token_dla(pm.model, pos, neg, pm.truth.positive).terms.double().sum(-1)
    # (to 1e-3: the CLS query's LayerNorm scale differs between layers 1 and 2, so the two blurred
    # attention maps differ a little)
    assert float(per_head[2, 1] / per_head[1, 2]) == pytest.approx(planted.LEVELS[4].distractor, abs=1e-3)


def test_composition_is_invisible_to_dla_and_the_null_fools_recovery_where_it_is_defined():
    d = ladder.pair_decisions(planted.build("and_composition"), 0)
    assert d["dla"] is False and d["recovery"] is True and d["heads"] is True  # no head writes "composed"
    null = planted.build("null")
    # The null's pair: the same logits to float rounding. Where the two logit differences differ at all,
    # the normalised recovery divides by that rounding and some component exceeds 0.5: a false positive.
    from hooked_vivit.analysis.experiments import component_recovery

    for seed in range(6):
        d = ladder.pair_decisions(null, seed)
        pos, neg = null.pair(seed)
        rec = component_recovery(null.model, pos, neg, outcome_classes=(0, 1))
        assert d["dla"] is False  # no head writes the decoy direction differently in the two clips
        # L1H2 gathers the blob (ignored by the classifier): its layer restores signal_a's share of the
        # last residual's CLS difference, (delta . signal_a)^2 / |delta|^2 = 84 % (to 1 %: patched, its
        # signal_a opposes the cancelled head's, and the cancelling neurons read a changed CLS scale)
        _, cp = null.model.run_with_cache(pos, names_filter="blocks.2.hook_resid_post")
        _, cn = null.model.run_with_cache(neg, names_filter="blocks.2.hook_resid_post")
        delta = (cp["blocks.2.hook_resid_post"] - cn["blocks.2.hook_resid_post"])[0, 0]
        share = float((delta @ planted.direction("signal_a")) ** 2 / (delta @ delta))
        proj = rec["variants"]["cls_projection"]
        assert d["cls_projection"] is True and proj["attn"][1] == pytest.approx(share, abs=0.01)
        assert share == pytest.approx(0.84, abs=0.01)
        if "logit_diff" not in rec["variants"]:  # the two logit differences are equal: nothing to recover
            assert d["recovery"] is False and d["heads"] is False
        else:
            ld = rec["variants"]["logit_diff"]
            assert d["recovery"] == (max(ld["attn"] + ld["mlp"]) > ladder.RECOVERY_THRESHOLD)
            clean, corrupt = (rec["outcome_classes"][k] for k in ("logit_diff_clean", "logit_diff_corrupted"))
            assert abs(clean - corrupt) < 1e-5  # the denominator is float rounding


def test_ladder_table_and_breaks():
    data = ladder.ladder(("single_head", "null"), levels=(1, 4), n_pairs=2, null_pairs=3)
    rows = {(r["model"], r["level"]): r for r in data["rows"]}
    assert set(rows) == {("single_head", 1), ("single_head", 4), ("null", 1), ("null", 4)}
    assert rows["null", 1]["null"] and rows["null", 1]["pairs"] == 3 and rows["single_head", 4]["pairs"] == 2
    assert rows["single_head", 4]["rates"]["dla"]["k"] == 0 and rows["single_head", 1]["rates"]["dla"]["k"] == 2
    assert ladder.breaks(data) == {
        "single_head": {
            "recovery": None,
            "cls_projection": 4,
            "heads": None,
            "dla": 4,
            "dla_region": None,
            "attribution": None,
        }
    }
    table = ladder.ladder_markdown(data)
    assert "| single_head | 4 (1.2, 0.05) | recall | 2/2 = 100% [16%, 100%] |" in table
    assert "| null | 1 (0.3, 1) | false-positive rate |" in table
    with pytest.raises(ValueError, match="n_pairs"):
        ladder.ladder(("single_head",), n_pairs=0)
    with pytest.raises(ValueError, match="unknown planted"):
        ladder.ladder(("nope",))


def test_redundant_heads_are_found_by_either_layer_and_the_confound_makes_the_region_rule_decide():
    """Redundant heads: the MLP and each head's layer restore the decision alone (each >= 1 by a raw
    patch), so any of them ranked first is a hit; without the confound the planted tokens are every
    differing token and the region rule cannot decide, with it (half the difference elsewhere) it does."""
    red = planted.build("redundant")
    assert ladder.wanted_components(red.truth) == {"L0 attn", "L1 attn", "L2 mlp"}
    pos, neg = red.pair(0)
    m, c, o = red.model, red.truth.positive, red.truth.negative
    with torch.inference_mode():
        clean_logits, cache = m.run_with_cache(pos)
        gap = lambda logits: float(logits[0, c] - logits[0, o])  # noqa: E731
        clean, corrupt = gap(clean_logits), gap(m(neg))
        for name in ("blocks.0.hook_attn_out", "blocks.1.hook_attn_out", "blocks.2.hook_mlp_out"):
            patched = gap(m.run_with_hooks(neg, fwd_hooks=[(name, lambda a, hook: cache[hook.name])]))
            assert (patched - corrupt) / (clean - corrupt) >= 1 - 1e-4, name
    assert ladder.pair_decisions(red, 0)["recovery"] is True
    single = planted.build("single_head")
    assert ladder.pair_decisions(single, 0)["dla_region"] is None
    assert ladder.pair_decisions(planted.build("single_head", confound=True), 0)["dla_region"] is True
