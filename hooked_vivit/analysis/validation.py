"""``hooked-vivit validate``: every method of the analysis against models whose mechanism is known.

Subjects: the planted-mechanism models (hooked_vivit.planted: the mechanism is set by hand), the
ground-truth organism (organism "outcomes": the outcome IS its label, so it must carry the outcome)
and the action organism (organism "actions": the outcome was never a label). On held-out minimal
pairs of each domain (rendered seeds in the reserved analysis range, the same scenes for both
organisms), each method reports what it finds, with percentile-bootstrap 95 % intervals over pairs,
beside what is known to be there; a method that misses a known mechanism is reported as a miss:

- probes: outcome probes per layer (CLS, repeated grouped k-fold, groups = pairs);
- recovery: component recovery (denoising each attn_out / mlp_out into the negative run, every
  variant of experiments.RECOVERY_VARIANTS) and, as a sanity check, the whole residual stream
  patched at every layer (must restore 100 % in every variant);
- differential DLA / attention enrichment on the outcome objects' tokens from the divergence on;
- ablation: the outcome objects' pixels (from the divergence on) zeroed, against random boxes of
  equal size: how often the predicted class changes (and, where the outcome is a label, to the twin);
- attribution: attribution patching against real patching (Pearson r of attn_out / mlp_out by layer
  and z by head), on the subjects whose outcome is known to be carried (the planted models and the
  ground-truth organism).
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
from hooked_vivit.causal import patching
from hooked_vivit.causal.ablation import ablate_pixel_mask, random_boxes_like
from hooked_vivit.causal.attribution import attribution_patch
from hooked_vivit.causal.metrics import LogitDiff, LogitDiffRecovery, SignalRecovery
from hooked_vivit.causal.probes import bootstrap_ci
from hooked_vivit.organism.data import ANALYSIS_SEEDS

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

# Inside the reserved analysis range (no organism saw it), apart from the study's default seeds.
VALIDATE_SEED0 = ANALYSIS_SEEDS["study"] + 500_000
DOMAINS = tuple(synthetic.DOMAINS)
PROBE_GOAL = 0.9  # last-layer outcome probe on the ground-truth organism
ATTRIBUTION_GOAL = 0.9  # attribution vs real patching, Pearson r
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


def planted_subject(name: str, n_pairs: int, seed0: int = 0) -> Subject:
    """A planted model's pairs (every variable on vs off, one background per pair); the region is the
    planted boxes' pixels."""
    from hooked_vivit import planted

    pm = planted.build(name)
    cfg = pm.cfg
    region = np.zeros((cfg.num_frames, *cfg.image_size), dtype=bool)
    for v in pm.truth.variables:
        b = pm.pixel_box(v)
        region[b.t0 : b.t1, b.y0 : b.y1, b.x0 : b.x1] = True
    start = int(np.nonzero(region.any((1, 2)))[0][0])
    classes = (pm.truth.positive, pm.truth.negative)
    pairs = [ValidationPair(p, n, region, start, classes) for p, n in pm.pairs(n_pairs, seed=seed0)]
    truth = {
        "components": list(pm.truth.component_labels),
        "heads": list(pm.truth.head_labels),
        "mlps": list(pm.truth.mlps),
        "last_head_layer": max(h.layer for h in pm.truth.heads),
        "rule": pm.truth.rule,
    }
    return Subject(f"planted {name}", pm.model, {name: pairs}, True, truth)


# ------------------------------------------------------------------------------------------ statistics
def _ci(values: Sequence[float] | np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    mean = (float(v.mean()) if v.ndim == 1 else v.mean(0).tolist()) if len(v) else None
    if len(v) < 2:  # no interval from one pair
        return {"mean": mean, "ci95": [None, None] if v.ndim == 1 else [[None] * v.shape[1]] * 2, "n": int(len(v))}
    lo, hi = bootstrap_ci(v)
    return {"mean": mean, "ci95": [np.asarray(lo).tolist(), np.asarray(hi).tolist()], "n": int(len(v))}


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
        if "heads" in rec:
            heads.append(np.ravel(rec["heads"]["values"]))
        if i < sanity_pairs:
            with torch.inference_mode():
                clean_logits, clean = model.run_with_cache(p.positive, names_filter=lambda n: "resid" in n)
                corrupt_logits, corrupt = model.run_with_cache(p.negative, names_filter=[last])
            patched, logits = _residual_patched(model, clean, p.negative, last, logits=True)
            for v, vals in ex.recovery_variants(patched, clean[last], corrupt[last], last).items():
                sanity[v].append(vals)
            if with_logits:
                metric = LogitDiffRecovery(*p.classes, clean_logits, corrupt_logits)
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


def _differing_found(mp: dict, enr: dict | None) -> str:
    """ "; against the differing tokens (base rate b): enrichment e [lo, hi] (enriched / not enriched)" for
    the validation table; the verdict words come from the interval (its lower end above 1 or not)."""
    if mp.get("base_rate_differing") is None or enr is None:
        return "; against the differing tokens: fewer than two pairs whose region holds one"
    lo = enr["ci95"][0]
    word = "enriched" if lo is not None and lo > 1 else "not enriched"
    return (
        f"; against the differing tokens (base rate {mp['base_rate_differing']['mean']:.0%}): enrichment "
        f"{_num(enr)}, {word}"
    )


def attribution_maps(model: HookedVideoTransformer, pairs: list[ValidationPair]) -> dict:
    """Differential token DLA and CLS attention per pair, as shares and enrichments on the region's tokens,
    against two base rates: the region's share of all tokens, and its share of the tokens whose pixels
    differ between the pair's clips (the matched null: a region that is most of what differs is enriched
    over all tokens by that alone). Pairs whose region holds no differing token have no second value."""
    grid = model.cfg.grid
    dla_share, dla_enr, after_div, attn_enr, attn_share, dla_zero = [], [], [], [], [], 0
    base_rates, base_rates_d, dla_enr_d, attn_enr_d = [], [], [], []
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
        if float(w.sum()) < 1e-9:  # no head writes the class direction: nothing to distribute
            dla_zero += 1
        else:
            e = ex.enrichment(w, on, differing)
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
        attn_share.append(shares.mean(1))  # per layer, mean over heads
        attn_enr.append(shares.mean(1) / e.base_rate)
        if base_d:
            attn_enr_d.append(shares.mean(1) / base_d)
    ci = lambda v: _ci(v) if len(v) >= 2 else None  # noqa: E731  (an interval over pairs needs two)
    out = {
        "pairs": len(pairs),
        "base_rate": _ci(base_rates),
        "base_rate_differing": ci(base_rates_d),
        "dla_zero_pairs": dla_zero,
    }
    if dla_share:
        out["differential_dla"] = {
            "share": _ci(dla_share),
            "enrichment": _ci(dla_enr),
            "enrichment_differing": ci(dla_enr_d),
            "share_after_divergence": _ci(after_div),
        }
    a = np.stack(attn_enr)  # [pairs, L]
    best = int(np.argmax(a.mean(0)))
    out["attention"] = {
        "enrichment_per_layer": _ci(a),
        "share_per_layer": _ci(np.stack(attn_share)),
        "best_layer": best,
        "best_enrichment": _ci(a[:, best]),
        # against the differing tokens, at the same layer
        "best_enrichment_differing": ci(np.stack(attn_enr_d)[:, best]) if len(attn_enr_d) >= 2 else None,
    }
    return out


def region_ablation(model: HookedVideoTransformer, pairs: list[ValidationPair], n_controls: int, seed: int = 0) -> dict:
    """Zero the region in each clip of a pair (and ``n_controls`` random equal-size boxes instead):
    the share of clips whose predicted class changes, and (outcome labels) changes to the twin class."""
    changed, twin, ctl_changed, ctl_twin, gap, twin_gap = [], [], [], [], [], []
    for i, p in enumerate(pairs):
        controls = random_boxes_like(p.region, n_controls, seed=seed + i)
        masks = np.concatenate([p.region[None], controls])
        x = torch.cat([p.positive, p.negative])
        with torch.inference_mode():
            before = model(x).argmax(-1)
            ablated = torch.cat([ablate_pixel_mask(clip[None].expand(len(masks), *clip.shape), masks) for clip in x])
            after = model(ablated).argmax(-1).reshape(2, len(masks))
        ch = (after != before[:, None]).double()  # [2 clips, 1 + controls]
        changed.append(ch[:, 0].tolist())
        ctl_changed.append(ch[:, 1:].mean(1).tolist())
        if p.classes is not None:
            other = torch.tensor([p.classes[1], p.classes[0]])[:, None]
            tw = (after == other).double()
            twin.append(tw[:, 0].tolist())
            ctl_twin.append(tw[:, 1:].mean(1).tolist())
            twin_gap.append(float(tw[:, 0].mean() - tw[:, 1:].mean()))
        gap.append(float(ch[:, 0].mean() - ch[:, 1:].mean()))
    # Per clip of the pair ([positive, negative]) and for the pair (the mean of its two clips).
    both = lambda v: {
        "positive": _ci(np.asarray(v)[:, 0]),
        "negative": _ci(np.asarray(v)[:, 1]),
        "pair": _ci(np.asarray(v).mean(1)),
    }  # noqa: E731
    out = {
        "pairs": len(pairs),
        "n_controls": n_controls,
        "changed": both(changed),
        "controls_changed": both(ctl_changed),
        "changed_minus_controls": _ci(gap),
    }
    if twin:
        out["to_twin"] = both(twin)
        out["controls_to_twin"] = both(ctl_twin)
        out["to_twin_minus_controls"] = _ci(twin_gap)  # per pair: its clips' flips minus the random boxes'
    return out


def attribution_vs_patching(model: HookedVideoTransformer, pairs: list[ValidationPair]) -> dict:
    """Attribution patching against real denoising patching, per pair: attn_out and mlp_out by layer,
    z by head. Metric: the positive-minus-negative class logit difference when the outcome is the
    label, else the paper's recovery at CLS of the last resid_post."""
    L = model.cfg.n_layers
    last = f"blocks.{L - 1}.hook_resid_post"
    est: dict = {"attn_out by layer": [], "mlp_out by layer": [], "z by head": []}
    act: dict = {k: [] for k in est}
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
    return {"metric": metric_name, "pairs": len(pairs), **{k: pooled_correlation(est[k], act[k]) for k in est}}


def probes(model: HookedVideoTransformer, pairs: list[ValidationPair]) -> dict:
    f = ex.probe_features(model, [(p.positive, p.negative) for p in pairs])
    res = ex.layer_probes(
        model, [(p.positive, p.negative) for p in pairs], features=f
    )  # pairs: the random-weights control
    best = int(np.argmax([e.accuracy for e in res.cls]))
    keep = ("accuracy", "accuracy_ci95", "paired_accuracy", "paired_accuracy_ci95", "control_accuracy", "selectivity")
    return {
        "pairs": res.pairs,
        "layers": res.layers,
        "method": res.method,
        "cls": [{k: e.to_json()[k] for k in keep} for e in res.cls],
        "best_layer": res.layers[best],
        "pixels": {k: res.pixels.to_json()[k] for k in keep},
    }


# ------------------------------------------------------------------------------------------ driver
def validate_subject(
    subject: Subject,
    *,
    sanity_pairs: int = 50,
    attribution_pairs: int = 50,
    n_controls: int = 4,
    methods: Sequence[str] = METHODS,
    progress: bool = True,
) -> dict:
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
            r["probes"] = probes(subject.model, pairs)
        if "recovery" in methods or "residual sanity" in methods:
            r["recovery"] = recovery(subject.model, pairs, sanity_pairs if "residual sanity" in methods else 0)
        if "differential DLA" in methods or "attention enrichment" in methods:
            r["maps"] = attribution_maps(subject.model, pairs)
        if "ablation" in methods:
            r["ablation"] = region_ablation(subject.model, pairs, n_controls)
        if (
            "attribution" in methods and attribution_pairs > 0 and subject.outcome_is_label
        ):  # the target: known mechanisms
            r["attribution"] = attribution_vs_patching(subject.model, pairs[:attribution_pairs])
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
) -> dict:
    """Every method on every subject (see the module docstring); ``models`` maps an organism name to an
    already loaded model (tests). Returns plain data; ``validation_markdown`` turns it into the table."""
    from hooked_vivit import planted

    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 5:
        raise ValueError(f"n_pairs must be an integer >= 5 (5-fold probes over pairs), got {n_pairs!r}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {list(METHODS)}")
    planted_models = planted.NAMES if planted_models is None else tuple(planted_models)
    t0, c0 = time.time(), time.process_time()
    subjects = [planted_subject(n, n_pairs) for n in planted_models]
    subjects += [organism_subject(n, n_pairs, domains, seed0, model=(models or {}).get(n)) for n in organisms]
    results = [
        validate_subject(
            s,
            sanity_pairs=sanity_pairs,
            attribution_pairs=attribution_pairs,
            n_controls=n_controls,
            methods=methods,
            progress=progress,
        )
        for s in subjects
    ]
    return {
        "settings": {
            "pairs_per_domain": n_pairs,
            "seeds": [seed0, seed0 + n_pairs - 1],
            "sanity_pairs": sanity_pairs,
            "attribution_pairs": attribution_pairs,
            "n_controls": n_controls,
            "methods": list(methods),
            "probe_goal": PROBE_GOAL,
            "attribution_goal": ATTRIBUTION_GOAL,
        },
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
        # subject -> its headline recovery variant (logit_diff where the model has a logit per outcome)
        "headline": {res["subject"]: res.get("headline") for res in results},
        "subjects": results,
    }


# ------------------------------------------------------------------------------------------ the table
def _pct(stat: dict, key: str = "mean", i: int | None = None) -> str:
    m = stat[key] if i is None else stat[key][i]
    lo, hi = stat["ci95"] if i is None else (stat["ci95"][0][i], stat["ci95"][1][i])
    return f"{m:.0%} [{lo:.0%}, {hi:.0%}]" if lo is not None else f"{m:.0%}"


def _num(stat: dict, fmt: str = ".2f", i: int | None = None) -> str:
    m = stat["mean"] if i is None else stat["mean"][i]
    lo, hi = stat["ci95"] if i is None else (stat["ci95"][0][i], stat["ci95"][1][i])
    return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else f"{m:{fmt}}"


def findings(result: dict, settings: dict) -> list[dict]:
    """One row per (method, domain) of a subject: what the method found, what is known, and a verdict
    (found / missed / correct negative / false positive / n/a), every number from ``result``."""
    rows = []
    gt = result["outcome_is_label"]
    truth = result["truth"]
    planted = bool(truth)
    for domain, r in result["domains"].items():

        def row(method, found, expected, verdict):
            rows.append(
                {
                    "model": result["subject"],
                    "domain": domain,
                    "method": method,
                    "found": found,
                    "expected": expected,
                    "verdict": verdict,
                }
            )

        if "probes" in r:
            pr = r["probes"]
            last = pr["cls"][-1]
            acc = {"mean": last["accuracy"], "ci95": last["accuracy_ci95"]}
            found = (
                f"CLS probe at {pr['layers'][-1]}: {_pct(acc)} (control {last['control_accuracy']:.0%}); "
                f"best layer {pr['best_layer']}"
            )
            if planted:  # resid_pre k is before layer k: the last planted head's layer, then the one after it
                k = truth["last_head_layer"]
                found += f"; before it (resid_pre {k}): {pr['cls'][k]['accuracy']:.0%}, after (resid_pre {k + 1}): {pr['cls'][k + 1]['accuracy']:.0%}"
            decodes = last["accuracy_ci95"][0] >= PROBE_GOAL if gt else last["accuracy_ci95"][1] >= 0.75
            expected = f"decodes (goal >= {PROBE_GOAL:.0%})" if gt else "chance (outcome never a label)"
            verdict = (
                ("found" if decodes else "missed") if gt else ("false positive" if decodes else "correct negative")
            )
            row("outcome probe (held-out by pair)", found, expected, verdict)
        if "recovery" in r:
            rec = r["recovery"]
            head_v = rec.get("headline", ex.HEADLINE_RECOVERY)
            parts = [
                f"{v}{' (headline)' if v == head_v else ''}: top {e['top']} {_pct({'mean': e['top_mean'], 'ci95': e['top_ci95']})}"
                for v, e in rec["variants"].items()
            ]
            if (
                planted
            ):  # a composition is found when its MLP ranks first; a single head, when its layer's attention does
                want = [f"L{l} mlp" for l in truth.get("mlps", [])] or [
                    f"L{h[1]} attn" for h in (c.split("H")[0].split("L") for c in truth["heads"])
                ]
                hit = [v for v, e in rec["variants"].items() if e["top"] in want]
                expected = (
                    f"top component by the headline ({head_v}): "
                    + " or ".join(want)
                    + (" (the composing MLP)" if truth.get("mlps") else " (the planted head's layer)")
                )
                by_headline = head_v in rec["variants"] and rec["variants"][head_v]["top"] in want
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
                if planted and truth.get("mlps"):  # an AND: no head alone restores the decision
                    expected = "every head ~ 0 (one gathered variable alone does not fire the composing MLP)"
                    verdict = "found" if hd["max_abs_mean"] < 0.01 else "missed"
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
            if "differential_dla" in mp:
                d = mp["differential_dla"]
                found = (
                    f"share on region {_pct(d['share'])} (base rate {base:.0%} of all tokens), enrichment {_num(d['enrichment'])}"
                    + _differing_found(mp, d.get("enrichment_differing"))
                    + f"; {_pct(d['share_after_divergence'])} of its mass after the divergence"
                )
                if mp["dla_zero_pairs"]:
                    found += f"; zero in {mp['dla_zero_pairs']} pairs"
                enriched = d["enrichment"]["ci95"][0] is not None and d["enrichment"]["ci95"][0] > 1
                verdict = ("found" if enriched else "missed") if gt else ("enriched" if enriched else "not enriched")
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
            found = (
                f"CLS attention enrichment, best layer {a['best_layer']}: {_num(a['best_enrichment'])} (share "
                f"{a['share_per_layer']['mean'][a['best_layer']]:.0%}, base rate {base:.0%} of all tokens)"
                + _differing_found(mp, a.get("best_enrichment_differing"))
            )
            enriched = a["best_enrichment"]["ci95"][0] is not None and a["best_enrichment"]["ci95"][0] > 1
            verdict = (
                ("found" if enriched else "missed")
                if gt
                else ("enriched (attention without outcome use)" if enriched else "not enriched")
            )
            row(
                "attention enrichment on the outcome region",
                found,
                "enrichment > 1 in some layer" if gt else "-",
                verdict,
            )
        if "ablation" in r:
            ab = r["ablation"]
            key = "to_twin" if "to_twin" in ab else "changed"
            what = "flips to the twin outcome" if key == "to_twin" else "prediction changes"
            found = "; ".join(
                f"{clip} clip {what}: region {_pct(ab[key][clip])} vs equal random boxes {_pct(ab['controls_' + key][clip])}"
                for clip in ("positive", "negative")
            )
            # With outcome labels the question is whether the outcome flips (the numbers shown), not
            # whether the class changes at all; without them, whether the action class is kept.
            gap = ab.get("to_twin_minus_controls", ab["changed_minus_controls"])
            flips = gap["ci95"][0] is not None and gap["ci95"][0] > 0
            expected = "flips more than random boxes" if gt else "action class kept"
            verdict = ("found" if flips else "missed") if gt else ("class changes" if flips else "correct negative")
            row(f"outcome-region ablation ({ab['n_controls']} boxes per pair)", found, expected, verdict)
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


def validation_markdown(data: dict) -> str:
    s = data["settings"]
    lines = [
        "| model | domain | method | what it found (mean [95 % CI over pairs]) | known / goal | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for res in data["subjects"]:
        for f in findings(res, s):
            cells = [f[k].replace("|", "\\|") for k in ("model", "domain", "method", "found", "expected", "verdict")]
            lines.append("| " + " | ".join(cells) + " |")
    head = (
        f"Generated by `hooked-vivit validate` ({s['pairs_per_domain']} held-out pairs per domain, seeds {s['seeds'][0]:,}..{s['seeds'][1]:,}; "
        f"residual sanity on {s['sanity_pairs']}, attribution on {s['attribution_pairs']} pairs per domain; "
        f"{data['seconds'] / 60:.1f} min wall, {data['cpu_seconds'] / 60:.1f} min CPU on {data['torch_threads']} threads)."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def write_validation(out: Any, data: dict, *, overwrite: bool = False) -> Path:
    from hooked_vivit.analysis.report import to_jsonable
    from hooked_vivit.output_dir import OutputDir, output_directory

    with output_directory(out, overwrite=overwrite, writer="hooked-vivit validate") as tmp:
        (tmp / "validation.json").write_text(json.dumps(to_jsonable(data), indent=1) + "\n")
        (tmp / "validation.md").write_text("# Validation against known mechanisms\n\n" + validation_markdown(data))
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
