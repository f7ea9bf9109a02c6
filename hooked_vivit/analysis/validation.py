"""``hooked-vivit validate``: every method of the analysis against models whose mechanism is known.

Subjects: the planted-mechanism models (hooked_vivit.planted: the mechanism is set by hand), the
ground-truth organism (organism "outcomes": the outcome IS its label, so it must carry the outcome)
and the action organism (organism "actions": the outcome was never a label). On held-out minimal
pairs of each domain (rendered seeds in the reserved analysis range, the same scenes for both
organisms), each method reports what it finds, with percentile-bootstrap 95 % intervals over pairs,
beside what is known to be there; a method that misses a known mechanism is reported as a miss:

- probes: outcome probes per layer (CLS, repeated grouped k-fold, groups = pairs); the layer x pooling
  choice by nested cross-validation (not the argmax over layers), a random-weights model's probe at the
  chosen configuration, and the pixel baseline as the ceiling (a fingerprint where pixels alone reach it);
- recovery: component recovery (denoising each attn_out / mlp_out into the negative run, every
  variant of experiments.RECOVERY_VARIANTS) and, as a sanity check, the whole residual stream
  patched at every layer (must restore 100 % in every variant);
- differential DLA / attention enrichment on the outcome objects' tokens from the divergence on, against
  two nulls: all tokens, and the tokens whose pixels differ between the clips (the matched null; the
  verdict reads it: a region that is most of what differs is enriched over all tokens by that alone);
- ablation: the outcome objects' pixels (from the divergence on) zeroed, against control boxes matched
  on size and on share of the pair's pixel difference (statistics.matched_boxes): per pair the region's
  effect against its controls (Monte-Carlo p), across pairs a one-sided Wilcoxon signed-rank test of
  region minus mean control (the pair is the unit); pairs with no matched control are untested;
- attribution: attribution patching against real patching (Pearson r of attn_out / mlp_out by layer
  and z by head), on the subjects whose outcome is known to be carried (the planted models and the
  ground-truth organism).

The planted null (nothing carries the pair's difference to the decision) gets ``null_pairs`` pairs (100
by default) and no "found": each method's per-pair rule (analysis.ladder's ``rule_*``, NULL_RULES)
gives its false-positive rate over the pairs with a Clopper-Pearson interval ("false_positive"), and
its row says "correct negative" or "false positive", with the question the rule answers (what drives
the decision, or what carries the representation difference - the blob is represented on the null).
Elsewhere the expectations follow the truth's kind of mechanism (``_mechanism``: one head, a
composition, redundant heads).

Inference: each verdict word reads a test whose result validation.json holds ("test", "p", "p_holm");
the across-pair tests of the whole report are one family, Holm-adjusted (statistics.holm) in
``validate``; the per-pair Monte-Carlo p-values of an ablation are a family of their own (its pairs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hooked_vivit import synthetic
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis.pipeline import model_pixels
from hooked_vivit.causal import patching, statistics
from hooked_vivit.causal.ablation import ablate_pixel_mask
from hooked_vivit.causal.attribution import attribution_patch
from hooked_vivit.causal.metrics import LogitDiff, LogitDiffRecovery, SignalRecovery
from hooked_vivit.causal.probes import bootstrap_ci, cross_validated_probe
from hooked_vivit.organism.data import ANALYSIS_SEEDS

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

# Inside the reserved analysis range (no organism saw it), apart from the study's default seeds.
VALIDATE_SEED0 = ANALYSIS_SEEDS["study"] + 500_000
DOMAINS = tuple(synthetic.DOMAINS)
PROBE_GOAL = 0.9  # last-layer outcome probe on the ground-truth organism
ATTRIBUTION_GOAL = 0.9  # attribution vs real patching, Pearson r
ALPHA = 0.05  # every test's level, after Holm's adjustment across the report
MIN_TEST_PAIRS = 5  # a one-sided signed-rank test needs 5 non-zero pairs to reach p < 0.05 (1/32)
METHODS = (
    "probes",
    "recovery",
    "residual sanity",
    "differential DLA",
    "attention enrichment",
    "ablation",
    "attribution",
)


@dataclass
class ValidationPair:
    positive: torch.Tensor  # [1, T, C, H, W] pixel values
    negative: torch.Tensor
    region: np.ndarray  # bool [T, H, W]: the outcome's pixels (objects, or the planted box) from the divergence on
    divergence_frame: int
    classes: tuple[int, int] | None  # (positive, negative) class when the outcome is the label, else None


@dataclass
class Subject:
    """A model, its minimal pairs per domain and what is known about it."""

    name: str
    model: HookedVideoTransformer
    pairs: dict[str, list[ValidationPair]]
    outcome_is_label: bool  # the model is known to carry the outcome (trained on it, or planted)
    truth: dict = field(default_factory=dict)  # planted: components, heads, carrying layer
    ground_truth: Any = None  # planted: the model's planted.GroundTruth (the per-pair rules read it)


# ------------------------------------------------------------------------------------------ subjects
def organism_pairs(
    model: HookedVideoTransformer, domain: str, n: int, seed0: int = VALIDATE_SEED0
) -> list[ValidationPair]:
    """n rendered minimal pairs of a domain at the model's size; the region is every object's pixels
    (either clip) from the divergence frame on. Classes when the model's labels name the outcomes."""
    cfg = model.cfg
    out = []
    for i in range(n):
        pos, neg, meta = synthetic.render_pair(domain, seed0 + i, num_frames=cfg.num_frames, size=min(cfg.image_size))
        objects = ex.object_masks_union(meta["masks"], meta["divergence_frame"])
        region = np.any(np.stack(list(objects.values())), axis=0)
        key = next(k for k, v in synthetic.DOMAINS.items() if v == meta["domain"])
        names = [f"{key} {meta['outcomes'][s]}" for s in ("positive", "negative")]
        classes = tuple(cfg.label2id[n] for n in names) if all(n in cfg.label2id for n in names) else None
        out.append(
            ValidationPair(
                model_pixels(model, pos), model_pixels(model, neg), region, meta["divergence_frame"], classes
            )
        )
    return out


def organism_subject(
    name: str,
    n_pairs: int,
    domains: Sequence[str] = DOMAINS,
    seed0: int = VALIDATE_SEED0,
    model: HookedVideoTransformer = None,
) -> Subject:
    from hooked_vivit import organism

    model = model if model is not None else organism.load(name)
    pairs = {d: organism_pairs(model, d, n_pairs, seed0) for d in domains}
    outcome_is_label = all(p.classes is not None for ps in pairs.values() for p in ps)
    return Subject(f"{organism.resolve(name)} organism", model, pairs, outcome_is_label)


def planted_subject(name: str, n_pairs: int, seed0: int = 0, *, confound: bool = True) -> Subject:
    """A planted model's pairs (every variable on vs off, one background per pair); the region is the
    pixels the planted variables change (a set, not always a box: planted.PlantedModel.pixel_mask). With
    ``confound`` (the default) the model is built with a confound reader and its pairs also differ in a
    confound box the decision ignores (planted.build(..., confound=True)): the region methods' matched
    nulls then have another place that differs as much to compare with (without it the region is every
    differing pixel and those tests are untestable). The null model has no planted head: its
    "last_head_layer" is the last layer (probes are read around the end) and "null" says that nothing
    carries the pair's difference."""
    from hooked_vivit import planted

    pm = planted.build(name, confound=confound)
    cfg = pm.cfg
    region = np.zeros((cfg.num_frames, *cfg.image_size), dtype=bool)
    for v in pm.truth.variables:
        region |= pm.pixel_mask(v)
    start = int(np.nonzero(region.any((1, 2)))[0][0])
    classes = (pm.truth.positive, pm.truth.negative)
    pairs = [ValidationPair(p, n, region, start, classes) for p, n in pm.pairs(n_pairs, seed=seed0, confound=confound)]
    truth = {
        "components": list(pm.truth.component_labels),
        "heads": list(pm.truth.head_labels),
        "mlps": list(pm.truth.mlps),
        "last_head_layer": max((h.layer for h in pm.truth.heads), default=cfg.n_layers - 1),
        "rule": pm.truth.rule,
        "null": not pm.truth.heads and not pm.truth.mlps,
        "head_writes": [h.writes for h in pm.truth.heads],  # the direction each planted head writes
        "level": pm.truth.level,
        "confound": confound,
    }
    return Subject(f"planted {name}", pm.model, {name: pairs}, True, truth, pm.truth)


# ------------------------------------------------------------------------------------------ statistics
def _ci(values: Sequence[float] | np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    mean = (float(v.mean()) if v.ndim == 1 else v.mean(0).tolist()) if len(v) else None
    if len(v) < 2:  # no interval from one pair
        return {"mean": mean, "ci95": [None, None] if v.ndim == 1 else [[None] * v.shape[1]] * 2, "n": int(len(v))}
    lo, hi = bootstrap_ci(v)
    return {"mean": mean, "ci95": [np.asarray(lo).tolist(), np.asarray(hi).tolist()], "n": int(len(v))}


def signed_rank_test(
    values: Sequence[float] | np.ndarray, null: float = 0.0, *, atol: float = 1e-9, n_boot: int = 2000, seed: int = 0
) -> dict | None:
    """The across-pairs test of one value per pair (the pair is the unit) against ``null``: Wilcoxon's
    signed-rank test of values - null, one-sided (greater: the values exceed the null), by
    ``scipy.stats.wilcoxon`` (zero differences dropped, its default), with the matched-pairs rank-biserial
    correlation (W+ - W-) / (W+ + W-) as effect size and the mean difference with a percentile-bootstrap
    95 % interval over pairs. Differences within ``atol`` of 0 count as zero (float rounding is not a
    direction). None with fewer than MIN_TEST_PAIRS non-zero differences (a one-sided test of 4 pairs
    cannot go below 1/16)."""
    from hooked_vivit.causal import statistics

    d = np.asarray(values, dtype=np.float64).reshape(-1) - null
    t = statistics.paired_test(
        d[np.isfinite(d)], alternative="greater", atol=atol, min_nonzero=MIN_TEST_PAIRS, n_boot=n_boot, seed=seed
    )
    if t is None:
        return None
    return {
        "test": t["test"],
        "null": null,
        "p": t["p"],
        "w_plus": t["w_plus"],
        "rank_biserial": t["rank_biserial"],
        "mean_difference": t["mean"],
        "mean_difference_ci95": t["ci95"],
        "pairs": t["pairs"],
        "nonzero": t["nonzero"],
    }


def _tests(node: Any, path: str = "") -> list[tuple[str, dict]]:
    """(path, dict) of every across-pair test in ``node`` (a dict holding "test" and "p"), in order."""
    out = []
    if isinstance(node, dict):
        if "test" in node and "p" in node and not isinstance(node["p"], (dict, list)):
            out.append((path, node))
        for k, v in node.items():
            out += _tests(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _tests(v, f"{path}.{i}")
    return out


def adjust_validation(subjects: list[dict], alpha: float = ALPHA) -> dict:
    """Holm's adjustment (statistics.holm) across every across-pair test of the report (every subject,
    domain and method): each test dict gets "p_holm" beside its "p". Returns validation.json's
    "multiple_comparisons": the method, the family's size and members."""
    found = [(f"{s['subject']}: {path}", d) for s in subjects for path, d in _tests(s["domains"])]
    for (_, d), a in zip(found, statistics.holm([d["p"] for _, d in found])):
        d["p_holm"] = a
    return {
        "method": "holm",
        "alpha": alpha,
        "scope": "the whole report: every across-pair test of every subject, domain and method",
        "family": len(found),
        "tests": [p for p, _ in found],
        "note": (
            "a verdict word reads its test's Holm-adjusted p (p_holm < alpha); the per-pair Monte-Carlo p-values "
            "of an ablation (control_p) are a family of their own, Holm-adjusted over its pairs (control_p_holm), "
            "and no verdict reads them"
        ),
    }


def _holm_of(result: dict) -> None:
    """p_holm within one subject where ``validate`` has not set it across the report (a subject's result
    from validate_subject alone)."""
    tests = _tests(result["domains"])
    if any("p_holm" not in d for _, d in tests):
        adjust_validation([result])


def pooled_correlation(
    estimates: Sequence[np.ndarray], actual: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0
) -> dict:
    """Pearson r of all (pair, component) values pooled, with a percentile-bootstrap 95 % interval
    over pairs (pairs resampled), and the mean of the per-pair r."""
    e, a = np.stack([np.ravel(x) for x in estimates]), np.stack([np.ravel(x) for x in actual])

    def r(rows):
        x, y = e[rows].ravel(), a[rows].ravel()
        return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")

    rng = np.random.default_rng(seed)
    boots = np.array([r(rng.integers(0, len(e), len(e))) for _ in range(n_boot)]) if len(e) > 1 else np.array([np.nan])
    per_pair = [r([i]) for i in range(len(e))]
    ok = boots[np.isfinite(boots)]
    return {
        "r": r(np.arange(len(e))),
        "ci95": [float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975))] if len(ok) else [None, None],
        "per_pair_mean_r": float(np.nanmean(per_pair)) if np.isfinite(per_pair).any() else None,
        "pairs": len(e),
        "values_per_pair": int(e.shape[1]),
    }


# ------------------------------------------------------------------------------------------ methods
def _residual_patched(
    model: HookedVideoTransformer, clean_cache: Any, negative: torch.Tensor, measured: str, *, logits: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``measured`` on the negative run with the whole residual stream replaced by the positive run's,
    one row per layer (resid_pre 0..L-1, then the last resid_post); with ``logits``, the patched runs'
    logits too."""
    L = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    captured = {}

    def patch(row):
        def hook(act, hook):
            act[row] = clean_cache[hook.name][0].to(act.dtype)
            return act

        return hook

    def grab(act, hook):
        captured["a"] = act.detach().clone()

    hooks = [(n, patch(r)) for r, n in enumerate(names)] + [(measured, grab)]
    with torch.inference_mode():
        out = model.run_with_hooks(negative[:1].expand(len(names), *negative.shape[1:]), fwd_hooks=hooks)
    return (captured["a"], out) if logits else captured["a"]


def recovery(model: HookedVideoTransformer, pairs: list[ValidationPair], sanity_pairs: int) -> dict:
    """Component recovery in every variant per pair (mean, interval, the top component per variant),
    and the whole-residual patch at every layer on the first ``sanity_pairs`` pairs. Where every pair
    has outcome classes (the model has a logit per outcome): the logit-difference recovery too (the
    headline), per component and per head ("heads": mean and interval per head, the top head)."""
    L = model.cfg.n_layers
    last = f"blocks.{L - 1}.hook_resid_post"
    with_logits = all(p.classes is not None for p in pairs)
    names = ([ex.LOGIT_DIFF_RECOVERY] if with_logits else []) + list(ex.RECOVERY_VARIANTS)
    per_variant: dict = {v: [] for v in names}
    sanity: dict = {v: [] for v in names}
    heads, headlines = [], set()
    per_pair: dict = {ex.LOGIT_DIFF_RECOVERY: [], "cls_projection": [], "heads": []}
    sanity_undefined = 0
    for i, p in enumerate(pairs):
        rec = ex.component_recovery(
            model, p.positive, p.negative, outcome_classes=p.classes if with_logits else None, heads=with_logits
        )
        headlines.add((rec["headline"], rec["headline_reason"]))
        for v in per_variant:
            if v not in rec["variants"]:  # logit_diff undefined on this pair (equal logit differences)
                per_variant[v].append(np.full((2, L), np.nan))
                continue
            per_variant[v].append(np.stack([rec["variants"][v]["attn"], rec["variants"][v]["mlp"]]))  # [2, L]
        for v in (ex.LOGIT_DIFF_RECOVERY, "cls_projection"):  # per pair, in the order of labels (None: undefined)
            if v in per_variant:
                values = per_variant[v][-1].reshape(-1)
                per_pair[v].append(values.tolist() if np.isfinite(values).all() else None)
        if "heads" in rec:
            heads.append(np.ravel(rec["heads"]["values"]))
        per_pair["heads"].append(np.ravel(rec["heads"]["values"]).tolist() if "heads" in rec else None)
        if i < sanity_pairs:
            with torch.inference_mode():
                clean_logits, clean = model.run_with_cache(p.positive, names_filter=lambda n: "resid" in n)
                corrupt_logits, corrupt = model.run_with_cache(p.negative, names_filter=[last])
            patched, logits = _residual_patched(model, clean, p.negative, last, logits=True)
            for v, vals in ex.recovery_variants(patched, clean[last], corrupt[last], last).items():
                sanity[v].append(vals)
            if with_logits:
                try:
                    metric = LogitDiffRecovery(*p.classes, clean_logits, corrupt_logits)
                except ValueError:  # equal logit differences (float rounding): undefined on this pair
                    sanity_undefined += 1
                else:
                    sanity[ex.LOGIT_DIFF_RECOVERY].append(metric(logits).tolist())
    labels = [f"L{l} {c}" for c in ("attn", "mlp") for l in range(L)]
    headline, reason = ex.headline_for(with_logits)
    if with_logits and any(h != ex.LOGIT_DIFF_RECOVERY for h, _ in headlines):
        reason += " (undefined on some pairs: their values are left out of the means)"
    out: dict = {
        "components": labels,
        "headline": headline,
        "headline_reason": reason,
        "questions": {v: ex.RECOVERY_QUESTIONS[v] for v in names},
        "variants": {},
        "sanity": {},
        # per pair (in pair order): logit_diff and cls_projection per component (labels' order) and
        # logit_diff per head; None where logit_diff is undefined on the pair (nothing to recover)
        "per_pair": {k: v for k, v in per_pair.items() if k in names or k == "heads"},
    }
    if with_logits and sanity_undefined:
        out["sanity_undefined"] = {
            "variant": ex.LOGIT_DIFF_RECOVERY,
            "pairs": sanity_undefined,
            "why": "the two clips' logit differences are equal to float rounding: nothing to recover",
        }
    if heads:
        h_labels = [f"L{l}H{h}" for l in range(L) for h in range(model.cfg.n_heads)]
        stat = _ci(np.stack(heads))
        top = int(np.argmax(stat["mean"]))
        out["heads"] = {
            "variant": ex.LOGIT_DIFF_RECOVERY,
            "act": "z",
            "labels": h_labels,
            **stat,
            "top": h_labels[top],
            "top_mean": stat["mean"][top],
            "max_abs_mean": float(np.max(np.abs(stat["mean"]))),
        }
    for v, arr in per_variant.items():
        a = np.stack(arr).reshape(len(arr), -1)  # [pairs, 2L] in the order of labels
        a = a[np.isfinite(a).all(1)]
        if not len(a):
            continue
        stat = _ci(a)
        top = int(np.argmax(stat["mean"]))
        out["variants"][v] = {
            **stat,
            "top": labels[top],
            "top_mean": stat["mean"][top],
            "top_ci95": [stat["ci95"][0][top], stat["ci95"][1][top]],
        }
    for v, vals in sanity.items():
        if not vals:
            continue
        s = np.asarray(vals)  # [pairs, L + 1]
        out["sanity"][v] = {
            "min": float(s.min()),
            "max": float(s.max()),
            "pairs": len(s),
            "layers": [f"resid_pre {l}" for l in range(L)] + [f"resid_post {L - 1}"],
        }
    return out


def _outcome_class(model: HookedVideoTransformer, p: ValidationPair) -> int:
    if p.classes is not None:
        return p.classes[0]
    with torch.inference_mode():
        return int(model(p.positive).argmax())


def attribution_maps(model: HookedVideoTransformer, pairs: list[ValidationPair]) -> dict:
    """Differential token DLA and CLS attention per pair, as shares and enrichments on the region's tokens,
    against two base rates: the region's share of all tokens, and its share of the tokens whose pixels
    differ between the pair's clips (the matched null: a region that is most of what differs is enriched
    over all tokens by that alone). Pairs whose region holds no differing token have no second value."""
    grid = model.cfg.grid
    dla_share, dla_enr, after_div, attn_enr, attn_share, dla_zero = [], [], [], [], [], 0
    base_rates, base_rates_d, dla_enr_d, attn_enr_d = [], [], [], []
    per_pair = []  # the values the per-pair rules read (analysis.ladder)
    for p in pairs:
        c = _outcome_class(model, p)
        diff = ex.differential_token_dla(model, p.positive, p.negative, c)
        on = ex.token_masks(model, p.region)[1:] > 0
        differing = ex.differing_tokens(model, p.positive, p.negative)
        w = diff.terms.sum((0, 1))[1:].abs()
        base_rates.append(float(on.float().mean()))
        base_d = ex.enrichment(torch.ones(len(on)), on, differing).base_rate_differing
        if base_d is not None:
            base_rates_d.append(base_d)
        entry = {
            "dla_per_head": diff.terms.double().sum(-1).ravel().tolist(),  # [layers * heads]
            "dla_total": float(w.double().sum()),
            "dla_enrichment_differing": None,
            "base_rate": base_rates[-1],
            "base_rate_differing": base_d,
        }
        per_pair.append(entry)
        if float(w.sum()) < 1e-9:  # no head writes the class direction: nothing to distribute
            dla_zero += 1
        else:
            e = ex.enrichment(w, on, differing)
            entry["dla_enrichment_differing"] = e.enrichment_differing
            dla_share.append(e.mean_share)
            dla_enr.append(e.enrichment)
            if e.enrichment_differing is not None:
                dla_enr_d.append(e.enrichment_differing)
            slots = np.asarray(diff.per_slot_abs)
            after_div.append(float(slots[grid.frame_slot_of_frame(p.divergence_frame) :].sum() / slots.sum()))
        with torch.inference_mode():
            rows = model.attention_rows(p.positive, queries="cls")[0, :, :, 0, 1:].float()  # [L, H, patches]
        e = ex.enrichment(rows, on)
        shares = e.share.numpy()  # [L, H]
        entry["attention_share_per_layer"] = shares.mean(1).tolist()
        attn_share.append(shares.mean(1))  # per layer, mean over heads
        attn_enr.append(shares.mean(1) / e.base_rate)
        if base_d:
            attn_enr_d.append(shares.mean(1) / base_d)
    ci = lambda v: _ci(v) if len(v) >= 2 else None  # noqa: E731  (an interval over pairs needs two)
    test = lambda v: signed_rank_test(v, 1.0) if len(v) else None  # noqa: E731  (enrichment > 1 over pairs)
    # A region holding every differing token in every pair cannot be enriched against them: no test to run.
    testable_d = bool(base_rates_d) and min(base_rates_d) < 1 - 1e-12
    test_d = lambda v: test(v) if testable_d else None  # noqa: E731
    out = {
        "pairs": len(pairs),
        "base_rate": _ci(base_rates),
        "base_rate_differing": ci(base_rates_d),
        # the largest enrichment against the differing tokens a pair allows (1 / its base rate among them):
        # a region holding every differing token (base rate 1) cannot be enriched against them
        "max_enrichment_differing": 1 / min(b for b in base_rates_d if b > 0) if any(base_rates_d) else None,
        "dla_zero_pairs": dla_zero,
        "per_pair": per_pair,
    }
    if dla_share:
        out["differential_dla"] = {
            "share": _ci(dla_share),
            "enrichment": _ci(dla_enr),
            "enrichment_differing": ci(dla_enr_d),
            "share_after_divergence": _ci(after_div),
            # one-sided signed-rank tests of enrichment > 1 over pairs, against each null
            "enrichment_test": test(dla_enr),
            "enrichment_differing_test": test_d(dla_enr_d),
        }
    a = np.stack(attn_enr)  # [pairs, L]
    a_d = np.stack(attn_enr_d) if attn_enr_d else np.zeros((0, a.shape[1]))
    best = int(np.argmax(a.mean(0)))
    out["attention"] = {
        "enrichment_per_layer": _ci(a),
        "share_per_layer": _ci(np.stack(attn_share)),
        "best_layer": best,  # the largest mean all-token enrichment: descriptive (chosen on these pairs)
        "best_enrichment": _ci(a[:, best]),
        # against the differing tokens, at the same layer
        "best_enrichment_differing": ci(a_d[:, best]) if len(a_d) >= 2 else None,
        # every layer tested (no layer is chosen before its test; Holm across the report covers them all)
        "enrichment_differing_per_layer": ci(a_d),
        "tests_per_layer": [test(a[:, l]) for l in range(a.shape[1])],
        "tests_differing_per_layer": [test_d(a_d[:, l]) for l in range(a.shape[1])],
    }
    return out


def _ablated_logits(model: HookedVideoTransformer, x: torch.Tensor, masks: np.ndarray, batch: int = 32) -> torch.Tensor:
    """Logits [clips, masks, classes] of each clip of ``x`` [clips, T, C, H, W] with each mask's pixels zeroed."""
    rows = []
    for clip in x:
        out = []
        for j in range(0, len(masks), batch):
            m = masks[j : j + batch]
            with torch.inference_mode():
                out.append(model(ablate_pixel_mask(clip[None].expand(len(m), *clip.shape), m)).double())
        rows.append(torch.cat(out))
    return torch.stack(rows)


def region_ablation(model: HookedVideoTransformer, pairs: list[ValidationPair], n_controls: int, seed: int = 0) -> dict:
    """Zero the region in each clip of a pair, and instead up to ``n_controls`` control boxes matched on
    size and on share of the pair's pixel difference (statistics.matched_boxes; how many matched is
    recorded per pair, a pair with none is untested and nothing falls back to unmatched boxes).

    Per pair, the effect of zeroing a set of pixels is a continuous signal averaged over the pair's two
    clips: |change of the positive - negative class logit difference| where every pair has outcome
    classes, else |change of the clip's top-class logit|; the region's effect against its controls'
    gives a per-pair Monte-Carlo p ((k + 1)/(n + 1), one-sided: controls at least as large), Holm-adjusted
    over the pairs. Across the tested pairs (the pair is the unit of inference): region effect minus the
    mean of its controls', tested by a one-sided Wilcoxon signed-rank test (signed_rank_test), with the
    rank-biserial correlation and the mean difference's bootstrap interval as effect sizes. Beside it,
    the share of clips whose predicted class changes (and, with outcome classes, changes to the twin)."""
    with_classes = all(p.classes is not None for p in pairs)
    changed, twin, ctl_changed, ctl_twin, twin_gap, changed_gap = [], [], [], [], [], []
    region_effects, control_means, per_pair = [], [], []
    for i, p in enumerate(pairs):
        difference = statistics.pixel_difference(p.positive, p.negative)
        entry: dict = {"pair": i}
        try:
            matched = statistics.matched_boxes(p.region, difference, n_controls, seed=seed + i)
        except ValueError as e:  # identical clips (no difference to share) or an empty region
            matched, entry["untested"] = None, str(e)
        masks = np.concatenate([p.region[None], matched.masks]) if matched is not None else p.region[None]
        x = torch.cat([p.positive, p.negative])
        with torch.inference_mode():
            before = model(x).double()  # [2, classes]
        after = _ablated_logits(model, x, masks)  # [2 clips, 1 + found, classes]
        pred_before, pred_after = before.argmax(-1), after.argmax(-1)
        if with_classes:
            pos, neg = p.classes
            sig_before, sig_after = before[:, pos] - before[:, neg], after[..., pos] - after[..., neg]
        else:
            top = pred_before[:, None, None]
            sig_before = before.gather(1, pred_before[:, None])[:, 0]
            sig_after = after.gather(2, top.expand(2, len(masks), 1))[..., 0]
        effect = (sig_after - sig_before[:, None]).abs().mean(0).numpy()  # [1 + found], mean over the two clips
        ch = (pred_after != pred_before[:, None]).double()  # [2 clips, 1 + found]
        changed.append(ch[:, 0].tolist())
        region_effects.append(float(effect[0]))
        if p.classes is not None:
            other = torch.tensor([p.classes[1], p.classes[0]])[:, None]
            tw = (pred_after == other).double()
            twin.append(tw[:, 0].tolist())
        found = 0 if matched is None else matched.found
        if matched is not None:
            entry.update(
                found=found,
                region_share=matched.region_share,
                band=list(matched.band),
                candidates=matched.candidates,
            )
        entry["region_effect"] = float(effect[0])
        if found:
            ctl = effect[1:]
            entry.update(
                control_effects=ctl.tolist(),
                control_share_range=[min(matched.shares), max(matched.shares)],
                control_p=statistics.monte_carlo_p(effect[0], ctl, "greater"),
                untested=False,
            )
            control_means.append(float(ctl.mean()))
            ctl_changed.append(ch[:, 1:].mean(1).tolist())
            changed_gap.append(float(ch[:, 0].mean() - ch[:, 1:].mean()))
            if p.classes is not None:
                ctl_twin.append(tw[:, 1:].mean(1).tolist())
                twin_gap.append(float(tw[:, 0].mean() - tw[:, 1:].mean()))
        else:
            entry.setdefault("untested", "no matched control box")
            entry["control_p"] = None
        per_pair.append(entry)
    for e, a in zip(per_pair, statistics.holm([e["control_p"] for e in per_pair])):
        e["control_p_holm"] = a  # over this ablation's pairs (descriptive: no verdict reads it)

    def both(v):  # per clip of the pair ([positive, negative]) and for the pair (the mean of its two clips)
        if not v:
            return None
        a = np.asarray(v)
        return {"positive": _ci(a[:, 0]), "negative": _ci(a[:, 1]), "pair": _ci(a.mean(1))}

    tested = [e for e in per_pair if not e["untested"]]
    out = {
        "pairs": len(pairs),
        "n_controls": n_controls,
        "matching": statistics.matching_rule(),
        "tested_pairs": len(tested),
        "untested_pairs": len(pairs) - len(tested),
        "controls_found": [e.get("found", 0) for e in per_pair],
        "region_share": _ci([e["region_share"] for e in per_pair if "region_share" in e]),
        "signal": (
            "|change of the positive - negative class logit difference|, mean over the pair's two clips"
            if with_classes
            else "|change of the clip's top-class logit|, mean over the pair's two clips"
        ),
        "region_effect": _ci(region_effects),
        "controls_effect": _ci(control_means) if control_means else None,
        # region minus the mean of its matched controls, over the tested pairs (None: fewer than
        # MIN_TEST_PAIRS pairs with a non-zero difference)
        "test": signed_rank_test(np.asarray(region_effects)[[not e["untested"] for e in per_pair]] - control_means)
        if tested
        else None,
        "min_control_p": 1 / (n_controls + 1),
        "per_pair": per_pair,
        "changed": both(changed),
        "controls_changed": both(ctl_changed),
        "changed_minus_controls": _ci(changed_gap) if changed_gap else None,
    }
    if twin:
        out["to_twin"] = both(twin)
        out["controls_to_twin"] = both(ctl_twin)
        # per tested pair: its clips' flips minus its matched controls'
        out["to_twin_minus_controls"] = _ci(twin_gap) if twin_gap else None
    return out


def attribution_vs_patching(model: HookedVideoTransformer, pairs: list[ValidationPair]) -> dict:
    """Attribution patching against real denoising patching, per pair: attn_out and mlp_out by layer,
    z by head. Metric: the positive-minus-negative class logit difference when the outcome is the
    label, else the paper's recovery at CLS of the last resid_post."""
    L = model.cfg.n_layers
    last = f"blocks.{L - 1}.hook_resid_post"
    est: dict = {"attn_out by layer": [], "mlp_out by layer": [], "z by head": []}
    act: dict = {k: [] for k in est}
    per_pair = []  # attn_out then mlp_out by layer: the estimates and the real effects (analysis.ladder's rule)
    metric_name = None
    for p in pairs:
        with torch.inference_mode():
            _, clean_cache = model.run_with_cache(p.positive)
        if p.classes is not None:
            metric, metric_name = LogitDiff(*p.classes), "logit difference (positive - negative class)"
        else:
            with torch.inference_mode():
                _, cc = model.run_with_cache(p.negative, names_filter=[last])
            metric, metric_name = (
                SignalRecovery(last, clean_cache[last], cc[last], positions=0),
                "recovery at CLS (cls_projection)",
            )
        res = attribution_patch(model, p.positive, p.negative, metric, clean_cache=clean_cache)

        def real(patches):
            sweep = patching.denoise(
                model, patches, clean_cache=clean_cache, corrupted=p.negative, metric=metric, progress=False
            )
            return (sweep.values - sweep.baseline).numpy()

        est["attn_out by layer"].append(res.by_component("attn_out").numpy())
        act["attn_out by layer"].append(real(patching.component_patches(model, ("attn_out",))))
        est["mlp_out by layer"].append(res.by_component("mlp_out").numpy())
        act["mlp_out by layer"].append(real(patching.component_patches(model, ("mlp_out",))))
        est["z by head"].append(res.by_head("z").numpy().ravel())
        act["z by head"].append(real(patching.head_patches(model, "z")))
        per_pair.append(
            {
                k: np.concatenate([d["attn_out by layer"][-1], d["mlp_out by layer"][-1]]).astype(float).tolist()
                for k, d in (("estimates", est), ("real", act))
            }
        )
    return {
        "metric": metric_name,
        "pairs": len(pairs),
        **{k: pooled_correlation(est[k], act[k]) for k in est},
        "per_pair": per_pair,
    }


def probes(model: HookedVideoTransformer, pairs: list[ValidationPair], *, random_weights: str = "chosen") -> dict:
    """Outcome probes per layer (experiments.layer_probes: CLS and mean-pooled, repeated grouped k-fold),
    the layer x pooling choice by nested cross-validation ("nested": the accuracy of choosing, then
    probing; "chosen": the configuration most outer folds chose, not the argmax over layers), and two
    controls: a random-weights model of the same architecture (experiments.random_weights_model) probed
    at the chosen configuration ("chosen", the default: one cross-validated probe; "nested": the whole
    nested procedure on it, as analyze does; "none": skipped), and the pixel baseline as the ceiling
    (LayerProbes.pixel_ceiling: "fingerprint" where raw pixels reach the nested probe's accuracy).
    Comparisons use paired accuracy (the share of pairs whose positive clip scores above its negative)."""
    if random_weights not in ("chosen", "nested", "none"):
        raise ValueError(f"random_weights must be 'chosen', 'nested' or 'none', got {random_weights!r}")
    xy = [(p.positive, p.negative) for p in pairs]
    f = ex.probe_features(model, xy)
    res = ex.layer_probes(model, xy, features=f, random_weights=random_weights == "nested")
    keep = ("accuracy", "accuracy_ci95", "paired_accuracy", "paired_accuracy_ci95", "control_accuracy", "selectivity")
    nested = res.nested.to_json()
    chosen = next(iter(res.nested.chosen_counts))  # most chosen first (ties: configuration order)
    kind, layer = chosen.split(" ", 1)
    ceiling = res.pixel_ceiling()
    out: dict = {
        "pairs": res.pairs,
        "layers": res.layers,
        "method": res.method,
        "cls": [{k: e.to_json()[k] for k in keep} for e in res.cls],
        "nested": {k: nested[k] for k in (*keep[:-2], "chosen_counts", "selection", "selectivity", "control_accuracy")},
        "chosen": chosen,
        "chosen_folds": res.nested.chosen_counts[chosen],
        "folds_total": sum(res.nested.chosen_counts.values()),
        "best_layer": layer,  # the layer of the configuration the nested choice made most often
        "pixels": {k: res.pixels.to_json()[k] for k in keep},
        "pixel_ceiling": ceiling,
        # each pair's held-out paired accuracy of the nested probe (mean over repeats; analysis.ladder's rule)
        "per_pair_paired_accuracy": res.nested.per_pair_paired_accuracy,
    }
    lo = res.nested.paired_accuracy_ci95[0]
    if random_weights == "chosen":
        rand = ex.probe_features(ex.random_weights_model(model), xy)
        feat = getattr(rand, kind)[res.layers.index(layer)]
        cv = cross_validated_probe(feat, rand.labels, rand.groups, k=res.folds, repeats=res.repeats)
        out["random_weights"] = {
            "configuration": chosen,
            "procedure": "cross-validated probe at the trained model's chosen configuration (no choice of its own)",
            **{k: cv.to_json()[k] for k in keep},
        }
    elif random_weights == "nested":
        out["random_weights"] = {
            "configuration": "nested choice of its own",
            **{k: res.random_weights.to_json()[k] for k in keep},
        }
    if "random_weights" in out:
        r = out["random_weights"]["paired_accuracy"]
        out["above_random_weights"] = {
            "rule": "the nested probe's paired-accuracy interval lies above the random-weights model's paired accuracy",
            "random_weights": r,
            "probe_ci95": res.nested.paired_accuracy_ci95,
            "above": bool(lo > r),
        }
    return out


# ------------------------------------------------------------------------------------------ the null
# Each method's per-pair rule on the null (analysis.ladder's rule functions: one definition), the
# question it answers, and the row it belongs to. On the null nothing carries the pair's difference to
# the decision, so for the decision question every True is a false positive; the representation rules
# are right that the blob is represented (L1H2 gathers it), and count as false positives for the
# decision question all the same.
NULL_RULES = {
    "probes": (
        "outcome probe (held-out by pair)",
        "representation",
        "the nested probe's held-out paired accuracy of the pair > 1/2 (ladder.rule_probe)",
    ),
    "recovery": (
        "component recovery (logit_diff, the headline)",
        "decision",
        "some attn_out / mlp_out's logit-difference recovery > 0.5; undefined (nothing to recover) is no "
        "finding (ladder.rule_recovery)",
    ),
    "cls_projection": (
        "component recovery (cls_projection)",
        "representation",
        "some attn_out / mlp_out restores > 0.5 of the last residual's CLS difference (ladder.rule_recovery)",
    ),
    "heads": (
        "per-head logit-difference recovery",
        "decision",
        "some head's z restores > 0.5 of the logit difference; undefined (nothing to recover) is no finding (ladder.rule_heads)",
    ),
    "dla": (
        "differential DLA by head",
        "decision",
        "some head's |differential DLA| > 0.1 logits (ladder.rule_dla)",
    ),
    "dla_region": (
        "differential DLA on the outcome region",
        "decision",
        "total |differential DLA| > 0.1 logits and the region enriched against the differing tokens; "
        "undecided where it is more and the region holds every differing token (ladder.rule_dla_region)",
    ),
    "attention": (
        "attention enrichment on the outcome region",
        "representation",
        "the region's share of CLS attention above its share of the differing tokens in some layer; "
        "undecided where it holds every differing token (ladder.rule_attention)",
    ),
    "attention_all_tokens": (
        "attention on the outcome region (all-token null)",
        "representation",
        "the region's share of CLS attention above its share of all tokens in some layer (ladder.rule_attention)",
    ),
    "ablation": (
        "outcome-region ablation",
        "decision",
        "zeroing the region moves the logit difference by > 0.1 logits and more than each matched control "
        "(ladder.rule_ablation)",
    ),
    "attribution": (
        "attribution patching (AtP)",
        "decision",
        "some attn_out / mlp_out's |AtP estimate| of the logit difference > 0.1 logits (ladder.rule_attribution)",
    ),
    "attribution_real": (
        "real denoising patching (logit difference, not normalised)",
        "decision",
        "some attn_out / mlp_out patched alone moves the logit difference by > 0.1 logits (ladder.rule_attribution "
        "on the real effects)",
    ),
}
QUESTIONS = {
    "decision": "what drives the outcome (the decision)",
    "representation": "what carries the representation difference",
}


def null_false_positives(r: dict, truth: Any, n_heads: int) -> dict:
    """Per method (NULL_RULES), its per-pair rule on every pair of the null subject's domain result
    ``r``, and the false-positive rate over the decided pairs with its Clopper-Pearson 95 % interval."""
    from hooked_vivit.analysis import ladder

    decisions: dict = {}
    if "probes" in r and r["probes"].get("per_pair_paired_accuracy") is not None:
        decisions["probes"] = [ladder.rule_probe(a) for a in r["probes"]["per_pair_paired_accuracy"]]
    if "recovery" in r:
        rec = r["recovery"]
        labels, pp = rec["components"], rec["per_pair"]
        if ex.LOGIT_DIFF_RECOVERY in pp:
            decisions["recovery"] = [ladder.rule_recovery(v, labels, truth) for v in pp[ex.LOGIT_DIFF_RECOVERY]]
        decisions["cls_projection"] = [ladder.rule_recovery(v, labels, truth) for v in pp["cls_projection"]]
        h_labels = [f"L{l}H{h}" for l in range(len(labels) // 2) for h in range(n_heads)]
        decisions["heads"] = [ladder.rule_heads(v, h_labels, truth) for v in pp["heads"]]
    if "maps" in r:
        pp = r["maps"]["per_pair"]
        decisions["dla"] = [ladder.rule_dla(e["dla_per_head"], n_heads, truth) for e in pp]
        decisions["dla_region"] = [
            ladder.rule_dla_region(e["dla_total"], e["dla_enrichment_differing"], e["base_rate_differing"], True)
            for e in pp
        ]
        decisions["attention"] = [
            ladder.rule_attention(e["attention_share_per_layer"], e["base_rate_differing"]) for e in pp
        ]
        decisions["attention_all_tokens"] = [
            ladder.rule_attention(e["attention_share_per_layer"], e["base_rate"]) for e in pp
        ]
    if "ablation" in r:
        decisions["ablation"] = [
            ladder.rule_ablation(e["region_effect"], e.get("control_effects")) for e in r["ablation"]["per_pair"]
        ]
    if "attribution" in r:
        decisions["attribution"] = [
            ladder.rule_attribution(e["estimates"], None, True) for e in r["attribution"]["per_pair"]
        ]
        decisions["attribution_real"] = [
            ladder.rule_attribution(e["real"], None, True) for e in r["attribution"]["per_pair"]
        ]
    out = {}
    for m, d in decisions.items():
        row, question, rule = NULL_RULES[m]
        rt = ladder.rate(d)
        out[m] = {
            "row": row,
            "question": question,
            "rule": rule,
            "false_positive_pairs": rt.k,
            "pairs": rt.n,
            "undecided": rt.undecided,
            "false_positive_rate": rt.rate,
            "false_positive_ci95": None if rt.ci95 is None else list(rt.ci95),
            "interval": "Clopper-Pearson 95 % (statsmodels proportion_confint, method='beta')",
            "decisions": d,
        }
    return out


# ------------------------------------------------------------------------------------------ driver
def validate_subject(
    subject: Subject,
    *,
    sanity_pairs: int = 50,
    attribution_pairs: int = 50,
    n_controls: int = 4,
    methods: Sequence[str] = METHODS,
    progress: bool = True,
    random_weights: str = "chosen",
) -> dict:
    """Every method on one subject. Its tests' p-values are raw: ``validate`` adds the Holm-adjusted
    ones across the report (``findings`` adjusts within the subject where they are missing)."""
    out: dict = {
        "subject": subject.name,
        "model": subject.model.cfg.model_name,
        "outcome_is_label": subject.outcome_is_label,
        "truth": subject.truth,
        "domains": {},
    }
    for domain, pairs in subject.pairs.items():
        t0 = time.time()
        r: dict = {"pairs": len(pairs)}
        if "probes" in methods:
            r["probes"] = probes(subject.model, pairs, random_weights=random_weights)
        if "recovery" in methods or "residual sanity" in methods:
            r["recovery"] = recovery(subject.model, pairs, sanity_pairs if "residual sanity" in methods else 0)
        if "differential DLA" in methods or "attention enrichment" in methods:
            r["maps"] = attribution_maps(subject.model, pairs)
        if "ablation" in methods:
            r["ablation"] = region_ablation(subject.model, pairs, n_controls)
        null = bool(subject.truth.get("null"))
        if (
            "attribution" in methods and attribution_pairs > 0 and subject.outcome_is_label
        ):  # the target: known mechanisms (the null: every pair, for its false-positive rate)
            r["attribution"] = attribution_vs_patching(subject.model, pairs if null else pairs[:attribution_pairs])
        if null:
            r["false_positive"] = null_false_positives(r, subject.ground_truth, subject.model.cfg.n_heads)
        r["seconds"] = round(time.time() - t0, 1)
        if progress:
            print(f"validate: {subject.name} / {domain}: {r['seconds']} s", flush=True)
        out["domains"][domain] = r
        if "recovery" in r:  # the headline recovery variant (logit_diff where the model has a logit per outcome)
            out.setdefault("headline", r["recovery"]["headline"])
    return out


def validate(
    organisms: Sequence[str] = ("actions", "outcomes"),
    planted_models: Sequence[str] | None = None,
    *,
    n_pairs: int = 50,
    domains: Sequence[str] = DOMAINS,
    sanity_pairs: int = 50,
    attribution_pairs: int = 50,
    n_controls: int = 4,
    seed0: int = VALIDATE_SEED0,
    methods: Sequence[str] = METHODS,
    progress: bool = True,
    models: dict | None = None,
    random_weights: str = "chosen",
    ladder: bool = False,
    ladder_pairs: int = 20,
    ladder_null_pairs: int = 100,
    ladder_levels: Sequence[int] | None = None,
    null_pairs: int = 100,
) -> dict:
    """Every method on every subject (see the module docstring); ``models`` maps an organism name to an
    already loaded model (tests); ``random_weights``: the probes' random-weights control (see ``probes``).
    Every across-pair test of the report is Holm-adjusted as one family ("multiple_comparisons").
    ``ladder``: also run ``hooked_vivit.analysis.ladder.ladder`` over ``planted_models`` (``ladder_pairs``
    pairs per model and level, ``ladder_null_pairs`` per level of the null, ``ladder_levels``: every level
    of planted.LEVELS by default), kept under "ladder" (recall and the null's false-positive rate per
    method and level, with intervals, and ``breaks``); about 0.06 s per pair on one CPU thread.
    Returns plain data; ``validation_markdown`` turns it into the table."""
    from hooked_vivit import planted
    from hooked_vivit.analysis import ladder as ladder_mod

    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 5:
        raise ValueError(f"n_pairs must be an integer >= 5 (5-fold probes over pairs), got {n_pairs!r}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")
    planted_models = planted.NAMES if planted_models is None else tuple(planted_models)
    t0, c0 = time.time(), time.process_time()
    ladder_data = None
    if ladder and planted_models:  # first: cheap, and its argument checks fail before the long run
        ladder_data = ladder_mod.ladder(
            planted_models, ladder_levels, n_pairs=ladder_pairs, null_pairs=ladder_null_pairs
        )
        if progress:
            print(f"validate: ladder: {ladder_data['seconds']} s", flush=True)
    # The planted null gets null_pairs pairs (its false-positive rates; every method on every pair,
    # attribution included), whatever n_pairs the other subjects get.
    if isinstance(null_pairs, bool) or not isinstance(null_pairs, int) or null_pairs < 5:
        raise ValueError(f"null_pairs must be an integer >= 5 (5-fold probes over pairs), got {null_pairs!r}")
    subjects = [
        planted_subject(n, null_pairs if ladder_mod.is_null(planted.build(n).truth) else n_pairs)
        for n in planted_models
    ]
    subjects += [organism_subject(n, n_pairs, domains, seed0, model=(models or {}).get(n)) for n in organisms]
    results = [
        validate_subject(
            s,
            sanity_pairs=sanity_pairs,
            attribution_pairs=attribution_pairs,
            n_controls=n_controls,
            methods=methods,
            progress=progress,
            random_weights=random_weights,
        )
        for s in subjects
    ]
    multiple = adjust_validation(results)
    out = {
        "settings": {
            "pairs_per_domain": n_pairs,
            "seeds": [seed0, seed0 + n_pairs - 1],
            # the planted null's pairs (seeds 0..null_pairs - 1; every method on each, attribution included)
            "null_pairs": null_pairs,
            "sanity_pairs": sanity_pairs,
            "attribution_pairs": attribution_pairs,
            "n_controls": n_controls,
            "methods": list(methods),
            "probe_goal": PROBE_GOAL,
            "attribution_goal": ATTRIBUTION_GOAL,
            "alpha": ALPHA,
            "random_weights": random_weights,
            "ladder": ladder_data is not None,
        },
        "multiple_comparisons": multiple,
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
        # subject -> its headline recovery variant (logit_diff where the model has a logit per outcome)
        "headline": {res["subject"]: res.get("headline") for res in results},
        "subjects": results,
    }
    if ladder_data is not None:
        out["ladder"] = ladder_data
    return out


# ------------------------------------------------------------------------------------------ the table
def _pct(stat: dict, key: str = "mean", i: int | None = None) -> str:
    m = stat[key] if i is None else stat[key][i]
    lo, hi = stat["ci95"] if i is None else (stat["ci95"][0][i], stat["ci95"][1][i])
    return f"{m:.0%} [{lo:.0%}, {hi:.0%}]" if lo is not None else f"{m:.0%}"


def _num(stat: dict, fmt: str = ".2f", i: int | None = None) -> str:
    m = stat["mean"] if i is None else stat["mean"][i]
    lo, hi = stat["ci95"] if i is None else (stat["ci95"][0][i], stat["ci95"][1][i])
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else f"{m:{fmt}}"


def _ptext(test: dict | None) -> str:
    """ "p = .. (Holm ..)" of a test, "" without one."""
    if test is None:
        return ""
    holm = test.get("p_holm")
    return f"p = {test['p']:.2g}" + (f" (Holm {holm:.2g})" if holm is not None else "")


def _significant(test: dict | None) -> bool:
    return test is not None and test.get("p_holm") is not None and test["p_holm"] < ALPHA


def _missed(test: dict | None) -> str:
    """ "missed", with the test that did not reach significance where there is one: with few pairs a
    one-sided signed-rank test cannot go below 1 / 2^n before Holm, so a miss may be a lack of pairs."""
    if test is None or test.get("p_holm") is None:
        return "missed"
    text = f"missed (Holm p = {test['p_holm']:.2g} >= {ALPHA:.0%} over {test['pairs']} pairs"
    if test.get("p") is not None and test["p"] <= 1.0001 / 2 ** test["pairs"]:  # every pair agreed: a lack of pairs
        text += f"; every pair in the expected direction, but one-sided p cannot go below 1/2^{test['pairs']}"
    return text + ")"


def _enriched(stat: dict | None, test: dict | None, i: int | None = None) -> bool:
    """An enrichment is called enriched when its 95 % interval over pairs lies above 1 and its one-sided
    signed-rank test of enrichment > 1 (signed_rank_test) holds after Holm's adjustment."""
    if stat is None or test is None:
        return False
    lo = stat["ci95"][0] if i is None else stat["ci95"][0][i]
    return lo is not None and lo > 1 and _significant(test)


def _untestable_differing(mp: dict, stat: dict | None, tests: Sequence[dict | None]) -> str | None:
    """Why the enrichment against the differing tokens cannot be tested, or None where it can."""
    if "max_enrichment_differing" not in mp:
        return "n/a: this validation.json predates the matched-null tests (rerun validate)"
    if mp.get("base_rate_differing") is None or stat is None:
        return "untestable: fewer than two pairs whose region holds a differing token"
    if mp.get("max_enrichment_differing") is not None and mp["max_enrichment_differing"] <= 1 + 1e-9:
        return (
            "untestable: the region holds every differing token (base rate 1 among them), so no enrichment "
            "against them can exceed 1"
        )
    if all(t is None for t in tests):
        return f"untestable: fewer than {MIN_TEST_PAIRS} pairs whose enrichment differs from 1"
    return None


def _word(enriched: bool) -> str:
    return "enriched" if enriched else "not enriched"


def _head_layer(label: str) -> int:
    """The layer of a head label "L1H2"."""
    return int(label[1:].split("H")[0])


def _mechanism(truth: dict) -> str:
    """The planted mechanism's kind, from its truth: "composition" (an MLP composes heads that write
    different directions: no head alone restores the decision), "redundant" (an MLP reads several heads
    that write the same direction, saturating: each head alone restores it) or "head" (no MLP: the
    planted head's layer carries it). A validation.json without "head_writes": an MLP is a composition."""
    if not truth.get("mlps"):
        return "head"
    writes = truth.get("head_writes")
    if writes is not None and len(set(writes)) < len(writes):
        return "redundant"
    return "composition"


def _null_rows(r: dict, row: Any) -> None:
    """The null's rows: per method (NULL_RULES), its per-pair rule's false-positive rate over the pairs
    (Clopper-Pearson 95 %) and the question the rule answers. Verdict: "correct negative" where no pair
    is a false positive, "false positive" where some is, "untestable" where the rule decides no pair.
    Nothing is reported as found: nothing carries the pair's difference to the decision."""
    for fp in r["false_positive"].values():
        k, n, u = fp["false_positive_pairs"], fp["pairs"], fp["undecided"]
        if n:
            lo, hi = fp["false_positive_ci95"]
            rate = f"{k}/{n} = {fp['false_positive_rate']:.0%} [{lo:.0%}, {hi:.0%}]"
            text = f"false-positive rate {rate} (Clopper-Pearson)"
        else:
            text = "no pair decided"
        text += f"{f', {u} pairs undecided' if u else ''}; rule: {fp['rule']}; answers: {QUESTIONS[fp['question']]}"
        if fp["question"] == "representation" and k:
            text += (
                " - true of the null (L1H2 gathers the blob; the representation differs), a false positive "
                "for what drives the outcome"
            )
        verdict = "untestable: the rule decides no pair" if not n else "false positive" if k else "correct negative"
        row(fp["row"], text, "no finding: nothing carries the pair's difference to the decision", verdict)
    rec = r.get("recovery", {})
    if rec.get("sanity"):
        lo = min(s["min"] for s in rec["sanity"].values())
        hi = max(s["max"] for s in rec["sanity"].values())
        n = next(iter(rec["sanity"].values()))["pairs"]
        und = rec.get("sanity_undefined")
        row(
            "whole-residual patch (sanity)",
            f"recovery {lo:.4%} to {hi:.4%} over every layer and defined variant ({n} pairs)"
            + (f"; {und['variant']} undefined on {und['pairs']} pairs ({und['why']})" if und else ""),
            "100 % at every layer",
            "passes" if abs(lo - 1) < 1e-3 and abs(hi - 1) < 1e-3 else "FAILS",
        )


def findings(result: dict, settings: dict) -> list[dict]:
    """One row per (method, domain) of a subject: what the method found, what is known, and a verdict
    (found / missed / untestable / correct negative / false positive / n/a), every number and verdict word
    from ``result``: each test's "p" and "p_holm" (Holm across the report, set by ``validate``; within the
    subject where missing) are the row's "p" and "p_holm" too."""
    import copy

    if any("p_holm" not in d for _, d in _tests(result["domains"])):
        result = copy.deepcopy(result)
        _holm_of(result)
    rows = []
    gt = result["outcome_is_label"]
    truth = result["truth"]
    planted = bool(truth)
    for domain, r in result["domains"].items():

        def row(method, found, expected, verdict, test=None):
            rows.append(
                {
                    "model": result["subject"],
                    "domain": domain,
                    "method": method,
                    "found": found,
                    "expected": expected,
                    "verdict": verdict,
                    "p": None if test is None else test["p"],
                    "p_holm": None if test is None else test.get("p_holm"),
                }
            )

        if truth.get("null") and "false_positive" in r:
            _null_rows(r, row)
            continue
        if "probes" in r:
            pr = r["probes"]
            last = pr["cls"][-1]
            acc = {"mean": last["accuracy"], "ci95": last["accuracy_ci95"]}
            found = f"CLS probe at {pr['layers'][-1]}: {_pct(acc)} (control {last['control_accuracy']:.0%})"
            qualifiers = []
            if "nested" in pr:
                nest = pr["nested"]
                found += (
                    f"; layer x pooling chosen by nested cross-validation: {pr['chosen']} ({pr['chosen_folds']} of "
                    f"{pr['folds_total']} outer folds), paired accuracy {_pct({'mean': nest['paired_accuracy'], 'ci95': nest['paired_accuracy_ci95']})}"
                )
                if "above_random_weights" in pr:
                    rw = pr["above_random_weights"]
                    found += (
                        f"; random-weights model ({pr['random_weights']['configuration']}): {rw['random_weights']:.0%}"
                    )
                    if not rw["above"]:
                        qualifiers.append("not above the random-weights model")
                pc = pr["pixel_ceiling"]
                found += (
                    f"; pixel baseline ({pc['baseline']}): "
                    f"{_pct({'mean': pc['pixels'], 'ci95': pc['pixels_ci95']})} paired accuracy"
                )
                if pc["fingerprint"]:
                    qualifiers.append("decodable from pixels alone: a fingerprint")
            else:
                found += f"; best layer {pr['best_layer']}"
            if planted:  # resid_pre k is before layer k: the last planted head's layer, then the one after it
                k = truth["last_head_layer"]
                found += f"; before it (resid_pre {k}): {pr['cls'][k]['accuracy']:.0%}, after (resid_pre {k + 1}): {pr['cls'][k + 1]['accuracy']:.0%}"
            decodes = last["accuracy_ci95"][0] >= PROBE_GOAL if gt else last["accuracy_ci95"][1] >= 0.75
            expected = f"decodes (goal >= {PROBE_GOAL:.0%})" if gt else "chance (outcome never a label)"
            verdict = (
                ("found" if decodes else "missed") if gt else ("false positive" if decodes else "correct negative")
            )
            row("outcome probe (held-out by pair)", found, expected, "; ".join([verdict, *qualifiers]))
        if "recovery" in r:
            rec = r["recovery"]
            head_v = rec.get("headline", ex.HEADLINE_RECOVERY)
            parts = [
                f"{v}{' (headline)' if v == head_v else ''}: top {e['top']} {_pct({'mean': e['top_mean'], 'ci95': e['top_ci95']})}"
                for v, e in rec["variants"].items()
            ]
            if planted:  # what ranks first follows from the truth's kind of mechanism (_mechanism)
                kind = _mechanism(truth)
                head_layers = sorted({f"L{_head_layer(h)} attn" for h in truth["heads"]})
                want = [f"L{l} mlp" for l in truth.get("mlps", [])] or head_layers
                if kind == "redundant":  # either head's layer alone saturates the readout, as the MLP does
                    want = head_layers + want
                hit = [v for v, e in rec["variants"].items() if e["top"] in want]
                expected = f"top component by the headline ({head_v}): " + " or ".join(want)
                expected += {
                    "composition": " (the composing MLP; no gathering head's layer alone fires it)",
                    "redundant": " (the saturating MLP, and each planted head's layer alone restores ~ 100 %)",
                    "head": " (the planted head's layer)",
                }[kind]
                top_v = rec["variants"].get(head_v)
                by_headline = top_v is not None and top_v["top"] in want
                if kind == "redundant" and top_v is not None:  # and every one of them restores at least half
                    means = [top_v["mean"][rec["components"].index(c)] for c in want]
                    by_headline = by_headline and min(means) >= 0.5
                verdict = (
                    f"{'found' if by_headline else 'missed'} by the headline ({head_v}); "
                    f"found in {len(hit)} of {len(rec['variants'])} variants"
                    if hit
                    else "missed in every variant"
                )
            else:
                expected = "the blocks that carry the outcome (not known in advance)" if gt else "no outcome to carry"
                verdict = "reported" if gt else "n/a (no ground truth)"
            row("component recovery (every variant)", "; ".join(parts), expected, verdict)
            if "heads" in rec:  # logit_diff of each head's z patched alone
                hd = rec["heads"]
                found = (
                    f"top head {hd['top']} {hd['top_mean']:.0%}; largest |mean| of any head {hd['max_abs_mean']:.1%} "
                    if hd["max_abs_mean"] >= 0.005
                    else f"every head ~ 0 (largest |mean| {hd['max_abs_mean']:.1%}) "
                ) + f"({hd['n']} pairs, {hd['variant']})"
                kind = _mechanism(truth) if planted else None
                if kind == "composition":  # an AND: no head alone restores the decision
                    expected = "every head ~ 0 (one gathered variable alone does not fire the composing MLP)"
                    verdict = "found" if hd["max_abs_mean"] < 0.01 else "missed"
                elif kind == "redundant":  # either planted head alone saturates the readout
                    expected = "each of " + " and ".join(truth["heads"]) + " alone restores ~ 100 % (redundant heads)"
                    each = [hd["mean"][hd["labels"].index(h)] for h in truth["heads"]]
                    found += "; " + ", ".join(f"{h} {m:.0%}" for h, m in zip(truth["heads"], each))
                    verdict = "found" if hd["top"] in truth["heads"] and min(each) >= 0.5 else "missed"
                elif planted:
                    expected = "top head: " + " or ".join(truth["heads"]) + " (~ 100 %)"
                    verdict = "found" if hd["top"] in truth["heads"] else "missed"
                else:
                    expected, verdict = "the heads that carry the outcome (not known in advance)", "reported"
                row("per-head logit-difference recovery", found, expected, verdict)
            if rec["sanity"]:
                lo = min(s["min"] for s in rec["sanity"].values())
                hi = max(s["max"] for s in rec["sanity"].values())
                n = next(iter(rec["sanity"].values()))["pairs"]
                row(
                    "whole-residual patch (sanity)",
                    f"recovery {lo:.4%} to {hi:.4%} over every layer and variant ({n} pairs)",
                    "100 % at every layer",
                    "passes" if abs(lo - 1) < 1e-3 and abs(hi - 1) < 1e-3 else "FAILS",
                )
        if "maps" in r:
            mp = r["maps"]
            base = mp["base_rate"]["mean"]
            bd = mp.get("base_rate_differing")
            base_d = f"base rate {bd['mean']:.0%}" if bd else "no base rate"
            if bd and mp.get("max_enrichment_differing") is not None:  # the headroom the null leaves
                base_d += f", at most {mp['max_enrichment_differing']:.2f} possible"
            rule = "(interval above 1 and one-sided signed-rank p < 5 % after Holm)"
            negative: dict = {}  # the negative-control row's words (subjects whose outcome is not a label)
            if "differential_dla" in mp:
                d = mp["differential_dla"]
                t_all, t_d = d.get("enrichment_test"), d.get("enrichment_differing_test")
                why = _untestable_differing(mp, d.get("enrichment_differing"), [t_d])
                on_d = why is None and _enriched(d.get("enrichment_differing"), t_d)
                on_all = _enriched(d["enrichment"], t_all)
                found = (
                    f"share on region {_pct(d['share'])}; against the differing tokens ({base_d}, the verdict's null): "
                    + (f"enrichment {_num(d['enrichment_differing'])}" if d.get("enrichment_differing") else "no value")
                    + (f", {_ptext(t_d)}" if t_d else "")
                    + f"; against all tokens (base rate {base:.0%}; not the verdict's null): enrichment "
                    f"{_num(d['enrichment'])}" + (f", {_ptext(t_all)}" if t_all else "") + f", {_word(on_all)}"
                    f"; {_pct(d['share_after_divergence'])} of its mass after the divergence"
                )
                if mp["dla_zero_pairs"]:
                    found += f"; zero in {mp['dla_zero_pairs']} pairs"
                if why is not None:
                    verdict = why
                else:
                    verdict = ("found" if on_d else _missed(t_d)) if gt else _word(on_d)
                negative["differential DLA"] = (
                    on_all,
                    None if why else on_d,
                    d["enrichment"],
                    d.get("enrichment_differing"),
                )
                row(
                    "differential DLA on the outcome region",
                    found,
                    f"enrichment > 1 against the differing tokens {rule}" if gt else "no outcome signal",
                    verdict,
                    t_d,
                )
            else:
                found = f"zero in all {mp['dla_zero_pairs']} pairs: no head writes the class direction"
                verdict = "missed (blind to an MLP-composed signal)" if gt else "n/a"
                row(
                    "differential DLA on the outcome region",
                    found,
                    "enrichment > 1 on the region" if gt else "no outcome signal",
                    verdict,
                )
            a = mp["attention"]
            n_layers = len(a["enrichment_per_layer"]["mean"])
            t_all = a.get("tests_per_layer") or [None] * n_layers
            t_d = a.get("tests_differing_per_layer") or [None] * n_layers
            st_d = a.get("enrichment_differing_per_layer")
            why = _untestable_differing(mp, st_d, t_d)
            layers_d = [] if why else [l for l in range(n_layers) if _enriched(st_d, t_d[l], l)]
            layers_all = [l for l in range(n_layers) if _enriched(a["enrichment_per_layer"], t_all[l], l)]
            tested_d = [t for t in t_d if t is not None]
            best_t = min(tested_d, key=lambda t: t.get("p_holm", t["p"])) if tested_d else None
            fmt_layers = lambda ls: ("layers " + ", ".join(map(str, ls))) if ls else "no layer"  # noqa: E731
            found = (
                f"CLS attention against the differing tokens ({base_d}, the verdict's null): "
                + (
                    f"best layer {int(np.argmax(st_d['mean']))} {_num(st_d, i=int(np.argmax(st_d['mean'])))}, "
                    f"enriched in {fmt_layers(layers_d)} of {n_layers}"
                    + (f" (smallest {_ptext(best_t)})" if best_t else "")
                    if st_d
                    else "no value"
                )
                + f"; against all tokens (base rate {base:.0%}; not the verdict's null): best layer {a['best_layer']} "
                f"{_num(a['best_enrichment'])} (share {a['share_per_layer']['mean'][a['best_layer']]:.0%}), "
                f"enriched in {fmt_layers(layers_all)}"
            )
            if why is not None:
                verdict = why
            elif gt:
                verdict = f"found ({fmt_layers(layers_d)})" if layers_d else _missed(best_t)
            else:
                verdict = (
                    f"enriched in {fmt_layers(layers_d)} (attention without outcome use)"
                    if layers_d
                    else "not enriched"
                )
            negative["attention"] = (bool(layers_all), None if why else bool(layers_d), layers_all, layers_d)
            row(
                "attention enrichment on the outcome region",
                found,
                f"enrichment > 1 against the differing tokens in some layer {rule}" if gt else "-",
                verdict,
                best_t,
            )
            if not gt:  # the action organism: the outcome was never a label, so any enrichment is the null's
                parts, calls_all, calls_d = [], [], []
                if "differential DLA" in negative:
                    on_all, on_d, e_all, e_d = negative["differential DLA"]
                    parts.append(
                        f"differential DLA: all tokens {_num(e_all)} {_word(on_all)}; differing tokens "
                        + (f"{_num(e_d)} {_word(on_d)}" if on_d is not None else "untestable")
                    )
                    calls_all.append(on_all)
                    calls_d.append(on_d)
                on_all, on_d, l_all, l_d = negative["attention"]
                parts.append(
                    f"attention: all tokens enriched in {fmt_layers(l_all)}; differing tokens "
                    + (f"enriched in {fmt_layers(l_d)}" if on_d is not None else "untestable")
                )
                calls_all.append(on_all)
                calls_d.append(on_d)

                def call(c):
                    if all(x is None for x in c):
                        return "untestable"
                    return "false positive" if any(c) else "correct negative"

                row(
                    "negative control: enrichment under each null",
                    "; ".join(parts),
                    "not enriched (the outcome was never a label)",
                    f"all-token null: {call(calls_all)}; differing-token null: {call(calls_d)}",
                )
        if "ablation" in r:
            ab = r["ablation"]
            if "per_pair" not in ab:  # a validation.json from before matched controls
                row("outcome-region ablation", "random-box controls (rerun validate for matched controls)", "-", "n/a")
                continue
            test = ab["test"]
            found = f"{ab['signal']}: region {_num(ab['region_effect'])}"
            if ab["controls_effect"]:
                found += f" vs its matched controls {_num(ab['controls_effect'])}"
            counts = ab["controls_found"]
            found += (
                f"; {ab['tested_pairs']} of {ab['pairs']} pairs tested (matched controls per pair {min(counts)}..{max(counts)}; "
                f"the region holds {_pct(ab['region_share'])} of the pair's pixel difference)"
            )
            pp = [e for e in ab["per_pair"] if e["control_p"] is not None]
            if pp:
                found += (
                    f"; per pair (Monte-Carlo, smallest possible p {ab['min_control_p']:.2g}): p < 5 % in "
                    f"{sum(e['control_p'] < ALPHA for e in pp)}, after Holm over pairs in "
                    f"{sum(e['control_p_holm'] < ALPHA for e in pp)} of {len(pp)}"
                )
            if test:
                found += (
                    f"; region minus controls {test['mean_difference']:.3g} "
                    f"[{test['mean_difference_ci95'][0]:.3g}, {test['mean_difference_ci95'][1]:.3g}], rank-biserial "
                    f"{test['rank_biserial']:.2f}, {_ptext(test)} ({test['test']})"
                )
            key = "to_twin" if "to_twin" in ab else "changed"
            what = "flips to the twin outcome" if key == "to_twin" else "prediction changes"
            found += "; " + "; ".join(
                f"{clip} clip {what}: region {_pct(ab[key][clip])}"
                + (f" vs matched controls {_pct(ab['controls_' + key][clip])}" if ab["controls_" + key] else "")
                for clip in ("positive", "negative")
            )
            if test is None:
                verdict = (
                    "untestable: no pair has a matched control (no other place of the region's size differs as much)"
                    if ab["tested_pairs"] == 0
                    else f"untestable: {ab['tested_pairs']} pairs with matched controls, fewer than {MIN_TEST_PAIRS} "
                    "with a non-zero region-minus-controls difference (a one-sided signed-rank test of fewer cannot "
                    "reach 5 %)"
                )
            elif gt:
                verdict = "found" if _significant(test) else _missed(test)
            else:
                verdict = "matters more than matched controls" if _significant(test) else "correct negative"
            expected = (
                "the region's effect above its matched controls' (signed-rank over pairs, Holm p < 5 %)"
                if gt
                else "no more than matched controls (the outcome was never a label)"
            )
            row(f"outcome-region ablation ({ab['n_controls']} matched boxes per pair)", found, expected, verdict, test)
        if "attribution" in r:
            at = r["attribution"]
            parts, ok = [], []
            for k in ("attn_out by layer", "mlp_out by layer", "z by head"):
                e = at[k]
                if not np.isfinite(e["r"]):  # every real patch and every estimate the same: nothing to correlate
                    parts.append(f"{k}: r undefined (no patch changes the metric)")
                    continue
                ci = f" [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]" if e["ci95"][0] is not None else ""
                parts.append(f"{k}: r = {e['r']:.2f}{ci}")
                ok.append(e["r"] >= ATTRIBUTION_GOAL)
            verdict = (
                "n/a"
                if not ok
                else "meets the goal"
                if all(ok)
                else f"below the goal in {len(ok) - sum(ok)} of {len(ok)}"
            )
            row(
                f"attribution vs real patching ({at['pairs']} pairs)",
                "; ".join(parts) + f" (metric: {at['metric']})",
                f"r >= {ATTRIBUTION_GOAL}",
                verdict,
            )
    return rows


def validation_markdown(data: dict, *, ladder: bool = True, figure: str | None = None) -> str:
    """The table; with ``ladder`` (and a "ladder" in ``data``) followed by the planted ladder's section
    (``hooked_vivit.analysis.ladder.ladder_section``: its table and where each method breaks; ``figure``:
    the relative path of its figure, shown with its caption)."""
    s = data["settings"]
    lines = [
        "| model | domain | method | what it found (mean [95 % CI over pairs]) | known / goal | verdict | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in data["subjects"]:
        for f in findings(res, s):
            cells = [f[k].replace("|", "\\|") for k in ("model", "domain", "method", "found", "expected", "verdict")]
            p = (
                "-"
                if f["p"] is None
                else f"{f['p']:.2g} ({f['p_holm']:.2g})"
                if f["p_holm"] is not None
                else f"{f['p']:.2g}"
            )
            lines.append("| " + " | ".join([*cells, p]) + " |")
    head = (
        f"Generated by `hooked-vivit validate` ({s['pairs_per_domain']} held-out pairs per domain, seeds {s['seeds'][0]:,}..{s['seeds'][1]:,}; "
        f"residual sanity on {s['sanity_pairs']}, attribution on {s['attribution_pairs']} pairs per domain; "
        f"{data['seconds'] / 60:.1f} min wall, {data['cpu_seconds'] / 60:.1f} min CPU on {data['torch_threads']} threads)."
    )
    mc = data.get("multiple_comparisons")
    if mc:
        head += (
            f" Verdict words read one-sided Wilcoxon signed-rank tests over pairs, Holm-adjusted across the whole report "
            f"({mc['family']} tests; p beside its Holm-adjusted value, alpha {mc['alpha']:.0%}); enrichments are tested "
            "against the tokens whose pixels differ between the clips, ablations against control boxes matched on size "
            "and share of the pair's pixel difference."
        )
    text = head + "\n\n" + "\n".join(lines) + "\n"
    if ladder and data.get("ladder"):
        from hooked_vivit.analysis.ladder import ladder_section

        text += "\n**Where each method breaks.** " + ladder_section(data["ladder"], figure)
    return text


def write_validation(out: Any, data: dict, *, overwrite: bool = False) -> Path:
    from hooked_vivit.analysis.report import to_jsonable
    from hooked_vivit.output_dir import OutputDir, output_directory

    with output_directory(out, overwrite=overwrite, writer="hooked-vivit validate") as tmp:
        (tmp / "validation.json").write_text(json.dumps(to_jsonable(data), indent=1) + "\n")
        figure = None
        if data.get("ladder"):
            from hooked_vivit.analysis.ladder import ladder_figure

            figure = ladder_figure(data["ladder"], tmp / "ladder.png").name
        (tmp / "validation.md").write_text(
            "# Validation against known mechanisms\n\n" + validation_markdown(data, figure=figure)
        )
    return out.path if isinstance(out, OutputDir) else Path(out)


BEGIN, END = "<!-- validation table: begin (generated) -->", "<!-- validation table: end -->"


def insert_table(path: Path, table: str) -> None:
    """Replace the text between the BEGIN and END markers of a markdown file with ``table``."""
    text = Path(path).read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN!r} ... {END!r} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(head + BEGIN + "\n" + table + END + tail)
