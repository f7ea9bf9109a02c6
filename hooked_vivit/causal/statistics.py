"""Inference for the control-based tests: Monte-Carlo p-values, multiple comparisons, matched nulls.

- ``monte_carlo_p``: the p-value of an observed statistic against n control draws, (k + 1) / (n + 1)
  with k the controls at least as extreme (Phipson & Smyth 2010; what ``scipy.stats.monte_carlo_test``
  returns). It is never below 1 / (n + 1): a region beating all 20 controls has p = 1/21, not 0.
- ``holm``: Holm's step-down adjustment of a family of p-values (``statsmodels.stats.multitest``),
  controlling the family-wise error rate without assuming independence between the tests.
- ``sequential_monte_carlo_p``: Besag & Clifford's (1991) sequential Monte-Carlo p-value: controls are
  drawn until ``h`` are at least as extreme (p = h / n then) or ``n_max`` are used ((k + 1)/(n_max + 1)):
  a clear null stops after about h / p controls, a clear effect can reach 1 / (n_max + 1).
- ``paired_test``: the across-pairs test of a per-pair effect (region minus its matched controls,
  MLP minus attention): Wilcoxon's signed-rank test (``scipy.stats.wilcoxon``, two-sided), the
  matched-pairs rank-biserial correlation as effect size, the mean with a bootstrap interval.
- ``pixel_difference`` and ``matched_boxes``: control boxes of the region's size *and* of its share of
  the pair's pixel difference (within a stated tolerance), drawn by rejection from random boxes, so a
  region ablation asks "does this region matter more than other places that differ as much?" rather
  than "more than random places" (most of which do not differ at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Alternative = Literal["abs", "greater", "less"]

# Matched controls: a box is matched when its share of the pair's pixel difference lies within
# ±MATCH_RELATIVE of the region's share (relative), or within ±MATCH_ABSOLUTE (absolute) where that
# band is wider (a region holding 2 % of the difference accepts boxes holding 1 %..3 %).
MATCH_RELATIVE = 0.25
MATCH_ABSOLUTE = 0.01
# ... and when at most MAX_OVERLAP of its pixels lie inside the region: the controls are other places.
MAX_OVERLAP = 0.5


def monte_carlo_p(
    observed: float, controls: Sequence[float] | np.ndarray | torch.Tensor, alternative: Alternative = "abs"
) -> float:
    """(k + 1) / (n + 1) over n controls, with k the controls at least as extreme as ``observed``:
    ``"abs"``: |control| >= |observed| (a change of either sign as large), ``"greater"``: control >=
    observed, ``"less"``: control <= observed. Ties within 100 float64 epsilons of ``observed`` count
    as at least as extreme, as in ``scipy.stats.monte_carlo_test``. n must be at least 1."""
    c = np.asarray(controls.detach().cpu() if isinstance(controls, torch.Tensor) else controls, dtype=np.float64)
    c = c.reshape(-1)
    if c.size == 0:
        raise ValueError("a Monte-Carlo p-value needs at least one control")
    k = int(_extreme(observed, c, alternative).sum())
    return (k + 1) / (c.size + 1)


@dataclass(frozen=True)
class SequentialP:
    """sequential_monte_carlo_p's result."""

    p: float
    used: int  # controls used before stopping (the rest were drawn but do not enter the p-value)
    exceedances: int  # controls among them at least as extreme as the observed value
    stopped_early: bool  # h exceedances were reached (p = h / used), not the end of the controls

    def to_json(self) -> dict:
        return {"p": self.p, "used": self.used, "exceedances": self.exceedances, "stopped_early": self.stopped_early}


def _extreme(observed: float, c: np.ndarray, alternative: Alternative) -> np.ndarray:
    o = float(observed)
    gamma = abs(o) * np.finfo(np.float64).eps * 100  # ties, as in monte_carlo_p
    if alternative == "abs":
        return np.abs(c) >= abs(o) - gamma
    if alternative == "greater":
        return c >= o - gamma
    if alternative == "less":
        return c <= o + gamma
    raise ValueError(f"alternative must be 'abs', 'greater' or 'less', got {alternative!r}")


def sequential_monte_carlo_p(
    observed: float,
    controls: Sequence[float] | np.ndarray | torch.Tensor,
    h: int = 10,
    alternative: Alternative = "abs",
) -> SequentialP:
    """Besag & Clifford's sequential Monte-Carlo p-value over ``controls`` taken in order (n_max =
    len(controls)): stop at the first control L where h of controls[:L] are at least as extreme as
    ``observed`` and return p = h / L; if that never happens, p = (k + 1) / (n_max + 1) as in
    ``monte_carlo_p``. The p-value is valid (P(p <= a) <= a under the null) and never below
    1 / (n_max + 1); the caller may evaluate controls in batches and stop once ``stopped_early``."""
    c = np.asarray(controls.detach().cpu() if isinstance(controls, torch.Tensor) else controls, dtype=np.float64)
    c = c.reshape(-1)
    if c.size == 0:
        raise ValueError("a Monte-Carlo p-value needs at least one control")
    if isinstance(h, bool) or not isinstance(h, int) or h < 1:
        raise ValueError(f"h (exceedances before stopping) must be a positive integer, got {h!r}")
    hits = np.cumsum(_extreme(observed, c, alternative))
    reached = np.nonzero(hits >= h)[0]
    if len(reached):
        used = int(reached[0]) + 1
        return SequentialP(p=h / used, used=used, exceedances=h, stopped_early=True)
    k = int(hits[-1])
    return SequentialP(p=(k + 1) / (c.size + 1), used=int(c.size), exceedances=k, stopped_early=False)


def paired_test(
    differences: Sequence[float] | np.ndarray,
    *,
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
    atol: float = 0.0,
    min_nonzero: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict | None:
    """The across-pairs test of per-pair differences (one value per pair: the pair is the unit):
    Wilcoxon's signed-rank test of a zero median difference (``scipy.stats.wilcoxon``, ``alternative``
    as scipy's; zero differences dropped, scipy's default "wilcox" zero method; differences within
    ``atol`` of 0 count as zero: float rounding is not a direction), the matched-pairs rank-biserial
    correlation r = (W+ - W-) / (W+ + W-) as effect size (+1: every pair positive), and the mean
    difference with a percentile-bootstrap 95 % interval. None with fewer than ``min_nonzero`` non-zero
    differences (5: with fewer, an exact one-sided test cannot go below 1/16)."""
    from scipy.stats import rankdata, wilcoxon

    from hooked_vivit.causal.probes import bootstrap_ci

    d = np.asarray(differences, dtype=np.float64).reshape(-1).copy()
    if not np.isfinite(d).all():
        raise ValueError("paired_test: the differences must be finite")
    d[np.abs(d) <= atol] = 0.0
    nz = d[d != 0]
    if len(nz) < min_nonzero:
        return None
    ranks = rankdata(np.abs(nz))
    w_plus, w_minus = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
    lo, hi = bootstrap_ci(d, n_boot, seed)
    name = (
        "Wilcoxon signed-rank, two-sided (scipy.stats.wilcoxon), over pairs"
        if alternative == "two-sided"
        else f"Wilcoxon signed-rank (scipy.stats.wilcoxon), one-sided ({alternative}), over pairs"
    )
    return {
        "test": name,
        "p": float(wilcoxon(nz, alternative=alternative).pvalue),
        "statistic": float(min(w_plus, w_minus)),
        "w_plus": w_plus,
        "rank_biserial": (w_plus - w_minus) / (w_plus + w_minus),
        "mean": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "pairs": int(len(d)),
        "nonzero": int(len(nz)),
        "share_positive": float((d > 0).mean()),
    }


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (statsmodels' ``multipletests(method="holm")``) of the family of
    ``pvalues``, in the same order; None entries (tests that could not run) stay None and are not
    counted in the family."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adjusted = multipletests([float(pvalues[i]) for i in idx], method="holm")[1]
        for i, a in zip(idx, adjusted):
            out[i] = float(a)
    return out


def pixel_difference(positive: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
    """Per pixel [T, H, W], float64: sum over channels of |positive - negative| of a pair of clips
    ([1, T, C, H, W] or [T, C, H, W], the first row of a batch)."""
    p = positive[0] if positive.ndim == 5 else positive
    n = negative[0] if negative.ndim == 5 else negative
    return (p.double() - n.double()).abs().sum(1).cpu().numpy()


def difference_share(mask: np.ndarray, difference: np.ndarray) -> float:
    """The share of the pair's total pixel difference inside ``mask`` [T, H, W]."""
    total = float(difference.sum())
    if total == 0:
        raise ValueError("the two clips are identical: there is no pixel difference to share")
    return float(difference[np.asarray(mask, dtype=bool)].sum()) / total


def matching_rule() -> dict:
    """The matching rule of matched_boxes, as numbers (results.json's "matching")."""
    return {"relative_tolerance": MATCH_RELATIVE, "absolute_tolerance": MATCH_ABSOLUTE, "max_overlap": MAX_OVERLAP}


@dataclass(frozen=True)
class MatchedBoxes:
    """matched_boxes' result: the accepted control boxes and how they were found."""

    masks: np.ndarray  # [found, T, H, W] bool; not in results.json
    shares: list[float]  # each accepted box's share of the pair's pixel difference
    overlaps: list[float]  # each accepted box's fraction of pixels inside the region
    region_share: float  # the region's share of the pair's pixel difference
    band: tuple[float, float]  # the accepted share band
    requested: int  # boxes asked for, found, and candidate boxes drawn
    found: int
    candidates: int

    @property
    def enough(self) -> bool:
        return self.found >= self.requested

    def to_json(self) -> dict:
        return {
            "matching": (
                f"boxes of the region's size whose share of the pair's pixel difference is within ±{MATCH_RELATIVE:.0%} "
                f"of the region's (relative) or ±{MATCH_ABSOLUTE:.0%} (absolute), whichever is wider, and with at most "
                f"{MAX_OVERLAP:.0%} of their pixels inside the region; drawn by rejection from random boxes"
            ),
            "region_share": self.region_share,
            "band": list(self.band),
            "requested": self.requested,
            "found": self.found,
            "candidates": self.candidates,
            "enough": self.enough,
            "shares": self.shares,
            "overlap_mean": float(np.mean(self.overlaps)) if self.overlaps else None,
        }


def share_band(region_share: float) -> tuple[float, float]:
    """The accepted band of difference shares around a region's share (MATCH_RELATIVE, MATCH_ABSOLUTE)."""
    half = max(MATCH_RELATIVE * region_share, MATCH_ABSOLUTE)
    return region_share - half, region_share + half


def _box_sums(integral: np.ndarray, y0: np.ndarray, x0: np.ndarray, side: int) -> np.ndarray:
    """Sums of squares of ``side`` at (y0, x0) from a summed-area table [H + 1, W + 1]."""
    return integral[y0 + side, x0 + side] - integral[y0, x0 + side] - integral[y0 + side, x0] + integral[y0, x0]


def _integral(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    out[1:, 1:] = a.astype(np.float64).cumsum(0).cumsum(1)
    return out


def matched_boxes(
    mask: np.ndarray,
    difference: np.ndarray,
    n: int,
    *,
    seed: int = 0,
    max_candidates: int = 20_000,
    batch: int = 1_000,
) -> MatchedBoxes:
    """Up to ``n`` control boxes [found, T, H, W] like ``hooked_vivit.causal.ablation.random_boxes_like``
    (in every frame where ``mask`` has A pixels a square of side round(sqrt(A)), one random centre for
    all frames of a box, shifted inside the frame), kept only when their share of ``difference`` ([T,
    H, W], the pair's per-pixel difference) lies in ``share_band`` of the region's share and at most
    MAX_OVERLAP of their pixels lie in the region. Candidates are drawn in order until ``n`` are
    accepted or ``max_candidates`` were drawn; ``found`` says how many were (fewer than ``n`` when too
    few places of the frame differ as much: the caller reports it, nothing falls back to unmatched boxes)."""
    mask = np.asarray(mask, dtype=bool)
    difference = np.asarray(difference, dtype=np.float64)
    T, H, W = mask.shape
    if difference.shape != mask.shape:
        raise ValueError(f"difference must be [T, H, W] = {mask.shape}, got {difference.shape}")
    areas = mask.reshape(T, -1).sum(1)
    if areas.sum() == 0:
        raise ValueError("the mask is empty: no region to match")
    total = float(difference.sum())
    region_share = difference_share(mask, difference)
    lo, hi = share_band(region_share)
    frames = [int(t) for t in np.nonzero(areas)[0]]
    sides = {t: int(min(max(1, round(float(np.sqrt(areas[t])))), H, W)) for t in frames}
    diff_int = {t: _integral(difference[t]) for t in frames}
    mask_int = {t: _integral(mask[t]) for t in frames}
    box_pixels = sum(sides[t] ** 2 for t in frames)
    rng = np.random.default_rng(seed)
    accepted: list[tuple[np.ndarray, float, float]] = []  # (per-frame (y0, x0), share, overlap)
    drawn = 0
    while len(accepted) < n and drawn < max_candidates:
        m = min(batch, max_candidates - drawn)
        cy, cx = rng.uniform(0, H, m), rng.uniform(0, W, m)
        drawn += m
        diff_sum = np.zeros(m)
        inside = np.zeros(m)
        corners = []
        for t in frames:
            s = sides[t]
            y0 = np.clip(np.round(cy - s / 2), 0, H - s).astype(int)
            x0 = np.clip(np.round(cx - s / 2), 0, W - s).astype(int)
            corners.append((y0, x0))
            diff_sum += _box_sums(diff_int[t], y0, x0, s)
            inside += _box_sums(mask_int[t], y0, x0, s)
        share = diff_sum / total
        overlap = inside / box_pixels
        ok = (share >= lo) & (share <= hi) & (overlap <= MAX_OVERLAP)
        for j in np.nonzero(ok)[0][: n - len(accepted)]:
            accepted.append((np.array([(c[0][j], c[1][j]) for c in corners]), float(share[j]), float(overlap[j])))
    out = np.zeros((len(accepted), T, H, W), dtype=bool)
    for i, (yx, _, _) in enumerate(accepted):
        for t, (y0, x0) in zip(frames, yx):
            out[i, t, y0 : y0 + sides[t], x0 : x0 + sides[t]] = True
    return MatchedBoxes(
        masks=out,
        shares=[a[1] for a in accepted],
        overlaps=[a[2] for a in accepted],
        region_share=region_share,
        band=(lo, hi),
        requested=n,
        found=len(accepted),
        candidates=drawn,
    )
