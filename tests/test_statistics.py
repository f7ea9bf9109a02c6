"""hooked_vivit.causal.statistics against scipy / statsmodels and constructed pixel differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import monte_carlo_test
from statsmodels.stats.multitest import multipletests

from hooked_vivit.causal import statistics as st


def scipy_p(observed: float, controls: np.ndarray, alternative: str) -> float:
    """scipy's Monte-Carlo p-value with the null draws set to ``controls`` (in order)."""
    it = iter(controls)
    rvs = lambda size: np.array([[next(it)] for _ in range(size[0])])  # noqa: E731
    res = monte_carlo_test(
        [observed], rvs, lambda x, axis: x[..., 0], vectorized=True, n_resamples=len(controls), alternative=alternative
    )
    return float(res.pvalue)


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_monte_carlo_p_equals_scipy(alternative):
    rng = np.random.default_rng(0)
    controls = rng.normal(size=20)
    for observed in [-3.0, -0.5, 0.0, 0.4, 5.0, float(controls[3])]:  # the last ties a control
        assert st.monte_carlo_p(observed, controls, alternative) == scipy_p(observed, controls, alternative)


def test_monte_carlo_p_abs_is_greater_on_magnitudes_and_never_below_one_over_n_plus_one():
    controls = np.array([0.1, -0.2, 0.3, -0.4])
    assert st.monte_carlo_p(-0.25, controls) == (2 + 1) / (4 + 1)  # |-0.4|, |0.3| are at least as large
    assert st.monte_carlo_p(10.0, controls) == 1 / 5  # beats every control: 1/(n+1), not 0
    assert st.monte_carlo_p(0.0, controls) == 1.0
    assert st.monte_carlo_p(-0.25, controls) == scipy_p(0.25, np.abs(controls), "greater")
    assert st.monte_carlo_p(0.3, torch.tensor([0.1, 0.5])) == 2 / 3
    rng = np.random.default_rng(1)
    for n in (1, 5, 20, 99):
        c = rng.normal(size=n)
        assert st.monte_carlo_p(1e6, c) == 1 / (n + 1)
    with pytest.raises(ValueError, match="at least one control"):
        st.monte_carlo_p(1.0, [])
    with pytest.raises(ValueError, match="alternative"):
        st.monte_carlo_p(1.0, [0.0], "two-sided")


def test_holm_equals_statsmodels_and_a_hand_computed_family():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06
    assert st.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    rng = np.random.default_rng(2)
    q = rng.uniform(size=12).tolist()
    assert st.holm(q) == multipletests(q, method="holm")[1].tolist()
    # None (a test that could not run) stays out of the family
    assert st.holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04], abs=1e-15)
    assert st.holm([None]) == [None] and st.holm([]) == []
    assert st.holm([1 / 21] * 12) == pytest.approx([12 / 21] * 12)


def constructed_pair():
    """Two 2-frame 32 x 32 clips that differ by 1 per channel in two 8 x 8 blocks of frame 1 (the
    "object" at rows/cols 0..7 and a second place at rows/cols 20..27) and by 0.01 in a 2 x 32 strip."""
    pos = torch.zeros(1, 2, 3, 32, 32)
    neg = pos.clone()
    neg[0, 1, :, 0:8, 0:8] = 1
    neg[0, 1, :, 20:28, 20:28] = 1
    neg[0, 1, :, 30:32, :] = 0.01
    return pos, neg


def test_pixel_difference_and_share():
    pos, neg = constructed_pair()
    d = st.pixel_difference(pos, neg)
    assert d.shape == (2, 32, 32) and d[1, 0, 0] == 3.0 and d[0].sum() == 0
    total = 2 * 64 * 3 + 64 * 0.03
    mask = np.zeros((2, 32, 32), dtype=bool)
    mask[1, 0:8, 0:8] = True
    assert st.difference_share(mask, d) == pytest.approx(192 / total)
    with pytest.raises(ValueError, match="identical"):
        st.difference_share(mask, np.zeros_like(d))


def test_matched_boxes_share_lies_within_tolerance_and_size_equals_the_region():
    pos, neg = constructed_pair()
    d = st.pixel_difference(pos, neg)
    total = float(d.sum())
    mask = np.zeros((2, 32, 32), dtype=bool)
    mask[1, 0:8, 0:8] = True  # the object: 192 / 393.6 = 48.8 % of the difference
    share = 192 / total
    assert st.share_band(share) == pytest.approx((0.75 * share, 1.25 * share))
    m = st.matched_boxes(mask, d, 10, seed=3)
    assert m.found == 10 and m.enough and m.masks.shape == (10, 2, 32, 32)
    assert m.region_share == pytest.approx(share)
    for box, s, o in zip(m.masks, m.shares, m.overlaps):
        got = float(d[box].sum()) / total
        assert got == pytest.approx(s) and 0.75 * share <= got <= 1.25 * share
        assert box[1].sum() == 64 and box[0].sum() == 0  # the region's size, in its frames
        assert o == float((box & mask).sum()) / 64 <= st.MAX_OVERLAP
        # a matched box holds at least 0.75 * 192 = 144 of the second block's 192: it sits on that block
        assert box[1, 20:28, 20:28].sum() >= 48
    j = m.to_json()
    assert (j["requested"], j["found"], j["enough"], j["band"]) == (10, 10, True, list(st.share_band(share)))
    # A region holding 97 % of the difference (both blocks' frame, as one 16 x 16 box around nothing else)
    # has no other place that differs as much: none are found and the result says so.
    big = np.zeros((2, 32, 32), dtype=bool)
    big[1, 0:8, 0:8] = big[1, 20:28, 20:28] = True
    m2 = st.matched_boxes(big, d, 5, seed=0, max_candidates=3_000)
    assert (m2.found, m2.enough, m2.candidates, m2.masks.shape[0]) == (0, False, 3_000, 0)
    assert m2.to_json()["overlap_mean"] is None
    # a region in a place without difference is matched by boxes without difference (share band 0 +- 1 %)
    still = np.zeros((2, 32, 32), dtype=bool)
    still[0, 10:14, 10:14] = True
    m3 = st.matched_boxes(still, d, 5, seed=0)
    assert m3.found == 5 and all(s <= st.MATCH_ABSOLUTE for s in m3.shares)


# ------------------------------------------------------------------ sequential Monte-Carlo p (Besag-Clifford)
def _besag_clifford_loop(observed, controls, h):
    """Brute force: walk the controls one by one."""
    k = 0
    for i, c in enumerate(controls, start=1):
        k += abs(c) >= abs(observed)
        if k == h:
            return h / i, i
    return (k + 1) / (len(controls) + 1), len(controls)


def test_sequential_p_matches_a_loop_and_stops_at_h():
    rng = np.random.default_rng(3)
    for _ in range(200):
        controls = rng.standard_normal(int(rng.integers(1, 60)))
        observed = float(rng.standard_normal() * rng.choice([0.5, 2.0, 4.0]))
        h = int(rng.integers(1, 8))
        got = st.sequential_monte_carlo_p(observed, controls, h=h)
        want_p, want_used = _besag_clifford_loop(observed, controls, h)
        assert got.p == pytest.approx(want_p, abs=0, rel=1e-15)
        assert got.used == want_used
        assert got.p >= 1 / (len(controls) + 1)


def test_sequential_p_is_valid_under_the_null():
    """Observed and controls exchangeable: P(p <= a) <= a (Besag & Clifford), checked at a = 0.05 and 0.2
    over 4,000 draws (binomial standard error about 0.0035 at 0.05)."""
    rng = np.random.default_rng(0)
    ps = np.array([st.sequential_monte_carlo_p(x[0], x[1:], h=5).p for x in rng.standard_normal((4000, 100))])
    for a in (0.05, 0.2):
        assert (ps <= a).mean() <= a + 3 * np.sqrt(a * (1 - a) / len(ps))


def test_sequential_p_reaches_the_smallest_value_and_a_clear_null_stops_early():
    controls = np.linspace(-1, 1, 199)
    strong = st.sequential_monte_carlo_p(5.0, controls, h=10)
    assert (strong.p, strong.used, strong.stopped_early) == (1 / 200, 199, False)
    weak = st.sequential_monte_carlo_p(0.0, controls, h=10)  # every control is at least as extreme
    assert (weak.p, weak.used, weak.stopped_early) == (1.0, 10, True)
    with pytest.raises(ValueError, match="positive integer"):
        st.sequential_monte_carlo_p(0.0, controls, h=0)


# ------------------------------------------------------------------ paired tests over pairs
def test_paired_test_against_scipy_and_a_hand_computed_effect_size():
    from scipy.stats import wilcoxon

    d = np.array([1.0, 2.0, -3.0, 4.0, 5.0])  # ranks 1..5: W+ = 1 + 2 + 4 + 5 = 12, W- = 3
    out = st.paired_test(d)
    assert out["rank_biserial"] == pytest.approx((12 - 3) / 15)
    assert out["statistic"] == 3
    assert out["p"] == pytest.approx(wilcoxon(d).pvalue)
    assert out["mean"] == pytest.approx(1.8)
    rng = np.random.default_rng(1)
    e = rng.standard_normal(40) + 0.8
    e[:3] = 0.0  # zero differences are dropped, as scipy's default does
    got = st.paired_test(e)
    assert got["p"] == pytest.approx(wilcoxon(e[3:]).pvalue)
    assert (got["pairs"], got["nonzero"]) == (40, 37)
    assert st.paired_test(np.ones(30))["rank_biserial"] == 1.0
    assert st.paired_test([0.0, 0.0, 1.0, 2.0]) is None  # fewer than 5 non-zero differences


def test_control_changes_stops_once_every_signal_is_decided_and_keeps_each_p():
    """analysis.experiments.control_changes evaluates boxes in batches and stops after the batch in which
    every signal has h controls at least as extreme; each signal's p is the sequential p of the whole
    sequence (its own stopping point lies in the evaluated prefix), so stopping changes no p-value."""
    from hooked_vivit.analysis.experiments import control_changes

    rng = np.random.default_rng(7)
    table = torch.tensor(rng.standard_normal((199, 3)))
    observed = [0.3, 2.0, 4.0]  # a clear null, a middling effect, a strong one
    calls = []

    def evaluate(i0, i1):
        calls.append((i0, i1))
        return table[i0:i1]

    ctl, ps, seq = control_changes(evaluate, observed, 199, stop_after=3, batch=20)
    assert len(ctl) == 199 and calls[-1] == (180, 199)  # the strong effect never reaches 3: every box is used
    for j, o in enumerate(observed):
        want = st.sequential_monte_carlo_p(o, table[:, j], h=3)
        assert ps[j] == want.p and seq[j]["used"] == want.used and seq[j]["n_max"] == 199
    calls.clear()
    ctl, ps, seq = control_changes(lambda i0, i1: evaluate(i0, i1)[:, :2], [0.3, 0.1], 199, stop_after=3, batch=20)
    first = max(st.sequential_monte_carlo_p(o, table[:, j], h=3).used for j, o in enumerate([0.3, 0.1]))
    assert len(ctl) == 20 * -(-first // 20) < 199 and len(calls) == -(-first // 20)
    assert ps == [st.sequential_monte_carlo_p(o, table[:, j], h=3).p for j, o in enumerate([0.3, 0.1])]
    # fixed n (stop_after None): every box, p = (k + 1)/(n + 1)
    ctl, ps, seq = control_changes(evaluate, observed, 199, batch=50)
    assert len(ctl) == 199 and seq == [None] * 3
    assert ps == [st.monte_carlo_p(o, table[:, j]) for j, o in enumerate(observed)]


def test_cross_fit_selection_never_reads_the_pairs_it_tests():
    """A fold's tokens depend on the other folds' maps only: scrambling a fold's own maps leaves its
    selection unchanged, scrambling the others' changes it; test and selection pairs are disjoint and
    cover every pair; the tokens are the top of the mean of the normalised maps (by hand)."""
    from hooked_vivit.analysis.pipeline import cross_fit_selection

    rng = np.random.default_rng(11)
    maps = [torch.tensor(rng.exponential(1.0, 40) * (rng.random(40) < 0.5)) for _ in range(7)]
    sel = cross_fit_selection(maps, 5, folds=2)
    assert [s["tested_on"] for s in sel] == [[0, 2, 4, 6], [1, 3, 5]]
    for s in sel:
        assert not set(s["tested_on"]) & set(s["selected_on"]) and sorted(s["tested_on"] + s["selected_on"]) == list(
            range(7)
        )
        norm = np.mean([maps[i].numpy() / maps[i].numpy().sum() for i in s["selected_on"]], 0)
        assert s["tokens"] == sorted(np.argsort(-norm)[:5].tolist())
    scrambled = [
        m if i % 2 else torch.tensor(rng.exponential(1.0, 40)) for i, m in enumerate(maps)
    ]  # fold 0's own maps
    again = cross_fit_selection(scrambled, 5, folds=2)
    assert again[0]["tokens"] == sel[0]["tokens"] and again[1]["tokens"] != sel[1]["tokens"]
    with pytest.raises(ValueError, match="non-negative"):
        cross_fit_selection([-m for m in maps], 5)
    with pytest.raises(ValueError, match="at least one pair per fold"):
        cross_fit_selection(maps[:1], 5)
