"""Where each method breaks: per-pair decision rules of the validation methods, run over the planted
models' difficulty ladder (hooked_vivit.planted.LEVELS), as recall per level and, on the null model, as a
false-positive rate, each with a Clopper-Pearson 95 % interval over pairs.

Each rule turns one minimal pair (every variable on vs off, one background) into "found" (True) or
"missed" (False); ``None`` where the rule cannot decide on that pair (counted apart, not in the rate).
On the planted models a True is a hit; on the null (nothing carries the pair's difference to the
decision) a True is a false positive:

- ``recovery``: the logit-difference recovery of each attn_out / mlp_out (validation.recovery, the
  headline). Planted: the top component is the composing MLP (models with one) or a planted head's
  layer. Null: some component's recovery exceeds 0.5. Where the recovery is undefined on the pair (the
  two clips' logit differences equal to float rounding: LogitDiffRecovery's "nothing to recover", the
  null's pairs) the method reports nothing: False.
- ``cls_projection``: the same ranking by the representation variant cls_projection (the share of the
  last residual's CLS difference each component restores; validation reports it beside the headline).
  Planted: the top component is the one ``recovery`` wants. Null: some component exceeds 0.5.
- ``heads``: the logit-difference recovery of each head's z patched alone (validation.recovery's
  "heads"). Planted: the top head is a planted head - except for an AND (``rule`` "a and b"), where the
  known answer is that no head alone restores the decision: every head below 0.5. Null: some head's
  recovery exceeds 0.5. Undefined on the pair (as ``recovery``): False, it reports nothing.
- ``dla``: differential direct logit attribution per head (experiments.differential_token_dla, to the
  positive class, summed over tokens). Planted: the head with the largest |attribution| is a planted
  head (a model whose heads write nothing the classifier reads - the composition - is missed). Null:
  some head's |attribution| exceeds ``LOGIT_THRESHOLD`` logits.
- ``dla_region``: the planted heads' attended tokens' share of |differential DLA| against their share
  of the tokens whose pixels differ (experiments.enrichment's enrichment_differing) exceeds 1. None where
  the attended tokens are every differing token (the enrichment cannot exceed 1) or the attribution is
  zero. Null (region: the changed tokens): False when the total |attribution| is at most
  ``LOGIT_THRESHOLD`` logits, else the same test (a True is a false positive).
- ``attribution``: attribution patching (AtP) against real denoising patching of each attn_out /
  mlp_out, logit difference: the top |estimate| is the top |real effect|. Null: some |estimate|
  exceeds ``LOGIT_THRESHOLD`` logits. (The real effects on the null are not all 0: patched alone into
  the negative run, layer 2's MLP - the cancelling neurons without the head they cancel - moves the
  logit difference by ~0.47 through the final LayerNorm, while AtP ranks L1 attn first, ~1.1 logits
  against a real 0.007 of the opposite sign; validation reports the same rule on the real effects.)

Rules that validation also applies to the null subject's pairs (validation.null_false_positives; not
in ``METHODS``, so not in the ladder's table):

- ``rule_probe``: the pair's held-out paired accuracy of the nested probe (positive clip above
  negative, over repeats) exceeds 1/2. It answers what the representation carries, not what decides.
- ``rule_attention``: the region's share of CLS attention (mean over heads) exceeds its share of the
  differing tokens (or of all tokens) in some layer; None where that base rate is 1.
- ``rule_ablation``: zeroing the region moves the logit difference by more than ``LOGIT_THRESHOLD``
  (mean over the pair's clips) and by more than each matched control box.

The rules are functions of one pair's measured values (``rule_*``); ``pair_decisions`` and
validation both call them, so each rule has one definition.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from statsmodels.stats.proportion import proportion_confint

from hooked_vivit import planted
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import validation
from hooked_vivit.causal import patching
from hooked_vivit.causal.attribution import attribution_patch
from hooked_vivit.causal.metrics import LogitDiff

METHODS = ("recovery", "cls_projection", "heads", "dla", "dla_region", "attribution")
RECOVERY_THRESHOLD = 0.5  # null: a component or head "restores" the decision
LOGIT_THRESHOLD = 0.1  # null: an attribution of more than this many logits is a finding
ALPHA = 0.05
BREAK_BELOW = 0.5  # a method breaks on a model at the first level whose recall is below this
FP_TOLERANCE = 0.05  # the null fails a method where the false-positive rate's interval lies above this


@dataclass
class Rate:
    """k of n pairs (``undecided`` more left out), with a Clopper-Pearson interval."""

    k: int
    n: int
    undecided: int
    ci95: tuple[float, float] | None

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    def to_json(self) -> dict:
        return {"k": self.k, "n": self.n, "rate": self.rate, "ci95": self.ci95, "undecided": self.undecided}


def rate(decisions: Sequence[bool | None]) -> Rate:
    decided = [d for d in decisions if d is not None]
    k, n = int(sum(decided)), len(decided)
    ci = None
    if n:
        lo, hi = proportion_confint(k, n, alpha=ALPHA, method="beta")
        ci = (float(lo), float(hi))
    return Rate(k, n, len(decisions) - n, ci)


def _pair(pm: planted.PlantedModel, seed: int) -> validation.ValidationPair:
    # a model built with a confound (planted.build(..., confound=True)) shows it in its pairs: the region
    # methods then have other differing places to be compared with; the region stays the planted pixels
    pos, neg = pm.pair(seed, confound=pm.truth.confound_region is not None)
    region = np.zeros((pm.cfg.num_frames, *pm.cfg.image_size), dtype=bool)
    for v in pm.truth.variables:
        region |= pm.pixel_mask(v)
    start = int(np.nonzero(region.any((1, 2)))[0][0])
    return validation.ValidationPair(pos, neg, region, start, (pm.truth.positive, pm.truth.negative))


def is_null(truth: planted.GroundTruth) -> bool:
    return not truth.heads and not truth.mlps


# ------------------------------------------------------------------------------ the per-pair rules
# One definition of each rule, on one pair's measured values; pair_decisions and validation (the
# null's false-positive rates, validation.null_false_positives) both call these.
def wanted_components(truth: planted.GroundTruth) -> set[str]:
    """The components a recovery ranking should put first (validation.recovery's labels): the composing
    MLP of a composition; for redundant heads (an MLP reading several heads that write the same
    direction, saturating) the MLP or either head's layer, each of which restores the decision alone
    (as validation's findings, ``validation._mechanism``); else the planted heads' layers' attention."""
    heads = {f"L{h.layer} attn" for h in truth.heads}
    mlps = {f"L{l} mlp" for l in truth.mlps}
    writes = [h.writes for h in truth.heads]
    if mlps and len(set(writes)) < len(writes):  # redundant
        return mlps | heads
    return mlps or heads


def rule_recovery(values: Sequence[float] | None, labels: Sequence[str], truth: planted.GroundTruth) -> bool:
    """``recovery`` (logit_diff per component, in ``labels``' order; None where the recovery is undefined
    on the pair - nothing to recover, so nothing is reported) and ``cls_projection`` (the same on its values)."""
    v = None if values is None else np.asarray(values, dtype=np.float64)
    if v is None or not np.isfinite(v).all():
        return False
    if is_null(truth):
        return bool(v.max() > RECOVERY_THRESHOLD)
    return labels[int(np.argmax(v))] in wanted_components(truth)


def rule_heads(values: Sequence[float] | None, labels: Sequence[str], truth: planted.GroundTruth) -> bool | None:
    """``heads``: logit_diff of each head's z patched alone (``labels`` "L1H2", ...); values None where the
    recovery is undefined on the pair (nothing to recover: the method reports nothing, False)."""
    v = None if values is None else np.asarray(values, dtype=np.float64)
    if v is None or not np.isfinite(v).all():
        return False
    if is_null(truth):
        return bool(v.max() > RECOVERY_THRESHOLD)
    if truth.rule == "a and b":
        return bool(np.abs(v).max() < RECOVERY_THRESHOLD)
    return labels[int(np.argmax(v))] in truth.head_labels


def rule_dla(per_head: Sequence[float], n_heads: int, truth: planted.GroundTruth) -> bool:
    """``dla``: differential DLA per head ([layers * heads], layer-major), summed over tokens."""
    a = np.abs(np.asarray(per_head, dtype=np.float64)).ravel()
    if is_null(truth):
        return bool(a.max() > LOGIT_THRESHOLD)
    top = int(a.argmax())
    return bool(a.max() > 1e-9) and f"L{top // n_heads}H{top % n_heads}" in truth.head_labels


def rule_dla_region(
    total: float, enrichment_differing: float | None, base_rate_differing: float | None, null: bool
) -> bool | None:
    """``dla_region`` from the pair's total |differential DLA| over patch tokens and the region's
    enrichment against the differing tokens (experiments.enrichment)."""
    if null and total <= LOGIT_THRESHOLD:  # (float rounding) no attribution to place: no finding
        return False
    if total < 1e-9:
        return None
    if enrichment_differing is None or base_rate_differing is None or base_rate_differing >= 1.0:
        return None
    return bool(enrichment_differing > 1)


def rule_attention(shares_per_layer: Sequence[float], base_rate: float | None) -> bool | None:
    """``attention``: the region's share of the CLS attention (mean over heads) above ``base_rate`` (its
    share of the differing tokens, the validation verdict's null; or of all tokens) in some layer. None
    where the base rate is 1 or missing (the region holds every such token: no enrichment can exceed 1)."""
    if base_rate is None or base_rate >= 1.0:
        return None
    return bool((np.asarray(shares_per_layer, dtype=np.float64) / base_rate).max() > 1)


def rule_attribution(estimates: Sequence[float], real: Sequence[float] | None, null: bool) -> bool:
    """``attribution``: AtP estimates and real denoising effects of attn_out / mlp_out by layer (logit
    difference). Null: some |estimate| exceeds LOGIT_THRESHOLD; planted: the top |estimate| is the top |real|."""
    e = np.abs(np.asarray(estimates, dtype=np.float64))
    if null:
        return bool(e.max() > LOGIT_THRESHOLD)
    return int(e.argmax()) == int(np.abs(np.asarray(real, dtype=np.float64)).argmax())


def rule_probe(paired_accuracy: float) -> bool:
    """``probes``: the pair's held-out paired accuracy (its positive clip's out-of-fold score above its
    negative's, mean over repeats; nested probe) above 1/2: the probe tells the pair's clips apart."""
    return bool(paired_accuracy > 0.5)


def rule_ablation(region_effect: float, control_effects: Sequence[float] | None) -> bool:
    """``ablation``: zeroing the region moves the logit difference by more than LOGIT_THRESHOLD (mean over
    the pair's two clips) and by more than each matched control box (where the pair has any)."""
    ctl = np.asarray(control_effects if control_effects is not None else [], dtype=np.float64)
    return bool(region_effect > LOGIT_THRESHOLD and (not len(ctl) or region_effect > ctl.max()))


def pair_decisions(pm: planted.PlantedModel, seed: int) -> dict[str, bool | None]:
    """Every rule (module docstring) on ``pm.pair(seed)``."""
    model, truth = pm.model, pm.truth
    null = is_null(truth)
    p = _pair(pm, seed)
    out: dict[str, bool | None] = {}
    rec = validation.recovery(model, [p], 0)
    labels = rec["components"]
    ld = rec["variants"].get(ex.LOGIT_DIFF_RECOVERY)
    out["recovery"] = rule_recovery(None if ld is None else ld["mean"], labels, truth)
    out["cls_projection"] = rule_recovery(rec["variants"]["cls_projection"]["mean"], labels, truth)
    hd = rec.get("heads")
    out["heads"] = rule_heads(None if hd is None else hd["mean"], None if hd is None else hd["labels"], truth)
    # differential DLA per head, and on the planted heads' tokens against the differing tokens
    diff = ex.differential_token_dla(model, p.positive, p.negative, truth.positive)
    terms = diff.terms.double()  # [layers, heads, tokens]
    out["dla"] = rule_dla(terms.sum(-1).ravel().tolist(), model.cfg.n_heads, truth)
    tokens = sorted({q for h in truth.heads for q in h.positions}) or sorted(
        {q for v in truth.variables for q in truth.positions(v)}
    )
    n_prefix = model.cfg.grid.n_prefix
    on = torch.zeros(model.cfg.n_ctx - n_prefix, dtype=torch.bool)
    on[[q - n_prefix for q in tokens]] = True
    differing = ex.differing_tokens(model, p.positive, p.negative)
    w = terms.sum((0, 1))[n_prefix:].abs()
    e = ex.enrichment(w, on, differing) if float(w.sum()) >= 1e-9 else None
    out["dla_region"] = rule_dla_region(
        float(w.sum()),
        None if e is None else e.enrichment_differing,
        None if e is None else e.base_rate_differing,
        null,
    )
    # attribution patching against real patching, attn_out and mlp_out by layer
    metric = LogitDiff(truth.positive, truth.negative)
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(p.positive)
    res = attribution_patch(model, p.positive, p.negative, metric, clean_cache=clean_cache)
    est = torch.cat([res.by_component("attn_out"), res.by_component("mlp_out")]).double()
    real = None
    if not null:
        real = []
        for kind in ("attn_out", "mlp_out"):
            sweep = patching.denoise(
                model,
                patching.component_patches(model, (kind,)),
                clean_cache=clean_cache,
                corrupted=p.negative,
                metric=metric,
                progress=False,
            )
            real.append((sweep.values - sweep.baseline).double())
        real = torch.cat(real).tolist()
    out["attribution"] = rule_attribution(est.tolist(), real, null)
    return out


def ladder(
    names: Sequence[str] = planted.NAMES,
    levels: Sequence[int] | None = None,
    *,
    n_pairs: int = 20,
    null_pairs: int = 100,
    seed0: int = 0,
    confound: bool = True,
) -> dict:
    """Every rule on ``n_pairs`` pairs (``null_pairs`` on the null) of each model at each level:
    {"settings", "rows": [{"model", "level", "null", "pairs", "rates": {method: Rate.to_json()}}],
    "recall": {model: {method: [{"level", **rate}]}}, "false_positive": {method: [{"level", **rate}]}
    (the null's rows; {} without the null), "breaks" (``breaks``), "breaks_below", "null_fails"
    (``null_fails``), "fp_tolerance", "seconds"}."""
    t0 = time.time()
    levels = list(range(len(planted.LEVELS)) if levels is None else levels)
    bad = [k for k in levels if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(planted.LEVELS)]
    if bad or not levels:
        raise ValueError(f"levels must be a non-empty list of 0..{len(planted.LEVELS) - 1}, got {levels!r}")
    for n, what in ((n_pairs, "n_pairs"), (null_pairs, "null_pairs")):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{what} must be a positive integer, got {n!r}")
    unknown = set(names) - set(planted.NAMES)
    if unknown:
        raise ValueError(f"unknown planted models {sorted(unknown)}; available: {planted.NAMES}")
    rows = []
    for name in names:
        for level in levels:
            pm = planted.build(name, level=level, confound=confound)
            null = is_null(pm.truth)
            n = null_pairs if null else n_pairs
            per_pair = [pair_decisions(pm, seed0 + i) for i in range(n)]
            rows.append(
                {
                    "model": name,
                    "level": level,
                    "null": null,
                    "pairs": n,
                    "rates": {m: rate([d[m] for d in per_pair]).to_json() for m in METHODS},
                }
            )
    data = {
        "settings": {
            "n_pairs": n_pairs,
            "null_pairs": null_pairs,
            "seed0": seed0,
            "levels": [dict(level=k, **vars(planted.LEVELS[k])) for k in levels],
            "recovery_threshold": RECOVERY_THRESHOLD,
            "logit_threshold": LOGIT_THRESHOLD,
            "interval": "Clopper-Pearson 95 %",
        },
        "rows": rows,
    }
    recall: dict = {}
    false_positive: dict = {}
    for row in rows:
        per = false_positive if row["null"] else recall.setdefault(row["model"], {})
        for m in METHODS:
            per.setdefault(m, []).append({"level": row["level"], **row["rates"][m]})
    data.update(
        recall=recall,
        false_positive=false_positive,
        breaks=breaks(data, BREAK_BELOW),
        breaks_below=BREAK_BELOW,
        null_fails=null_fails(data, FP_TOLERANCE),
        fp_tolerance=FP_TOLERANCE,
        seconds=round(time.time() - t0, 1),
    )
    return data


def null_fails(data: dict, tolerance: float = 0.05) -> dict[str, list[int]]:
    """Per method, the null's levels whose false-positive rate is above ``tolerance`` by its test: the
    Clopper-Pearson 95 % interval's lower bound exceeds ``tolerance`` ({} without a null row)."""
    out: dict = {}
    for row in data["rows"]:
        if not row["null"]:
            continue
        for m in METHODS:
            r = row["rates"][m]
            hit = r["ci95"] is not None and r["ci95"][0] > tolerance
            out.setdefault(m, [])
            if hit:
                out[m].append(row["level"])
    return out


def breaks(data: dict, below: float = 0.5) -> dict[str, dict[str, int | None]]:
    """Per planted model (not the null) and method, the first level whose recall is below ``below``
    (None: never)."""
    out: dict = {}
    for row in data["rows"]:
        if row["null"]:
            continue
        per = out.setdefault(row["model"], {m: None for m in METHODS})
        for m, r in row["rates"].items():
            if per[m] is None and r["rate"] is not None and r["rate"] < below:
                per[m] = row["level"]
    return out


def _cell(r: dict) -> str:
    if not r["n"]:
        return f"n/a ({r['undecided']} undecided)"
    lo, hi = r["ci95"]
    extra = f", {r['undecided']} undecided" if r["undecided"] else ""
    return f"{r['k']}/{r['n']} = {r['rate']:.0%} [{lo:.0%}, {hi:.0%}]{extra}"


def ladder_markdown(data: dict) -> str:
    """The table: one row per model and level; recall on the planted models, the false-positive rate
    on the null (Clopper-Pearson 95 % intervals over pairs)."""
    lines = [
        "| model | level (distractor gain, sharpness) | measure | " + " | ".join(METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for row in data["rows"]:
        lv = planted.LEVELS[row["level"]]
        cells = [_cell(row["rates"][m]) for m in METHODS]
        what = "false-positive rate" if row["null"] else "recall"
        lines.append(
            f"| {row['model']} | {row['level']} ({lv.distractor:g}, {lv.sharpness:g}) | {what} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _pct(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['k']}/{r['n']} = {r['rate']:.0%} [{lo:.0%}, {hi:.0%}]"


def _levels_text(levels: Sequence[int]) -> str:
    levels = sorted(levels)
    if len(levels) > 2 and levels == list(range(levels[0], levels[-1] + 1)):
        return f"levels {levels[0]}-{levels[-1]}"
    return ("level " if len(levels) == 1 else "levels ") + ", ".join(map(str, levels))


def break_sentences(data: dict) -> dict[str, str]:
    """Per method, one sentence generated from ``data`` (``ladder``'s output): the first level where its
    recall on each planted model falls below ``breaks_below`` (``breaks``), the models where it holds at
    every decided level, the models where it never decides, and the null's false-positive rate per level
    with the levels where its interval lies above ``fp_tolerance`` (``null_fails``)."""
    below = data.get("breaks_below", BREAK_BELOW)
    tol = data.get("fp_tolerance", FP_TOLERANCE)
    brk = data.get("breaks") or breaks(data, below)
    fails = data.get("null_fails") or null_fails(data, tol)
    first = min(s["level"] for s in data["settings"]["levels"])
    out = {}
    for m in METHODS:
        broke, held, undecided = [], [], []
        for model, per in data["recall"].items():
            rows = per[m]
            level = brk[model][m]
            decided = [r["level"] for r in rows if r["n"]]
            if level is not None:
                r = next(r for r in rows if r["level"] == level)
                when = f"already at level {level}, the easiest run" if level == first else f"at level {level}"
                broke.append(f"{model} {when} (recall {_pct(r)})")
            elif decided:
                gaps = [r["level"] for r in rows if not r["n"]]
                held.append(model + (f" (undecided at {_levels_text(gaps)})" if gaps else ""))
            else:
                undecided.append(model)
        parts = []
        if broke:
            parts.append(f"breaks (recall below {below:.0%}) on " + "; ".join(broke))
        if held:
            parts.append(f"holds (recall at least {below:.0%}) at every level run on " + ", ".join(held))
        if undecided:
            parts.append("cannot decide on any pair of " + ", ".join(undecided))
        fp = data.get("false_positive", {}).get(m)
        if fp:
            n = sorted({r["n"] + r["undecided"] for r in fp})
            rates = {r["level"]: r for r in fp if r["n"]}
            if not rates:
                parts.append(f"on the null it cannot decide on any of {'/'.join(map(str, n))} pairs per level")
            else:
                ks = {(r["k"], r["n"]) for r in rates.values()}
                if len(ks) == 1 and len(rates) == len(fp):
                    what = f"{_pct(next(iter(rates.values())))} at every level"
                else:
                    what = "; ".join(f"level {lv}: {_pct(r)}" for lv, r in sorted(rates.items()))
                bad = fails.get(m, [])
                verdict = (
                    f"above {tol:.0%} (interval's lower bound) at {_levels_text(bad)}"
                    if bad
                    else f"not shown above {tol:.0%} at any level"
                )
                parts.append(f"on the null ({'/'.join(map(str, n))} pairs per level) false positives {what}: {verdict}")
        out[m] = f"`{m}` " + "; ".join(parts) + "."
    return out


def ladder_figure(data: dict, path: Path | str) -> Path:
    """``ladder.png`` (``ladder_plot``) written to ``path``."""
    import matplotlib.pyplot as plt

    fig = ladder_plot(data)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ladder_plot(data: dict):
    """The figure: one panel per planted model (recall per level, one line per method, Clopper-Pearson
    95 % intervals as error bars) and a panel for the null's false-positive rate per level; levels on
    integer ticks. Undecided cells (no pair decided) are left out. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, "recall", per) for model, per in data["recall"].items()]
    if data.get("false_positive"):
        panels.append(("null", "false-positive rate", data["false_positive"]))
    levels = [s["level"] for s in data["settings"]["levels"]]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    offsets = np.linspace(-0.25, 0.25, len(METHODS))  # side by side: lines at equal rates would hide each other
    for ax, (model, what, per) in zip(axes.flat, panels):
        for i, m in enumerate(METHODS):
            pts = [r for r in per[m] if r["n"]]
            if not pts:
                continue
            x = np.array([r["level"] for r in pts]) + offsets[i]
            y = np.array([100 * r["rate"] for r in pts])
            err = np.array([[y_ - 100 * r["ci95"][0], 100 * r["ci95"][1] - y_] for y_, r in zip(y, pts)]).T
            ax.errorbar(
                x, y, yerr=err, marker="o", ms=4, lw=1.2, elinewidth=0.7, capsize=2, color=colors[i % 10], label=m
            )
        n = sorted({r["n"] + r["undecided"] for m in METHODS for r in per[m]})
        ax.set_title(f"{model}: {what} ({'/'.join(map(str, n))} pairs per level)", fontsize=9)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(k) for k in levels])
        ax.set_xlim(min(levels) - 0.4, max(levels) + 0.4)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("difficulty level (integer rung of planted.LEVELS)")
        ax.set_ylabel(f"{what} (% of pairs)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[i % 10], marker="o", ms=4, label=m) for i, m in enumerate(METHODS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(METHODS), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def figure_caption(data: dict) -> str:
    """The figure's sentence, from ``data``: the models and pairs behind it."""
    s = data["settings"]
    levels = [x["level"] for x in s["levels"]]
    models = list(data["recall"])
    text = (
        f"Recall of each method per difficulty level ({_levels_text(levels)}) on the planted models "
        f"{', '.join(models)} ({s['n_pairs']} pairs per model and level, seeds {s['seed0']}..{s['seed0'] + s['n_pairs'] - 1})"
    )
    if data.get("false_positive"):
        text += (
            f", and the null model's false-positive rate ({s['null_pairs']} pairs per level, seeds "
            f"{s['seed0']}..{s['seed0'] + s['null_pairs'] - 1})"
        )
    return text + "; error bars: Clopper-Pearson 95 % intervals over pairs."


def ladder_section(data: dict, figure: str | None = None) -> str:
    """The ladder in markdown: a generated lead sentence, the table, the sentence per method saying where
    it breaks, and (``figure``: a relative path) the figure with its caption."""
    s = data["settings"]
    levels = [x["level"] for x in s["levels"]]
    lead = (
        f"Planted-model difficulty ladder ({_levels_text(levels)}; distractor gain and planted-head sharpness per "
        f"level in the table): each method's per-pair decision rule (`hooked_vivit.analysis.ladder`) on "
        f"{s['n_pairs']} pairs per planted model and level"
        + (f" and {s['null_pairs']} pairs per level of the null model" if data.get("false_positive") else "")
        + f" ({data['seconds']:.0f} s wall). Recall on the planted models, false-positive rate on the null; "
        f"Clopper-Pearson 95 % intervals over pairs; undecided pairs counted apart."
    )
    lines = [lead, "", ladder_markdown(data).rstrip("\n"), "", "Where each method breaks:", ""]
    lines += [f"- {t}" for t in break_sentences(data).values()]
    if figure:
        lines += ["", f"![ladder]({figure})", "", figure_caption(data)]
    return "\n".join(lines) + "\n"


BEGIN = "<!-- ladder table: begin (generated) -->"
END = "<!-- ladder table: end -->"


def insert_section(path: Path | str, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace exactly the text between the ``begin`` and ``end`` markers of a markdown file (each once)."""
    path = Path(path)
    old = path.read_text()
    if old.count(begin) != 1 or old.count(end) != 1 or old.index(begin) > old.index(end):
        raise ValueError(f"{path} needs one {begin!r} before one {end!r}")
    head, rest = old.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + begin + "\n" + text + end + tail)


__all__ = [
    "BEGIN",
    "END",
    "METHODS",
    "Rate",
    "break_sentences",
    "breaks",
    "figure_caption",
    "insert_section",
    "ladder",
    "ladder_figure",
    "ladder_markdown",
    "ladder_plot",
    "ladder_section",
    "null_fails",
    "pair_decisions",
    "rate",
]
