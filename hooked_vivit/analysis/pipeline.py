"""``hooked-vivit analyze`` and ``hooked-vivit study``: the whole analysis of a pair, and of many.

analyze: (a) activation deltas, (b) component patching recovery (every variant side by side),
(c) token-level direct logit attribution and its differential (positive minus negative) version,
(d) CLS attention with object enrichment, (e) region ablation of the class logit and of the outcome
signal against random boxes, (f) outcome probes on rendered pairs of the same domain. A scope box
heads the report; with the shipped organism, the pair is placed in the distribution of its
precomputed study (study_summary.json). Writes report.html, results.json and the PNG figures into
a directory that appears whole or not at all. Every caption is generated from results.json values
(results["captions"] records the path of each number).

study: (a), (b), the outcome-targeted methods and (f) over many rendered pairs per domain, with
bootstrap 95 % intervals over pairs. Default seeds lie in the reserved analysis range
(hooked_vivit.organism.data.ANALYSIS_SEEDS), disjoint from every seed the organism has seen.
"""

from __future__ import annotations

import html
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hooked_vivit import synthetic
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import report as rp
from hooked_vivit.analysis.cost import ForwardCounter
from hooked_vivit.causal import statistics
from hooked_vivit.causal.ablation import token_pixel_mask
from hooked_vivit.causal.probes import bootstrap_ci
from hooked_vivit.loading import weights_fingerprint
from hooked_vivit.organism.data import ANALYSIS_SEEDS, recorded_seed_ranges, seed_use
from hooked_vivit.output_dir import OutputDir, output_directory
from hooked_vivit.video import load_video, model_view, preprocess

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

DEFAULT_MODEL = "actions"


def load_model(name_or_path: str | None, device: str = "cpu"):
    """An organism's name (organism.model_source), any checkpoint directory or hub id; the class follows
    config.json's model_type (HookedViViT, HookedVideoMAE, ...)."""
    from hooked_vivit import organism
    from hooked_vivit.model import HookedVideoTransformer

    return HookedVideoTransformer.from_pretrained(organism.model_source(name_or_path), device=device)


@dataclass
class Pair:
    positive: np.ndarray  # uint8 frames [T, H, W, 3]
    negative: np.ndarray
    names: tuple[str, str]
    domain: str | None = None
    seed: int | None = None
    masks: dict | None = None
    divergence_frame: int | None = None
    native_sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # (width, height) of each file read


def size_mismatch_warning(names: Sequence[str], sizes: Sequence[Sequence[int]]) -> str | None:
    """The one rule analyze and study share for a pair whose files differ in size (width, height): it is
    analysed (the model sees both preprocessed to its own size), with this warning; None when they agree."""
    (w0, h0), (w1, h1) = sizes
    if (w0, h0) == (w1, h1):
        return None
    return (
        f"the clips differ in native size ({names[0]} is {w0}x{h0}, {names[1]} is {w1}x{h1} pixels, width x height): "
        "they likely come from different sources, so this is not a minimal pair, and differences between them need "
        "not be about the outcome; both were resized and centre-cropped to the model's input size"
    )


def check_seed(seed: int) -> str | None:
    """Warn (and return what it was used for) when a seed lies in a range the shipped organism was
    trained, validated, tested or probed on (its seed_ranges.json)."""
    try:
        use = seed_use(int(seed), recorded_seed_ranges()["used"])
    except FileNotFoundError:
        return None
    if use:
        warnings.warn(
            f"seed {seed} is one the shipped organism saw ({use}): the clips are not held out; analysis seeds start at "
            f"{ANALYSIS_SEEDS['pair']:,} (hooked_vivit.organism.data.ANALYSIS_RANGE)",
            stacklevel=2,
        )
    return use


def rendered_pair(model: HookedVideoTransformer, domain: str, seed: int = ANALYSIS_SEEDS["pair"]) -> Pair:
    check_seed(seed)
    cfg = model.cfg
    pos, neg, meta = synthetic.render_pair(domain, seed, num_frames=cfg.num_frames, size=min(cfg.image_size))
    return Pair(
        pos,
        neg,
        (meta["outcomes"]["positive"], meta["outcomes"]["negative"]),
        meta["domain"],
        seed,
        meta["masks"],
        meta["divergence_frame"],
    )


def pair_outcome_classes(
    model: HookedVideoTransformer,
    domain: str | None,
    outcomes: Sequence[str] | None,
    given: Sequence[int | str] | None = None,
) -> tuple[int, int] | None:
    """The (positive, negative) outcome classes whose logits the logit-difference recovery reads: ``given``
    (--outcome-classes, indices or label names), else, for a rendered pair, the model's labels
    "{domain} {outcome}" of its two outcomes where the model has both (the outcomes organism), else None."""
    if given is not None:
        return ex.outcome_class_pair(model, given)
    if domain is None or not outcomes:
        return None
    key = next((k for k, v in synthetic.DOMAINS.items() if domain in (k, v)), None)
    names = [f"{key} {o}" for o in outcomes]
    label2id = model.cfg.label2id or {}
    if key is None or not all(n in label2id for n in names):
        return None
    return ex.outcome_class_pair(model, names)


def clip_sizes_html(pair: dict) -> str:
    """The clips' native sizes, the size the model saw them at, and the size warning, from results["pair"]."""
    if not pair.get("native_sizes"):
        return ""
    (w0, h0), (w1, h1) = pair["native_sizes"]
    w, h = pair["model_view"]
    names = [html.escape(n) for n in pair["names"]]
    text = (
        f" Native sizes: {names[0]} {w0}x{h0}, {names[1]} {w1}x{h1} pixels; the model sees both, and the frames figure "
        f"shows them, resized and centre-cropped to {w}x{h}."
    )
    if pair.get("size_warning"):
        text += f"</p><p style='color:#a00'><b>Not a minimal pair:</b> {html.escape(pair['size_warning'])}."
    return text


def video_pair(model: HookedVideoTransformer, clean: Path, corrupted: Path) -> Pair:
    """Both clips read and checked before any analysis, kept as the model sees them (resized and
    centre-cropped to its input size), with their native sizes. Clips of different sizes are analysed
    with a warning (``size_mismatch_warning``): they are not a minimal pair."""
    n = model.cfg.num_frames
    pos, neg = load_video(clean, n), load_video(corrupted, n)
    names = (Path(clean).stem, Path(corrupted).stem)
    if names[0] == names[1]:  # a/clip.mp4 vs b/clip.mp4: name them by path
        names = (str(clean), str(corrupted))
    sizes = ((pos.shape[2], pos.shape[1]), (neg.shape[2], neg.shape[1]))
    warning = size_mismatch_warning(names, sizes)
    if warning:
        warnings.warn(warning, stacklevel=2)
    return Pair(model_view(pos, config=model.cfg), model_view(neg, config=model.cfg), names, native_sizes=sizes)


def model_pixels(model: HookedVideoTransformer, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames -> pixel values [1, T, 3, H, W] sized by the model's config, on its device."""
    return preprocess(frames, config=model.cfg).to(model.W_E.device)


def rendered_probe_pairs(
    model: HookedVideoTransformer, domain: str, n: int, seed0: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n rendered (positive, negative) pixel pairs of a domain, seeds seed0.., for the probes."""
    cfg = model.cfg
    out = []
    for i in range(n):
        pos, neg, _ = synthetic.render_pair(domain, seed0 + i, num_frames=cfg.num_frames, size=min(cfg.image_size))
        out.append((model_pixels(model, pos), model_pixels(model, neg)))
    return out


def recovery_summary(rec: dict) -> dict:
    """Min / max per variant and component, and how many components have a norm ratio above 1."""
    comps = list(rec["variants"][rec.get("headline", ex.HEADLINE_RECOVERY)])  # attn, mlp (and temporal_attn)
    out: dict = {"components": len(comps) * len(rec["layers"]), "threshold": 1.0}
    for name, v in rec["variants"].items():
        out[name] = {
            comp: {"min": min(v[comp]), "max": max(v[comp]), "argmax": int(np.argmax(v[comp]))} for comp in comps
        }
    for where in ("cls", "tokens"):
        v = rec["variants"][f"norm_ratio_{where}"]
        above = [(c, l) for c in comps for l, x in enumerate(v[c]) if x > 1]
        # A ratio above 1 while the projection stays below 1: the patch moved the activation, but not (only) toward the clean run.
        proj = rec["variants"]["cls_projection" if where == "cls" else "token_projection"]
        out[f"norm_ratio_{where}_above_1"] = len(above)
        out[f"norm_ratio_{where}_above_1_projection_below_1"] = sum(proj[c][l] < 1 for c, l in above)
    return out


def load_study_summary(model: HookedVideoTransformer) -> dict | None:
    """The shipped organism's precomputed study (hooked_vivit/organism/checkpoint/study_summary.json)
    when ``model`` is that organism (same name and weight fingerprint), else None."""
    from hooked_vivit import organism

    if model.cfg.model_name != "hooked-vivit-organism":
        return None
    try:
        path = organism.checkpoint_path() / STUDY_SUMMARY
    except FileNotFoundError:
        return None
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    if summary.get("model") != model.cfg.model_name or summary.get("weights_fingerprint") != weights_fingerprint(model):
        return None
    return summary


def place_in_distribution(rec: dict, summary: dict, domain_key: str) -> dict | None:
    """Percentile of each of this pair's recovery values among the study's pairs of the same domain."""
    st = summary.get("domains", {}).get(domain_key)
    if not st:
        return None
    out: dict = {
        "domain": domain_key,
        "pairs": st["pairs"],
        "seeds": st["seeds"],
        "range_percentiles": [5, 95],
        "variants": {},
    }
    for name, v in rec["variants"].items():
        if name not in st["recovery_per_pair"]:
            continue
        out["variants"][name] = {}
        for comp in ("attn", "mlp"):
            dist = np.array(st["recovery_per_pair"][name][comp])  # [pairs, layers]
            out["variants"][name][comp] = [
                {
                    "value": v[comp][l],
                    "percentile": float((dist[:, l] < v[comp][l]).mean() * 100),
                    "median": float(np.median(dist[:, l])),
                    "p5": float(np.percentile(dist[:, l], 5)),
                    "p95": float(np.percentile(dist[:, l], 95)),
                }
                for l in range(dist.shape[1])
            ]
    h = rec.get("headline", ex.HEADLINE_RECOVERY)
    out["headline"] = h if h in out["variants"] else ex.HEADLINE_RECOVERY  # a study without it: the representation one
    head = out["variants"][out["headline"]]
    comp, layer = max(
        ((c, l) for c in ("attn", "mlp") for l in range(len(head[c]))), key=lambda cl: abs(head[cl[0]][cl[1]]["value"])
    )
    out["largest"] = {"component": comp, "layer": layer, **head[comp][layer]}
    return out


def analyze_pair(
    model: HookedVideoTransformer,
    pair: Pair,
    *,
    probe_pairs: int = 100,
    probe_seed: int = ANALYSIS_SEEDS["probe"],
    n_controls: int = 199,
    stop_after: int | None = 10,
    progress: bool = True,
    outcome_classes: Sequence[int | str] | None = None,
) -> dict:
    """Run experiments (a)-(f) and the outcome-targeted ones on one pair; returns every number.
    Region tests: up to ``n_controls`` matched control boxes per region, evaluated sequentially until
    ``stop_after`` are at least as extreme (Besag-Clifford; None: all of them), so that after Holm over
    the report's tests a p-value can still reach 5 % (1 / (n_controls + 1) times the family's size).
    ``outcome_classes`` (positive, negative; indices or label names): the logits the logit-difference
    recovery reads, the headline of (b); by default the model's labels of a rendered pair's outcomes
    where it has them (the outcomes organism), else none (the representation headline)."""
    from tqdm.auto import tqdm

    if isinstance(probe_pairs, bool) or not isinstance(probe_pairs, int) or (probe_pairs != 0 and probe_pairs < 3):
        raise ValueError(
            f"--probe-pairs (probe_pairs) must be 0 (skip the probes) or an integer >= 3 (held out by pair), got {probe_pairs!r}"
        )
    steps = tqdm(total=7, desc="analyze", disable=not progress)
    pos, neg = model_pixels(model, pair.positive), model_pixels(model, pair.negative)
    cfg = model.cfg
    t0 = time.time()
    # One clean and one corrupted run, caching only what (a)-(e) read, shared by every experiment;
    # every model forward is counted (hooked_vivit.analysis.cost) and recorded per experiment.
    with ForwardCounter(model) as cost:
        with cost.section("shared clean and corrupted runs"):
            runs = ex.pair_runs(model, pos, neg)
        logits = torch.cat([runs.clean.logits, runs.corrupted.logits])
        c = int(logits[0].argmax())
        results: dict = {
            "model": cfg.model_name,
            "scope": rp.scope(model),
            "ci_level": 0.95,
            "pair": {
                "names": list(pair.names),
                "domain": pair.domain,
                "seed": pair.seed,
                "divergence_frame": pair.divergence_frame,
                "divergence_slot": None
                if pair.divergence_frame is None
                else cfg.grid.frame_slot_of_frame(pair.divergence_frame),
                "native_sizes": None if pair.native_sizes is None else [list(wh) for wh in pair.native_sizes],
                "model_view": [pair.positive.shape[2], pair.positive.shape[1]],
                "size_warning": None
                if pair.native_sizes is None
                else size_mismatch_warning(pair.names, pair.native_sizes),
            },
            # Keyed by role: two clips may share a name.
            "prediction": {
                role: {
                    "clip": name,
                    "class": int(l.argmax()),
                    "name": cfg.id2label[int(l.argmax())],
                    "logit": float(l.max()),
                }
                for role, name, l in zip(("positive", "negative"), pair.names, logits)
            },
        }
        with cost.section("deltas"):
            results["deltas"] = ex.activation_deltas(model, pos, neg, runs=runs).to_json()
            steps.update()  # noqa: E702
        with cost.section("recovery"):
            classes = pair_outcome_classes(model, pair.domain, pair.names, outcome_classes)
            results["recovery"] = ex.component_recovery(model, pos, neg, runs=runs, outcome_classes=classes)
        results["recovery"]["summary"] = recovery_summary(results["recovery"])
        steps.update()  # noqa: E702
        with cost.section("dla"):
            dla = ex.token_dla(model, pos, c, run=runs.clean)
        results["dla"] = {k: v for k, v in dla.items() if k != "terms"}
        scores = dla["terms"].sum((0, 1))
        top = (scores[cfg.grid.n_prefix :].abs().topk(min(8, cfg.grid.n_patches)).indices + cfg.grid.n_prefix).tolist()
        div_slot = results["pair"]["divergence_slot"]
        results["dla"]["top_tokens"] = top
        results["dla"]["top_tokens_n"] = len(top)
        results["dla"]["top_tokens_before_divergence"] = (
            None if div_slot is None else sum(cfg.grid.coords(t)[0] < div_slot for t in top)
        )
        steps.update()
        masks = pair.masks["positive"] if pair.masks else None
        with cost.section("cls_attention"):
            results["cls_attention"] = ex.cls_attention(
                model, pos, masks=masks, run=runs.clean, differing=ex.differing_tokens(model, pos, neg)
            )
            steps.update()  # noqa: E702
        with cost.section("region_ablation"):
            ablated = ex.region_ablation(
                model, pos, dla, before=runs.clean.logits, negative=neg, n_controls=n_controls, stop_after=stop_after
            )
        results["region_ablation"] = {
            **ablated.to_json(),
            "n_tokens": len(ablated.tokens),
            "last_frame": ablated.box.t1 - 1,
            "last_row": ablated.box.y1 - 1,
            "last_col": ablated.box.x1 - 1,
        }
        steps.update()
        with cost.section("outcome"):
            outcome = ex.outcome_analysis(
                model,
                pos,
                neg,
                c,
                pair_masks=pair.masks,
                divergence_frame=pair.divergence_frame,
                positive_dla=dla,
                n_controls=n_controls,
                runs=runs,
                stop_after=stop_after,
            )
        results["outcome"] = outcome.to_json()
        results["outcome"]["differential_dla"]["share_after_divergence"] = share_after_divergence(
            outcome.differential_dla, div_slot or 0
        )
        steps.update()
        del runs  # the probes need the memory more
        if pair.domain is not None and pair.domain in synthetic.OUTCOMES and probe_pairs >= 5:
            domain_key = next(k for k, v in synthetic.DOMAINS.items() if v == pair.domain)
            rand = ex.random_weights_model(model)  # the probes' random-weights control: its forwards are counted too
            with cost.section("probes"), cost.also(rand):
                results["probes"] = ex.layer_probes(
                    model, rendered_probe_pairs(model, domain_key, probe_pairs, probe_seed), random_model=rand
                ).to_json()
            del rand
            results["probes"]["seeds"] = [probe_seed, probe_seed + probe_pairs - 1]
            results["probes"]["domain"] = domain_key
            results["probes"]["best"] = best_probe(results["probes"])
        steps.update()
    results["multiple_comparisons"] = adjust_pvalues(results)
    results["cost"] = cost.summary(**analysis_cost_note(results))
    summary = load_study_summary(model)
    if summary and pair.domain is not None:
        domain_key = next((k for k, v in synthetic.DOMAINS.items() if v == pair.domain), None)
        placed = place_in_distribution(results["recovery"], summary, domain_key) if domain_key else None
        if placed:
            results["in_distribution"] = placed
    steps.close()
    results["seconds"] = round(time.time() - t0, 2)
    return results


def share_after_divergence(diff: ex.DifferentialDLA, divergence_slot: int) -> float:
    """The share of the differential DLA's |grid| (summed per frame slot) in the slots from the divergence on."""
    slot_abs = np.array(diff.per_slot_abs)
    return float(slot_abs[divergence_slot:].sum() / max(slot_abs.sum(), 1e-30))


def adjust_pvalues(results: dict, alpha: float = 0.05) -> dict:
    """Holm's adjustment (statistics.holm) across every Monte-Carlo p-value of a report: each dict of
    ``results`` holding "control_p" gets "control_p_holm" beside it (None where the test could not
    run: no matched control). Returns results.json's "multiple_comparisons": the method, the family's
    size and members (paths into results.json), and the smallest p-value the controls allow."""
    found: list[tuple[str, dict]] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if "control_p" in node and not isinstance(node["control_p"], (dict, list)):
                found.append((path, node))
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")

    walk(results, "")
    adjusted = statistics.holm([d["control_p"] for _, d in found])
    for (_, d), a in zip(found, adjusted):
        d["control_p_holm"] = a
    tested = [p for (p, d) in found if d["control_p"] is not None]
    n_controls = results.get("outcome", {}).get("ablation", {}).get("n_controls")
    return {
        "method": "holm",
        "alpha": alpha,
        "family": len(tested),
        "tests": tested,
        "untested": [p for (p, d) in found if d["control_p"] is None],
        # with n controls a p-value is at least 1/(n + 1), so a Holm-adjusted one at least family/(n + 1)
        "min_p": None if not n_controls else 1 / (n_controls + 1),
        "min_p_holm": None if not n_controls or not tested else min(1.0, len(tested) / (n_controls + 1)),
        "note": (
            "p-values are Monte-Carlo, (k + 1)/(n + 1) over the matched control boxes; Holm's step-down "
            "adjustment controls the family-wise error over every test of this report (control_p_holm beside control_p)"
        ),
    }


def analysis_cost_note(results: dict) -> dict:
    """What the dominant costs scale with: the patched runs of (b) and the ablated clips of the outcome ablation."""
    abl = results["outcome"]["ablation"]
    out = {
        # the boxes evaluated (a sequential test stops early: "used"), else every matched one
        "outcome_ablated_clips": sum(
            2 * (1 + (r["controls"] or {}).get("used", (r["controls"] or {}).get("found", 0)))
            for r in abl["regions"].values()
        )
    }
    if "probes" in results:
        out["probe_pairs"] = results["probes"]["pairs"]
    return out


def best_probe(probes: dict) -> dict:
    """The layer and pooling with the highest paired accuracy."""
    kind, i = max(
        ((k, i) for k in ("cls", "mean") if k in probes for i in range(len(probes[k]))),
        key=lambda ki: probes[ki[0]][ki[1]]["paired_accuracy"],
    )
    return {"pooling": kind, "index": i, "layer": probes["layers"][i]}


def nested_probe_phrase(cap: rp.Caption, path: str, pr: dict) -> str:
    """The probes' layer x pooling choice cross-validated (nested), its control task, the random-weights
    model and the pixel ceiling: every number from results.json at ``path``, every verdict from
    pixel_ceiling's computed comparisons ("" for results without a nested probe)."""
    if "nested" not in pr:
        return ""
    n, c, pc = f"{path}.nested", f"{path}.pixel_ceiling", pr["pixel_ceiling"]
    text = (
        f" The best configuration is chosen on these same pairs, so its own accuracy is optimistic. With the choice inside the "
        f"cross-validation (nested: each of {cap.v(n + '.folds')} outer folds x {cap.v(n + '.repeats')} repeats chooses by an inner "
        f"grouped cross-validation of at most {cap.v(n + '.inner_folds')} folds on its own training pairs) the paired accuracy is "
        f"{cap.v(n + '.paired_accuracy', '.0%')} [{cap.v(n + '.paired_accuracy_ci95.0', '.0%')}, {cap.v(n + '.paired_accuracy_ci95.1', '.0%')}], "
        f"accuracy {cap.v(n + '.accuracy', '.0%')} [{cap.v(n + '.accuracy_ci95.0', '.0%')}, {cap.v(n + '.accuracy_ci95.1', '.0%')}]; chosen most "
        f"often: {cap.v(n + '.chosen_counts.0.configuration')} (in {cap.v(n + '.chosen_counts.0.folds')} outer folds)."
    )
    if pr["nested"].get("control_accuracy") is not None:
        text += (
            f" Control task (labels swapped within a random half of the pairs, the choice included): accuracy "
            f"{cap.v(n + '.control_accuracy', '.0%')}, selectivity {cap.v(n + '.selectivity', '+.0%')} (Hewitt & Liang)."
        )
    if "random_weights" in pr:
        r = f"{path}.random_weights"
        text += (
            f" The same nested probe on a random-weights model (same architecture and config, weights re-initialised with seed "
            f"{cap.v(r + '.seed')}): paired accuracy {cap.v(r + '.paired_accuracy', '.0%')} [{cap.v(r + '.paired_accuracy_ci95.0', '.0%')}, "
            f"{cap.v(r + '.paired_accuracy_ci95.1', '.0%')}]; the trained model's interval "
            + ("lies above it." if pc["above_random_weights"] else "does not lie above it.")
        )
    if pc["fingerprint"]:
        text += (
            f" Decodable from pixels alone: a fingerprint. The {pc['baseline']} baseline, a probe of raw pixels without the model, "
            f"reaches {cap.v(c + '.pixels', '.0%')} paired accuracy (interval above chance, reaching the nested probe's), so a decodable "
            "outcome here is no evidence about the model."
        )
    elif not pc["pixels_above_chance"]:
        text += f" The better pixel baseline ({pc['baseline']}) does not decode the outcome above chance: its interval includes chance."
    else:
        text += (
            f" The pixel baselines decode the outcome too, but the better ({pc['baseline']}, {cap.v(c + '.pixels', '.0%')}) falls short of "
            "the nested probe's interval."
        )
    return text


def _attainable_note(cap: rp.Caption, mc: dict | None) -> str:
    """Where the control count cannot reach the threshold after Holm: the smallest attainable adjusted p, said
    with the family and the threshold (a computed comparison, multiple_comparisons.min_p_holm > alpha)."""
    if not mc or mc.get("min_p_holm") is None or mc["min_p_holm"] <= mc["alpha"]:
        return ""
    return (
        f"With {cap.v('outcome.ablation.n_controls')} boxes per region a p-value is at least "
        f"{cap.v('multiple_comparisons.min_p', '.3f')}, and after Holm over {cap.v('multiple_comparisons.family')} tests at least "
        f"{cap.v('multiple_comparisons.min_p_holm', '.2f')}, above {cap.v('multiple_comparisons.alpha', '.0%')}: no test here can reach "
        "significance at that level with this many controls. "
    )


def _descriptive_note() -> str:
    return (
        "Descriptive: the top-attribution tokens are chosen on this pair and tested on the same pair, and one pair "
        "is one unit of inference, so no result here is claimed significant."
    )


def _differing_phrase(cap: rp.Caption, results: dict, base: str) -> str:
    """ ", against the differing tokens: base rate x, enrichment y" for an enrichment entry at ``base``."""
    e = rp.lookup(results, base)
    if e.get("base_rate_differing") is None:
        return "; no differing token to measure against"
    text = f"; against the differing tokens: base rate {cap.v(base + '.base_rate_differing', '.1%')}"
    if e.get("enrichment_differing") is not None:
        text += f", enrichment {cap.v(base + '.enrichment_differing', '.2f')}"
    return text


def _controls_phrase(cap: rp.Caption, results: dict, base: str, controls_path: str | None, fmt: str = ".3f") -> str:
    """ " (matched boxes m ± sd, p = .., Holm p = ..)" for a change with control statistics at ``base``,
    first saying how few boxes matched where fewer than requested did (the MatchedBoxes at ``controls_path``)."""
    change = rp.lookup(results, base)
    text = ""
    controls = rp.lookup(results, controls_path) if controls_path is not None else None
    if controls is not None and controls["found"] == 0:  # no other place differs as much: said, not replaced
        return (
            f" (no box of the region's size among {cap.v(controls_path + '.candidates')} candidates holds a matching share "
            "of the pixel difference: untested)"
        )
    if controls is not None and not controls["enough"]:
        text = (
            f"; only {cap.v(controls_path + '.found')} of {cap.v(controls_path + '.requested')} matched boxes found "
            f"among {cap.v(controls_path + '.candidates')} candidates"
        )
    if change.get("control_p") is None:
        return text + " (untested)"
    sd = f" ± {cap.v(base + '.control_std', fmt)}" if change.get("control_std") is not None else ""
    holm = f", Holm p = {cap.v(base + '.control_p_holm', '.3f')}" if change.get("control_p_holm") is not None else ""
    seq = ""
    if change.get("sequential"):  # Besag-Clifford: how many boxes were evaluated before the answer was clear
        seq = (
            f" over {cap.v(base + '.sequential.used')} boxes (sequential: stops at {cap.v(base + '.sequential.h')} "
            f"at least as large, up to {cap.v(base + '.sequential.n_max')})"
        )
    return f"{text} (matched boxes {cap.v(base + '.control_mean', '+' + fmt)}{sd}{seq}, p = {cap.v(base + '.control_p', '.3f')}{holm})"


def _pair_phrase(cap: rp.Caption, results: dict) -> str:
    p = results["pair"]
    if p["domain"]:
        return f"the rendered {p['domain']} pair of seed {cap.v('pair.seed')} (one pair)"
    return f"the pair {p['names'][0]} vs {p['names'][1]} (one pair)"


def analysis_captions(results: dict) -> dict[str, str]:
    """Every sentence under a figure or table, generated from the values it describes."""
    cap = rp.Caption(results)
    results["captions"] = cap.captions = []
    m = results["model"]
    out = {}
    # Where the classifier reads: "CLS" (ViViT), or the "token mean" / "first token" of a model without CLS (VideoMAE).
    ro = results["deltas"].get("readout", "CLS")
    at_ro, ro_attn = ("CLS", "CLS attention") if ro == "CLS" else (f"the {ro}", f"{ro} attention")
    # V-JEPA 2: the classifier reads its attentive pooler's output; per layer the token mean stands in.
    pooler = "readout_vector" in results["deltas"]
    if pooler:
        at_ro, ro_attn = "the pooler output", "pooler query attention"
    pos_name, neg_name = results["pair"]["names"]
    out["frames"] = cap.record(
        "frames",
        f"Frames of the positive ({pos_name}, top) and negative ({neg_name}, bottom) clip of {_pair_phrase(cap, results)}"
        + (
            f"; they are identical before frame {cap.v('pair.divergence_frame')}."
            if results["pair"]["divergence_frame"] is not None
            else "."
        ),
    )
    out["deltas"] = cap.record(
        "deltas",
        (
            (
                f"Euclidean norm of the positive-minus-negative activation of {m} on {_pair_phrase(cap, results)}, per layer, at the CLS token (left) "
                "and averaged over tokens (right). At CLS it is zero before the first attention block by construction (only patch tokens see pixels); "
                if ro == "CLS"
                else f"Euclidean norm of the positive-minus-negative activation of {m} on {_pair_phrase(cap, results)}, per layer, at the token "
                "mean (left; the classifier reads the attentive pooler's output, computed from every token of the last layer, so no layer "
                "has a readout position of its own) and as the mean of per-token norms (right); the pooled vector the classifier reads differs "
                f"by {cap.v('deltas.readout_vector.norm', '.3f')}; at the token mean "
                if pooler
                else f"Euclidean norm of the positive-minus-negative activation of {m} on {_pair_phrase(cap, results)}, per layer, at the {ro}, which the "
                "classifier reads (left), and as the mean of per-token norms (right); at the readout "
            )
            + (
                f"after layer {cap.v('deltas.layers.0')} it is {cap.v('deltas.cls.resid_post.0', '.3f')} and after the last layer (layer "
                f"{cap.v('deltas.layers.-1')}) {cap.v('deltas.cls.resid_post.-1', '.3f')}; averaged over tokens the last layer's difference is "
                f"{cap.v('deltas.tokens.resid_post.-1', '.3f')}."
            )
        ),
    )
    h = results["recovery"]["headline"]
    out["recovery"] = cap.record(
        "recovery",
        (
            f"Denoising one component at a time in {m} on {_pair_phrase(cap, results)}: the attention or MLP block output of one layer, all tokens, "
            f"copied from the positive into the negative run, measured on the last layer's resid_post (layer {cap.v('recovery.layers.-1')})"
            + (
                f" and, as the normalised logit-difference recovery (logit_diff), on the logit of "
                f"'{cap.v('recovery.outcome_classes.names.0')}' minus that of "
                f"'{cap.v('recovery.outcome_classes.names.1')}' ({cap.v('recovery.outcome_classes.logit_diff_clean', '.3f')} "
                f"in the positive run, {cap.v('recovery.outcome_classes.logit_diff_corrupted', '.3f')} in the negative)"
                if h == ex.LOGIT_DIFF_RECOVERY
                else ""
            )
            + (
                "; the variants at the readout are measured on the attentive pooler's output, recomputed from the patched last layer. "
                if pooler
                else ". "
            )
            + (
                "TimeSformer's temporal attention output is its own component (temporal_attn). "
                if "temporal_attn" in results["recovery"]["variants"][h]
                else ""
            )
            + f"The figure shows the headline variant, {h}: attention blocks {cap.v(f'recovery.summary.{h}.attn.min', '.0%')} to "
            f"{cap.v(f'recovery.summary.{h}.attn.max', '.0%')}, MLP blocks {cap.v(f'recovery.summary.{h}.mlp.min', '.0%')} to "
            f"{cap.v(f'recovery.summary.{h}.mlp.max', '.0%')}. The table gives every variant side by side. "
            f"{cap.v('recovery.summary.norm_ratio_cls_above_1')} of the {cap.v('recovery.summary.components')} components have a norm ratio at {at_ro} "
            f"above {cap.v('recovery.summary.threshold', '.0%')} ({cap.v('recovery.summary.norm_ratio_tokens_above_1')} over all tokens); a norm ratio above "
            f"{cap.v('recovery.summary.threshold', '.0%')} does not show that a "
            "component is sufficient, since the patched run can move away from the clean one."
        ),
    )
    if "in_distribution" in results:
        d = results["in_distribution"]["largest"]
        out["in_distribution"] = cap.record(
            "in_distribution",
            (
                f"Single pairs vary a lot. This pair's largest {results['in_distribution'].get('headline', 'headline')} recovery, the layer {cap.v('in_distribution.largest.layer')} "
                f"{d['component']} block at {cap.v('in_distribution.largest.value', '.0%')}, lies at percentile "
                f"{cap.v('in_distribution.largest.percentile', '.0f')} of the {cap.v('in_distribution.pairs')} held-out "
                f"{results['in_distribution']['domain']} pairs of the shipped study of {m} (seeds {cap.v('in_distribution.seeds.0')} to "
                f"{cap.v('in_distribution.seeds.1')}; median {cap.v('in_distribution.largest.median', '.0%')}, "
                f"{cap.v('in_distribution.range_percentiles.0')}th to {cap.v('in_distribution.range_percentiles.1')}th percentile "
                f"{cap.v('in_distribution.largest.p5', '.0%')} to {cap.v('in_distribution.largest.p95', '.0%')})."
            ),
        )
    dla = results["dla"]
    before = (
        f" {cap.v('dla.top_tokens_before_divergence')} of its {cap.v('dla.top_tokens_n')} tokens of greatest |attribution| lie in frame "
        f"slots before the divergence (slot {cap.v('pair.divergence_slot')}), where the two clips are identical: they attribute the class, "
        "not the outcome."
        if dla.get("top_tokens_before_divergence") is not None
        else ""
    )
    out["dla"] = cap.record(
        "dla",
        (
            (
                f"Direct contribution of each source token, through every head's {ro_attn} and the final LayerNorm, to the '{dla['class_name']}' "
                f"logit ({cap.v('dla.logit', '.3f')}) of the positive clip of {_pair_phrase(cap, results)} in {m}, summed over layers and heads, "
                if not pooler
                else f"Direct contribution of each source token through the attentive pooler's query cross-attention (the query's attention "
                f"weight times the token's value, read along the class direction) to the '{dla['class_name']}' logit ({cap.v('dla.logit', '.3f')}) "
                f"of the positive clip of {_pair_phrase(cap, results)} in {m}, summed over the pooler's heads; the query, the pooler's MLP and "
                f"the classifier bias add {cap.v('dla.rest.query', '+.3f')}, {cap.v('dla.rest.mlp', '+.3f')} and {cap.v('dla.rest.bias', '+.3f')} "
                "and attribute to no token; encoder layers and heads are not attributed (the pooler's nonlinear blocks stand between them and "
                "the logit), "
            )
            + "one panel per frame slot (red raises the logit, blue lowers it)."
            + before
        ),
    )
    o = results["outcome"]
    out["differential_dla"] = cap.record(
        "differential_dla",
        (
            f"Differential token attribution on {_pair_phrase(cap, results)} in {m}: the positive clip's token attribution to '{dla['class_name']}' "
            f"minus the negative clip's, per source token (tokens whose pixels are alike need not cancel: attention and values change downstream). It sums to "
            f"{cap.v('outcome.differential_dla.attention_total', '+.3f')} over tokens and heads (the logit difference of the two clips is "
            f"{cap.v('outcome.differential_dla.logit_difference', '+.3f')}); {cap.v('outcome.differential_dla.share_after_divergence', '.0%')} of its "
            f"absolute mass lies in frame slots from the divergence on."
        ),
    )
    att_obj = ""
    if "enrichment" in o:
        parts = []
        for obj in o["enrichment"]:
            base = f"outcome.enrichment.{obj}.CLS attention (positive clip)"
            parts.append(
                f"{obj}: {cap.v(base + '.mean_share', '.1%')} of {ro_attn} on patch tokens against a base rate of "
                f"{cap.v(base + '.base_rate', '.1%')} of all tokens (enrichment {cap.v(base + '.enrichment', '.2f')})"
                + _differing_phrase(cap, results, base)
            )
        att_obj = (
            (
                f" Mean over the pooler query's {cap.v('scope.heads')} heads, object pixels from the divergence on: "
                if pooler
                else f" Mean over all {cap.v('scope.layers')} layers x {cap.v('scope.heads')} heads, object pixels from the divergence on: "
            )
            + "; ".join(parts)
            + "."
        )
    out["attention"] = cap.record(
        "attention",
        (
            (
                f"Where the attentive pooler's learned query of {m} looks (its cross-attention over the last layer's tokens), per head, over the positive clip of "
                if pooler
                else f"Where {'the CLS token' if ro == 'CLS' else f'the {ro} (the mean of every query row)'} of {m} looks in the last layer (layer {cap.v('recovery.layers.-1')}), per head, over the positive clip of "
            )
            + f"{_pair_phrase(cap, results)}."
            + att_obj
        ),
    )
    if "enrichment" in o:
        parts = []
        for obj in o["enrichment"]:
            for w in ("|class DLA| (positive clip)", "|differential DLA|"):
                base = f"outcome.enrichment.{obj}.{w}"
                parts.append(
                    f"{obj}, {w}: share {cap.v(base + '.mean_share', '.1%')}, base rate {cap.v(base + '.base_rate', '.1%')} "
                    f"of all tokens, enrichment {cap.v(base + '.enrichment', '.2f')}"
                    + _differing_phrase(cap, results, base)
                )
        out["enrichment"] = cap.record(
            "enrichment",
            (
                f"Share of attention and of absolute attribution on each rendered object's tokens in {m}, {_pair_phrase(cap, results)}, "
                "divided by the object's base rate two ways: its share of all tokens, and its share of the "
                f"{cap.v('outcome.differing_tokens')} tokens whose pixels differ between the two clips (the matched null: an object "
                "that is most of what differs is enriched over all tokens by that alone); an enrichment of one means no "
                "preference. " + "; ".join(parts) + "."
            ),
        )
    a = results["region_ablation"]
    out["region_ablation"] = cap.record(
        "region_ablation",
        (
            f"Top classes of the positive clip of {_pair_phrase(cap, results)} in {m} before and after {a['mode']}-ablating the pixel box around "
            f"the {cap.v('region_ablation.n_tokens')} tokens of greatest |attribution| to the class (frames {cap.v('region_ablation.box.t0')} to "
            f"{cap.v('region_ablation.last_frame')}, rows {cap.v('region_ablation.box.y0')} to {cap.v('region_ablation.last_row')}, cols "
            f"{cap.v('region_ablation.box.x0')} to {cap.v('region_ablation.last_col')}; the box covers "
            f"{cap.v('region_ablation.box_tokens')} tokens). Top class: {a['top1_before']} -> {a['top1_after']}, its logit changes by "
            f"{cap.v('region_ablation.change', '+.3f')}"
            + (f" ({cap.v('region_ablation.relative_change', '+.0%')})" if a.get("relative_change") is not None else "")
            + _controls_phrase(cap, results, "region_ablation", "region_ablation.controls")
            + ". This targets the class logit, not the outcome; see the outcome-targeted ablation below. "
            + _descriptive_note()
        ),
    )
    parts = []
    for name, r in o["ablation"]["regions"].items():
        base = f"outcome.ablation.regions.{name}"
        parts.append(
            f"{name} ({cap.v(base + '.pixels')} px, {cap.v(base + '.controls.region_share', '.0%')} of the pixel difference"
            + (", descriptive" if r.get("descriptive") else "")
            + f"): logit gap change {cap.v(base + '.logit_gap.change', '+.3f')}"
            + _controls_phrase(cap, results, base + ".logit_gap", base + ".controls")
            + f", direction change {cap.v(base + '.direction.change', '+.2f')}"
            + _controls_phrase(cap, results, base + ".direction", None, fmt=".2f")
            + f", class logit change {cap.v(base + '.class_logit.change', '+.3f')}"
        )
    mc = results.get("multiple_comparisons")
    out["outcome_ablation"] = cap.record(
        "outcome_ablation",
        (
            f"Outcome-targeted region ablation in {m} on {_pair_phrase(cap, results)}: each region is zeroed in both clips, in frames from the "
            f"divergence (frame {cap.v('outcome.from_frame')}) on, and compared with up to {cap.v('outcome.ablation.n_controls')} control boxes "
            f"of equal size in the same frames that hold an equal share of the pair's pixel difference (within "
            f"±{cap.v('outcome.ablation.matching.relative_tolerance', '.0%')} of the region's share, or "
            f"±{cap.v('outcome.ablation.matching.absolute_tolerance', '.0%')} absolute, whichever is wider; at most "
            f"{cap.v('outcome.ablation.matching.max_overlap', '.0%')} inside the region); mean ± sd of the change; p = the "
            f"Monte-Carlo p-value, the share of boxes changing it at least as much with the region counted among them"
            + (
                f", Holm-adjusted over the report's {cap.v('multiple_comparisons.family')} tests"
                if mc and mc["family"]
                else ""
            )
            + f"). Unablated: logit gap {cap.v('outcome.ablation.base.logit_gap', '+.3f')}, direction signal "
            f"{cap.v('outcome.ablation.base.direction', '.2f')}. "
            + "; ".join(parts)
            + ". "
            + _attainable_note(cap, mc)
            + _descriptive_note()
        ),
    )
    if "probes" in results:
        pr = results["probes"]
        b = pr["best"]
        base = f"probes.{b['pooling']}.{b['index']}"
        out["probes"] = cap.record(
            "probes",
            (
                f"Linear probes for the outcome in {m}, per layer, on {cap.v('probes.pairs')} other rendered {pr['domain']} pairs (seeds "
                f"{cap.v('probes.seeds.0')} to {cap.v('probes.seeds.1')}), repeated grouped {cap.v('probes.folds')}-fold cross-validation "
                f"({cap.v('probes.repeats')} repeats; each fold trains on at least {cap.v('probes.train_pairs_per_fold')} pairs and tests at most "
                f"{cap.v('probes.test_pairs_per_fold')}, never seeing either clip of a test pair), bootstrap {cap.v('ci_level', '.0%')} intervals over "
                f"pairs. Best (chosen on the same pairs): {b['pooling']} at {cap.v('probes.best.layer')}, accuracy {cap.v(base + '.accuracy', '.0%')} [{cap.v(base + '.accuracy_ci95.0', '.0%')}, "
                f"{cap.v(base + '.accuracy_ci95.1', '.0%')}], paired accuracy {cap.v(base + '.paired_accuracy', '.0%')} "
                f"[{cap.v(base + '.paired_accuracy_ci95.0', '.0%')}, {cap.v(base + '.paired_accuracy_ci95.1', '.0%')}]; its shuffled-within-pair "
                f"control {cap.v(base + '.control_paired_accuracy', '.0%')}. Pixel baselines (paired accuracy): spatially resolved "
                f"{cap.v('probes.pixels.paired_accuracy', '.0%')}, mean-pooled like the tokens {cap.v('probes.pixels_mean.paired_accuracy', '.0%')}."
                + nested_probe_phrase(cap, "probes", pr)
            ),
        )
    # The scope box: what this run found on each of the paper's claims it can test (from the numbers above).
    rp.scope_findings(results, cap)
    return out


def write_analysis(
    out: Path | OutputDir, model: HookedVideoTransformer, pair: Pair, results: dict, *, overwrite: bool = False
) -> Path:
    """Write the report into ``out`` (see hooked_vivit.output_dir; pass a reserved ``OutputDir`` to have it
    checked and locked before the analysis runs)."""
    captions = analysis_captions(results)
    with output_directory(out, overwrite=overwrite, writer="hooked-vivit analyze") as tmp:
        figs = {
            "frames": rp.fig_frames(pair.positive, pair.negative, pair.names, tmp / "frames.png"),
            "deltas": rp.fig_deltas(results["deltas"], tmp / "fig1_activation_deltas.png"),
            "recovery": rp.fig_recovery(
                results["recovery"]["variants"],
                tmp / "fig2_component_recovery.png",
                kind=results["recovery"]["headline"],
            ),
            "recovery_variants": rp.fig_recovery_variants(
                results["recovery"]["variants"], tmp / "fig2b_recovery_variants.png"
            ),
            "dla": rp.fig_dla(results["dla"], tmp / "fig3_token_dla.png"),
            "differential_dla": rp.fig_dla(
                {
                    **results["outcome"]["differential_dla"],
                    "class_name": results["dla"]["class_name"] + " (positive - negative)",
                },
                tmp / "fig3b_differential_dla.png",
            ),
            "attention": rp.fig_cls_attention(
                results["cls_attention"],
                pair.positive,
                model.cfg.tubelet_size[0],
                tmp / "fig4_cls_attention.png",
                patch_size=model.cfg.tubelet_size[1:],
            ),
            "outcome_ablation": rp.fig_outcome_ablation(
                results["outcome"]["ablation"], tmp / "fig6_outcome_ablation.png", labels=outcome_region_labels(results)
            ),
        }
        if "enrichment" in results["outcome"]:
            figs["enrichment"] = rp.fig_enrichment(
                results["outcome"]["enrichment"], tmp / "fig4b_object_enrichment.png"
            )
        if "probes" in results:
            figs["probes"] = rp.fig_probes_ci(results["probes"], tmp / "fig5_probes.png")
        rp.write_json(tmp / "results.json", results)
        pos_name, neg_name = pair.names
        pred = results["prediction"]
        rec = results["recovery"]
        intro = (
            rp.scope_html(results["scope"])
            + f"<p>Positive clip <b>{pos_name}</b> is classified <b>{pred['positive']['name']}</b>, negative clip <b>{neg_name}</b> "
            f"<b>{pred['negative']['name']}</b>."
            + (
                f" Rendered {pair.domain} pair, seed {pair.seed}; the clips are identical before frame {pair.divergence_frame}."
                if pair.domain
                else ""
            )
            + clip_sizes_html(results["pair"])
            + f"</p><p>Recovery headline: {html.escape(rec['headline_reason'])}.</p>"
        )
        variant_cols = list(rec["variants"])
        rows = [
            {"layer": l, "block": comp, **{v: rec["variants"][v][comp][l] for v in variant_cols}}
            for l in rec["layers"]
            for comp in ("attn", "mlp")
        ]
        sections = [
            ("The pair", figs["frames"], captions["frames"], ""),
            ("(a) Activation differences per layer", figs["deltas"], captions["deltas"], ""),
            (
                "(b) Component patching: what restores the positive run's outcome decision?"
                if rec["headline"] == ex.LOGIT_DIFF_RECOVERY
                else "(b) Component patching: what restores the positive run's representation?",
                figs["recovery"],
                captions["recovery"],
                rp.table_html(rows, ["layer", "block", *variant_cols], {v: ".1%" for v in variant_cols}),
            ),
            (
                "(b) Every recovery variant",
                figs["recovery_variants"],
                captions["recovery"],
                "<p>The question each variant answers:</p>"
                + rp.table_html(
                    [{"variant": v, "question": html.escape(q)} for v, q in rec.get("questions", {}).items()],
                    ["variant", "question"],
                ),
            ),
        ]
        if "in_distribution" in results:
            d = results["in_distribution"]
            h = d.get("headline", rec["headline"])
            drows = [
                {
                    "layer": l,
                    "block": comp,
                    "this pair": e["value"],
                    "percentile": e["percentile"],
                    "median": e["median"],
                    "p5": e["p5"],
                    "p95": e["p95"],
                }
                for comp in ("attn", "mlp")
                for l, e in enumerate(d["variants"][h][comp])
            ]
            sections.append(
                (
                    "(b) Where this pair lies among held-out pairs",
                    None,
                    captions["in_distribution"],
                    rp.table_html(
                        drows,
                        ["layer", "block", "this pair", "percentile", "median", "p5", "p95"],
                        {"this pair": ".1%", "percentile": ".0f", "median": ".1%", "p5": ".1%", "p95": ".1%"},
                    ),
                )
            )
        sections += [
            ("(c) Direct logit attribution over space and time", figs["dla"], captions["dla"], ""),
            (
                "(c) Differential attribution: positive minus negative",
                figs["differential_dla"],
                captions["differential_dla"],
                "",
            ),
            (
                "(d) Pooler query attention"
                if results["cls_attention"]["layers"] == ["pooler"]
                else "(d) CLS attention",
                figs["attention"],
                captions["attention"],
                "",
            ),
        ]
        if "enrichment" in figs:
            sections.append(
                (
                    "(d) Attention and attribution on each object, against its base rate",
                    figs["enrichment"],
                    captions["enrichment"],
                    "",
                )
            )
        sections += [
            (
                f"(e) Region ablation of the class logit: a box of {results['region_ablation']['box_tokens']} tokens",
                None,
                captions["region_ablation"],
                rp.table_html(
                    results["region_ablation"]["table"],
                    ["class", "name", "before", "after", "delta"],
                    {"before": ".4f", "after": ".4f", "delta": "+.4f"},
                )
                + class_logit_ablation_table_html(results),
            ),
            (
                "(e) Region ablation of the outcome signal, against matched control boxes",
                figs["outcome_ablation"],
                captions["outcome_ablation"],
                outcome_ablation_table_html(results),
            ),
        ]
        if "probes" in results:
            sections.append(
                (
                    "(f) Linear probes for the outcome",
                    figs["probes"],
                    captions["probes"],
                    probe_table_html(results["probes"]),
                )
            )
        rp.write_html(tmp, f"hooked-vivit analysis: {pos_name} vs {neg_name}", intro, sections)
    return out.path if isinstance(out, OutputDir) else Path(out)


def outcome_ablation_table_html(results: dict) -> str:
    """Per region and signal: the change, the matched controls' mean and sd, how many matched, the
    Monte-Carlo p-value and its Holm adjustment over the report, and whether the row is descriptive;
    the class-logit ablation's box last."""
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    rows = []

    def row(region: str, signal: str, d: dict, controls: dict | None, descriptive: bool) -> dict:
        return {
            "region": region,
            "signal": signal,
            "change": fmt(d["change"], "+.3f"),
            "controls (mean ± sd)": "-"
            if d.get("control_mean") is None
            else f"{d['control_mean']:+.3f} ± {fmt(d.get('control_std'), '.3f')}",
            "matched / requested": "-" if controls is None else f"{controls['found']} / {controls['requested']}",
            "p": fmt(d.get("control_p"), ".3f"),
            "p (Holm)": fmt(d.get("control_p_holm"), ".3f"),
            "descriptive": "yes" if descriptive else "no",
        }

    for name, r in results["outcome"]["ablation"]["regions"].items():
        for s in ex.SIGNALS:
            rows.append(row(name, s, r[s], r.get("controls"), bool(r.get("descriptive"))))
    a = results["region_ablation"]
    if a.get("change") is not None:
        rows.append(row(class_box_label(a), "class_logit (positive clip)", a, a.get("controls"), True))
    cols = ["region", "signal", "change", "controls (mean ± sd)", "matched / requested", "p", "p (Holm)", "descriptive"]
    return rp.table_html(rows, cols)


def class_box_label(a: dict) -> str:
    """The class-logit ablation's box, named with its size: the tokens it covers and the top tokens it was drawn around."""
    return f"class-logit box (e): {a['box_tokens']} tokens around the top {a['n_tokens']}"


def outcome_region_labels(results: dict) -> dict[str, str]:
    """Figure 6's name for each region of the outcome ablation, with its size: the top-DLA regions are
    exactly their tokens; an object's mask is counted in pixels (it need not fill a token)."""
    o = results["outcome"]
    tokens = {
        "top class-DLA tokens": len(o.get("top_class_dla_tokens") or []),
        "top differential-DLA tokens": len(o.get("top_differential_dla_tokens") or []),
    }
    out = {}
    for name, r in o["ablation"]["regions"].items():
        px = f"{r['pixels']} px"
        out[name] = f"{name} ({tokens[name]} tokens, {px})" if tokens.get(name) else f"{name} ({px})"
    return out


def class_logit_ablation_table_html(results: dict) -> str:
    """The class-logit ablation's measured change beside its matched control boxes and p-values."""
    a = results["region_ablation"]
    if a.get("change") is None:
        return ""
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    controls = a.get("controls")
    row = {
        "box": class_box_label(a),
        "class logit change": fmt(a["change"], "+.3f"),
        "relative": fmt(a.get("relative_change"), "+.0%"),
        "matched boxes (mean ± sd)": "-"
        if a.get("control_mean") is None
        else f"{a['control_mean']:+.3f} ± {fmt(a.get('control_std'), '.3f')}",
        "matched / requested": "-" if controls is None else f"{controls['found']} / {controls['requested']}",
        "p": fmt(a.get("control_p"), ".3f"),
        "p (Holm)": fmt(a.get("control_p_holm"), ".3f"),
    }
    return "<p>The class logit's change against the matched control boxes:</p>" + rp.table_html([row], list(row))


def probe_table_html(pr: dict) -> str:
    rows = []
    for kind in [k for k in ("cls", "mean") if k in pr]:  # no "cls" features without a CLS token
        for name, r in zip(pr["layers"], pr[kind]):
            rows.append({"features": f"{kind} {name}", **_probe_row(r)})
    for key in ("pixels", "pixels_mean"):
        if key in pr:
            rows.append({"features": key, **_probe_row(pr[key])})
    for key, name in NESTED_ROWS:
        if key in pr:
            rows.append({"features": name, **_probe_row(pr[key])})
    return rp.table_html(rows, ["features", "accuracy", "paired accuracy", "control paired"])


NESTED_ROWS = (
    ("nested", "best layer x pooling, the choice cross-validated (nested)"),
    ("random_weights", "random-weights model, the same nested probe"),
)


def _probe_row(r: dict) -> dict:
    return {
        "accuracy": f"{r['accuracy']:.0%} [{r['accuracy_ci95'][0]:.0%}, {r['accuracy_ci95'][1]:.0%}]",
        "paired accuracy": f"{r['paired_accuracy']:.0%} [{r['paired_accuracy_ci95'][0]:.0%}, {r['paired_accuracy_ci95'][1]:.0%}]",
        "control paired": f"{r['control_paired_accuracy']:.0%} [{r['control_paired_accuracy_ci95'][0]:.0%}, {r['control_paired_accuracy_ci95'][1]:.0%}]",
    }


# ---------------------------------------------------------------------------------------- study
def bootstrap(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap 95 % interval of the mean over axis 0 (over pairs)."""
    return bootstrap_ci(np.asarray(values, dtype=np.float64), n, seed)


def _stat(values: Any, per_pair: bool = False) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap(arr)
    out = {"mean": arr.mean(0).tolist(), "ci95": [lo.tolist(), hi.tolist()], "n": int(len(arr))}
    if per_pair:
        out["per_pair"] = arr.tolist()
    return out


STUDY_SUMMARY = "study_summary.json"


def summarize_pair_statistics(
    deltas_cls: list, deltas_tok: list, arrays: dict[str, np.ndarray], headline: str = ex.HEADLINE_RECOVERY
) -> dict:
    """The study's statistics over pairs (rendered or real, hooked_vivit.analysis.pair_study): activation
    deltas, recovery in every variant (``arrays``: name -> [pairs, 2, L], rows attn / mlp), how often a
    norm ratio exceeds 1, and MLP minus attention with a bootstrap interval."""
    out: dict = {}
    out["deltas_cls"] = _stat(deltas_cls, per_pair=True)
    out["deltas_tokens"] = _stat(deltas_tok, per_pair=True)
    head = arrays[headline]
    out["recovery"] = {
        name: {comp: _stat(a[:, j], per_pair=True) for j, comp in enumerate(("attn", "mlp"))}
        for name, a in arrays.items()
    }
    # How often a norm ratio exceeds 1, and how often that happens while the projection does not: movement, not restoration.
    out["norm_ratio_above_1"] = {}
    for where, proj in (("cls", "cls_projection"), ("tokens", "token_projection")):
        above = arrays[f"norm_ratio_{where}"] > 1
        out["norm_ratio_above_1"][where] = {
            "share_of_pair_components": float(above.mean()),
            "share_of_pairs_with_any": float(above.any((1, 2)).mean()),
            "per_component": {"attn": above[:, 0].mean(0).tolist(), "mlp": above[:, 1].mean(0).tolist()},
            "with_projection_below_1": float((above & (arrays[proj] < 1)).sum() / max(above.sum(), 1)),
            "count": int(above.sum()),
            "of": int(above.size),
        }
    gap = head[:, 1].mean(1) - head[:, 0].mean(1)
    defined = np.isfinite(gap)  # the logit-difference headline is undefined on a pair that leaves the outcome alone
    gap = gap[defined]
    if len(gap) < 2:  # no interval and no test: said, not hidden
        out["mlp_minus_attn"] = {
            "mean": None,
            "ci95": [None, None],
            "share_of_pairs_mlp_higher": None,
            "pairs": int(len(gap)),
            "pairs_undefined": int((~defined).sum()),
            "paired_test": None,
        }
        return out
    lo, hi = bootstrap(gap)
    out["mlp_minus_attn"] = {
        "mean": float(gap.mean()),
        "ci95": [float(lo), float(hi)],
        "share_of_pairs_mlp_higher": float((gap > 0).mean()),
        "pairs": int(len(gap)),
        "pairs_undefined": int((~defined).sum()),
        # the pair is the unit: Wilcoxon signed-rank of the per-pair gap, rank-biserial effect size
        "paired_test": statistics.paired_test(gap),
    }
    return out


def gap_text(g: dict) -> str:
    """MLP minus attention recovery as "+x% [lo, hi]", or why there is none."""
    if g["mean"] is None:
        return f"undefined (the headline is defined on {g['pairs']} pair(s); {g['pairs_undefined']} leave the outcome alone)"
    return f"{g['mean']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}]"


def adjust_study_pvalues(data: dict, alpha: float = 0.05) -> dict:
    """Holm's adjustment across every paired test over pairs in a study (every domain: the MLP-minus-
    attention gap and each tested region x signal): each "paired_test" dict gets "p_holm" beside "p".
    Returns results.json's "multiple_comparisons" (the family as paths into the results)."""
    found: list[tuple[str, dict]] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "paired_test" and isinstance(v, dict) and "p" in v:
                    found.append((f"{path}.{k}" if path else k, v))
                else:
                    walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")

    walk(data, "")
    for (_, d), a in zip(found, statistics.holm([d["p"] for _, d in found])):
        d["p_holm"] = a
        d["significant_holm"] = bool(a <= alpha)
    return {
        "method": "holm",
        "alpha": alpha,
        "family": len(found),
        "tests": [p for p, _ in found],
        "note": (
            "every test over pairs in this study (Wilcoxon signed-rank, the pair the unit), Holm-adjusted together; "
            "regions selected on the pair they are tested on are descriptive and not in the family"
        ),
    }


def study_domain(
    model: HookedVideoTransformer,
    domain: str,
    n_pairs: int,
    *,
    seed0: int = ANALYSIS_SEEDS["study"],
    probe_pairs: int | None = None,
    outcome_pairs: int | None = None,
    n_controls: int = 20,
    progress: bool = True,
    outcome_classes: Sequence[int | str] | None = None,
) -> dict:
    """(a), (b) in every recovery variant, the outcome-targeted methods (on the first ``outcome_pairs``
    pairs, default min(n_pairs, 50)) and (f) (on ``probe_pairs`` pairs, default n_pairs; more are
    rendered from the following seeds) over rendered pairs seed0.. of a domain, with bootstrap 95 %
    intervals over pairs. ``outcome_classes`` as in analyze_pair (by default the model's labels of the
    domain's outcomes where it has them): the logit-difference recovery, then the headline."""
    from tqdm.auto import tqdm

    for s in (seed0, seed0 + n_pairs - 1):
        check_seed(s)
    outcome_pairs = min(n_pairs, 50) if outcome_pairs is None else min(outcome_pairs, n_pairs)
    deltas_cls, deltas_tok = [], []
    classes = pair_outcome_classes(model, domain, synthetic.OUTCOMES[synthetic.DOMAINS[domain]], outcome_classes)
    headline, headline_reason = ex.headline_for(classes is not None)
    names = ([ex.LOGIT_DIFF_RECOVERY] if classes else []) + list(ex.RECOVERY_VARIANTS)
    variants: dict = {name: [] for name in names}
    temporal: dict = {name: [] for name in names}  # TimeSformer's temporal attention, [L] per pair
    outcomes, shares_after_divergence, class_tops_before_divergence = [], [], []
    pairs = []
    probe_known = []  # the probe features of the study pairs, read from their shared runs
    L = model.cfg.n_layers
    probe_pairs = n_pairs if probe_pairs is None else probe_pairs
    with ForwardCounter(model) as cost:
        for i in tqdm(range(n_pairs), desc=f"study {domain}", disable=not progress):
            pos_f, neg_f, meta = synthetic.render_pair(
                domain, seed0 + i, num_frames=model.cfg.num_frames, size=min(model.cfg.image_size)
            )
            p, n = model_pixels(model, pos_f), model_pixels(model, neg_f)
            pairs.append((p, n))
            # One clean and one corrupted run per pair, shared by every experiment below (and the probes).
            with cost.section("shared clean and corrupted runs"):
                runs = ex.pair_runs(
                    model, p, n, None if i < outcome_pairs else ex.delta_hooks(model) + ex.recovery_hooks(model)
                )
            with cost.section("deltas"):
                d = ex.activation_deltas(model, p, n, runs=runs)
            deltas_cls.append([d.at_readout[k] for k in ex.KINDS])
            deltas_tok.append([d.token_mean[k] for k in ex.KINDS])
            with cost.section("recovery"):
                rec = ex.component_recovery(model, p, n, runs=runs, outcome_classes=classes)
            for name in variants:
                if name not in rec["variants"]:  # logit_diff undefined on this pair (equal logit differences)
                    variants[name].append(np.full((2, L), np.nan))
                    continue
                variants[name].append([rec["variants"][name]["attn"], rec["variants"][name]["mlp"]])  # [2, L]
                if "temporal_attn" in rec["variants"][name]:
                    temporal[name].append(rec["variants"][name]["temporal_attn"])
            if i < outcome_pairs:
                c = int(runs.clean.logits[0].argmax())
                with cost.section("outcome"):
                    dla = ex.token_dla(model, p, c, run=runs.clean)
                    o = ex.outcome_analysis(
                        model,
                        p,
                        n,
                        c,
                        pair_masks=meta["masks"],
                        divergence_frame=meta["divergence_frame"],
                        positive_dla=dla,
                        n_controls=n_controls,
                        seed=i,
                        runs=runs,
                    )
                div_slot = model.cfg.grid.frame_slot_of_frame(meta["divergence_frame"])
                shares_after_divergence.append(share_after_divergence(o.differential_dla, div_slot))
                n_prefix = model.cfg.grid.n_prefix
                top = (
                    dla["terms"].sum((0, 1))[n_prefix:].abs().topk(min(8, model.cfg.grid.n_patches)).indices + n_prefix
                ).tolist()
                class_tops_before_divergence.append(sum(model.cfg.grid.coords(t)[0] < div_slot for t in top))
                outcomes.append(o)
            if i < probe_pairs:
                acts = {h: torch.cat([runs.clean.cache[h], runs.corrupted.cache[h]]) for h in ex.probe_hooks(model)}
                probe_known.append(
                    ex.probe_pair_features(model, p, n, torch.cat([runs.clean.logits, runs.corrupted.logits]), acts)
                )
            del runs
        cross_fitting = None
        if len(outcomes) >= 4:  # two folds of at least two pairs: select on one half, test on the other
            with cost.section("outcome (cross-fitted region)"):
                cross_fitting = cross_fitted_ablation(model, pairs[: len(outcomes)], outcomes, n_controls=n_controls)
        if probe_pairs > n_pairs:  # more pairs for the probes than for the patching: render the next seeds
            pairs += rendered_probe_pairs(model, domain, probe_pairs - n_pairs, seed0 + n_pairs)
        rand = ex.random_weights_model(model)  # the probes' random-weights control: its forwards are counted too
        with cost.section("probes"), cost.also(rand):
            probes = ex.layer_probes(
                model,
                pairs[:probe_pairs],
                features=ex.probe_features(model, pairs[:probe_pairs], known=probe_known),
                random_model=rand,
            ).to_json()
        del rand
    arrays = {name: np.array(v) for name, v in variants.items()}  # [pairs, 2, L]
    out: dict = {
        "domain": domain,
        "pairs": n_pairs,
        "seeds": [seed0, seed0 + n_pairs - 1],
        "kinds": list(ex.KINDS),
        "layers": list(range(L)),
        "headline": headline,
        "headline_reason": headline_reason,
        "outcome_classes": None if classes is None else [model.cfg.id2label.get(c, str(c)) for c in classes],
        "questions": {name: ex.RECOVERY_QUESTIONS[name] for name in names},
        "readout": ex.readout_name(model),  # where the "cls" recovery variants read (CLS, token mean, pooler output)
    }
    out.update(summarize_pair_statistics(deltas_cls, deltas_tok, arrays, headline))
    if temporal[headline]:  # TimeSformer: the temporal attention block, beside attn and mlp
        for name, v in temporal.items():
            out["recovery"][name]["temporal_attn"] = _stat(v, per_pair=True)
    if outcomes:
        out["outcome"] = summarize_outcomes(outcomes, shares_after_divergence, class_tops_before_divergence)
        if cross_fitting is not None:
            out["outcome"]["cross_fitting"] = cross_fitting
    out["probes"] = probes
    out["probes"]["seeds"] = [seed0, seed0 + probe_pairs - 1]
    out["probes"]["best"] = best_probe(out["probes"])
    out["cost"] = cost.summary(
        per_pair=cost.fe() / n_pairs,
        pairs=n_pairs,
        outcome_pairs=len(outcomes),
        probe_pairs=probe_pairs,
        outcome_ablated_clips=sum(2 * len(o.ablation.regions) * (1 + o.ablation.n_controls) for o in outcomes),
    )
    return out


CROSS_FITTED = "top differential-DLA tokens, selected on the other pairs"


def cross_fit_selection(score_maps: Sequence[torch.Tensor], n_tokens: int, folds: int = 2) -> list[dict]:
    """Cross-fitted token selection: pairs are split by index modulo ``folds``; fold f's tokens are the
    ``n_tokens`` of greatest mean score over the *other* folds' pairs (each pair's map [tokens] of
    non-negative scores normalised to sum 1 first, so no pair dominates; a map of zeros counts as none).
    Fold f's pairs are then tested on tokens their own scores never saw. Returns per fold its test
    pairs, the pairs it was selected on, and the tokens."""
    n = len(score_maps)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2 or n < folds:
        raise ValueError(
            f"cross-fitting needs folds >= 2 and at least one pair per fold, got {folds} folds of {n} pairs"
        )
    maps = torch.stack([m.detach().double().cpu() for m in score_maps])
    if (maps < 0).any():
        raise ValueError("cross_fit_selection: the score maps must be non-negative (e.g. |differential DLA|)")
    totals = maps.sum(1, keepdim=True)
    maps = torch.where(totals > 0, maps / totals.clamp_min(1e-300), torch.zeros_like(maps))
    out = []
    for f in range(folds):
        test = [i for i in range(n) if i % folds == f]
        train = [i for i in range(n) if i % folds != f]
        mean = maps[train].mean(0)
        k = min(n_tokens, int((mean > 0).sum()))
        tokens = mean.topk(k).indices.tolist() if k else []
        out.append({"fold": f, "tested_on": test, "selected_on": train, "tokens": sorted(tokens)})
    return out


def cross_fitted_ablation(
    model: HookedVideoTransformer,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    outcomes: Sequence[ex.OutcomeAnalysis],
    *,
    n_tokens: int = 8,
    n_controls: int = 20,
    folds: int = 2,
) -> dict:
    """The top differential-DLA tokens as a region tested where they were not chosen: each outcome pair's
    |differential DLA| per patch token from its divergence frame on scores the tokens
    (cross_fit_selection), and every pair is ablated on its fold's tokens beside matched control boxes
    (outcome_region_ablation). The result is added to each OutcomeAnalysis's ablation regions (under
    CROSS_FITTED, not descriptive) for summarize_outcomes; returns results.json's "cross_fitting"."""
    grid = model.cfg.grid
    maps = []
    for o in outcomes:
        m = o.differential_dla.terms.sum((0, 1)).abs().float().cpu()
        m[: grid.n_prefix] = 0  # the readout's prefix tokens see no pixels
        first = grid.n_prefix + grid.frame_slot_of_frame(o.from_frame) * grid.n_rows * grid.n_cols
        m[grid.n_prefix : first] = 0  # before the pair's divergence: the clips are alike there
        maps.append(m)
    selection = cross_fit_selection(maps, n_tokens, folds)
    for sel in selection:
        for i in sel["tested_on"]:
            pos, neg = pairs[i]
            T, _, H, W = pos.shape[1:]
            mask = token_pixel_mask(grid, sel["tokens"], T, H, W)
            if not sel["tokens"] or not mask.any():
                continue
            signal = ex.OutcomeSignal(model, pos, neg, outcomes[i].class_index)
            ablation = ex.outcome_region_ablation(
                model, pos, neg, signal, {CROSS_FITTED: mask}, n_controls=n_controls, seed=10_000 + i
            )
            outcomes[i].ablation.regions[CROSS_FITTED] = ablation.regions[CROSS_FITTED]
    return {
        "region": CROSS_FITTED,
        "folds": selection,
        "tokens_per_fold": n_tokens,
        "note": (
            f"pairs split by index modulo {folds}; each fold's tokens are chosen on the other folds' pairs "
            "(mean normalised |differential DLA| from each pair's divergence on) and tested on its own pairs"
        ),
    }


def _paired_cell(e: dict, descriptive: bool) -> str:
    """A markdown cell of an ablation entry's paired test over pairs (summarize_outcomes)."""
    t = e.get("paired_test")
    if descriptive:
        return "descriptive (selected on each pair it is tested on)"
    if t is None:
        return "untested (fewer than 5 pairs with a non-zero difference)"
    holm = f" ({t['p_holm']:.3g})" if t.get("p_holm") is not None else ""
    return f"{t['p']:.3g}{holm}, r = {t['rank_biserial']:+.2f}"


def summarize_outcomes(
    outcomes: list[ex.OutcomeAnalysis],
    shares_after_divergence: Sequence[float] | None = None,
    class_tops_before_divergence: Sequence[int] | None = None,
) -> dict:
    """Means and bootstrap intervals over pairs of the outcome-targeted measures; the two divergence
    measures (per pair, see study_domain) only when given (a real pair has no divergence frame)."""
    out: dict = {"pairs": len(outcomes), "n_controls": outcomes[0].ablation.n_controls}
    if shares_after_divergence is not None:
        out["differential_share_after_divergence"] = _stat(shares_after_divergence)
    if class_tops_before_divergence is not None:
        out["class_dla_top8_before_divergence"] = _stat(class_tops_before_divergence)
    enr: dict = {}
    for o in outcomes:
        for obj, per in (o.enrichment or {}).items():
            for w, e in per.items():
                if e.enrichment is None:
                    continue
                d = enr.setdefault(obj, {}).setdefault(
                    w,
                    {
                        "mean_share": [],
                        "base_rate": [],
                        "enrichment": [],
                        "base_rate_differing": [],
                        "enrichment_differing": [],
                    },
                )
                for k in d:
                    if getattr(e, k) is not None:  # against the differing tokens: only where the object holds some
                        d[k].append(getattr(e, k))
    out["enrichment"] = {
        # against the differing tokens: only over the pairs where the object holds some (an interval needs two)
        obj: {w: {k: _stat(v) for k, v in d.items() if len(v) >= 2} for w, d in per.items()}
        for obj, per in enr.items()
    }
    abl: dict = {}
    descriptive: dict[str, bool] = {}
    for o in outcomes:
        for region, e in o.ablation.regions.items():
            descriptive[region] = descriptive.get(region, False) or e.descriptive
            d = abl.setdefault(
                region, {s: {"change": [], "control_mean": [], "control_std": [], "control_p": []} for s in ex.SIGNALS}
            )
            for s in ex.SIGNALS:
                for k in d[s]:
                    d[s][k].append(getattr(getattr(e, s), k))
    out["ablation"] = {}
    for region, per in abl.items():
        out["ablation"][region] = {}
        for s, d in per.items():
            ch = np.array(d["change"])
            # pairs where no control box matched the region's share of the pixel difference have no control statistics;
            # with fewer than two such pairs there is no interval over pairs, and no control statistic
            has = np.array([v is not None for v in d["control_mean"]])
            cm = np.array([v for v in d["control_mean"] if v is not None], dtype=float)
            sd = [v for v in d["control_std"] if v is not None]
            ps = np.array([v for v in d["control_p"] if v is not None], dtype=float)
            out["ablation"][region][s] = {
                "change": _stat(ch, per_pair=True),
                "control_mean": _stat(cm) if len(cm) >= 2 else None,
                "change_minus_control": _stat(ch[has] - cm) if len(cm) >= 2 else None,
                "control_std_mean": float(np.mean(sd)) if sd else None,
                "share_p_at_most_5pct": float(np.mean(ps <= 0.05)) if len(ps) else None,
                # across pairs (the pair is the unit): region minus its matched boxes, Wilcoxon signed-rank;
                # none for a region selected on the pair it is tested on (descriptive)
                "paired_test": None if descriptive[region] else statistics.paired_test(ch[has] - cm),
                "pairs": len(ch),
                "pairs_with_controls": int(has.sum()),
            }

    # regions selected on the pair they are tested on (top-DLA tokens per pair): no test over pairs
    out["descriptive_regions"] = [r for r in abl if descriptive[r]]
    # per region, the matched control boxes found in each pair (of n_controls requested)
    out["controls_found"] = {
        region: [
            (o.ablation.regions[region].controls or {}).get("found", 0)
            for o in outcomes
            if region in o.ablation.regions
        ]
        for region in abl
    }
    return out


def _at_readout(st: dict) -> str:
    ro = st.get("readout", "CLS")  # studies written before the readout was recorded read CLS
    return "CLS" if ro == "CLS" else f"the {ro}"


def _paired_phrase(cap: rp.Caption, entry: dict, base: str, what: str = "") -> str:
    """ "; over pairs (Wilcoxon signed-rank) p = .., Holm p = .., rank-biserial r = .." for an entry holding a
    paired_test at ``base`` (every number from results.json; "significant" only from its Holm value)."""
    t = entry.get("paired_test")
    if t is None:
        return "; over pairs: untested (too few pairs with a non-zero difference)"
    b = base + ".paired_test"
    text = (
        f"; over pairs{' (' + what + ')' if what else ''}, Wilcoxon signed-rank p = {cap.v(b + '.p', '.3g')}"
        + (f", Holm p = {cap.v(b + '.p_holm', '.3g')}" if t.get("p_holm") is not None else "")
        + f", rank-biserial r = {cap.v(b + '.rank_biserial', '+.2f')}"
    )
    if t.get("significant_holm") is not None:
        alpha = cap.v("multiple_comparisons.alpha", ".0%")
        text += (
            f" (significant after Holm at {alpha})"
            if t["significant_holm"]
            else f" (not significant after Holm at {alpha})"
        )
    return text


def study_captions(data: dict) -> dict[tuple[str, str], str]:
    cap = rp.Caption(data)
    data["captions"] = cap.captions = []
    m = data["model"]
    out = {}
    for i, st in enumerate(data["studies"]):
        dom = st["domain"]
        pre = f"studies.{i}"
        pairs = f"{cap.v(pre + '.pairs')} held-out rendered {dom} pairs (seeds {cap.v(pre + '.seeds.0')} to {cap.v(pre + '.seeds.1')})"
        out[(dom, "deltas")] = cap.record(
            f"{dom} deltas",
            f"Mean activation difference per layer in {m} over {pairs}, with bootstrap "
            f"{cap.v('ci_level', '.0%')} intervals over pairs (shaded).",
        )
        h = st["headline"]
        g = f"{pre}.mlp_minus_attn"
        nr = f"{pre}.norm_ratio_above_1"
        pairs = f"{cap.v(pre + '.pairs')} held-out rendered {dom} pairs (seeds {cap.v(pre + '.seeds.0')} to {cap.v(pre + '.seeds.1')})"
        out[(dom, "recovery")] = cap.record(
            f"{dom} recovery",
            (
                f"Mean recovery per component in {m} over {pairs}, every variant side by side, bootstrap {cap.v('ci_level', '.0%')} intervals over "
                f"pairs. Headline {h}: MLP minus attention recovery (mean over layers), per pair, {cap.v(g + '.mean', '+.1%')} "
                f"[{cap.v(g + '.ci95.0', '+.1%')}, {cap.v(g + '.ci95.1', '+.1%')}]; MLP higher in {cap.v(g + '.share_of_pairs_mlp_higher', '.0%')} of "
                f"pairs{_paired_phrase(cap, st['mlp_minus_attn'], g)}. A norm ratio at {_at_readout(st)} exceeds one in {cap.v(nr + '.cls.count')} of {cap.v(nr + '.cls.of')} (pair, component) cases "
                f"({cap.v(nr + '.cls.share_of_pairs_with_any', '.0%')} of pairs have at least one), and in "
                f"{cap.v(nr + '.cls.with_projection_below_1', '.0%')} of those the projection stays below one: such a ratio does not show "
                "sufficiency, since the patched run can move away from the clean one."
            ),
        )
        if "outcome" in st:
            o = f"{pre}.outcome"
            pairs = f"the first {cap.v(o + '.pairs')} of these {dom} pairs"
            parts = []
            for obj, per in st["outcome"]["enrichment"].items():
                for w in per:
                    b = f"{o}.enrichment.{obj}.{w}"
                    parts.append(
                        f"{obj}, {w}: enrichment {cap.v(b + '.enrichment.mean', '.2f')} [{cap.v(b + '.enrichment.ci95.0', '.2f')}, "
                        f"{cap.v(b + '.enrichment.ci95.1', '.2f')}] (share {cap.v(b + '.mean_share.mean', '.1%')}, base rate "
                        f"{cap.v(b + '.base_rate.mean', '.1%')})"
                    )
            out[(dom, "enrichment")] = cap.record(
                f"{dom} enrichment",
                (
                    f"Attention and attribution on each rendered object (pixels from the divergence on) in {m} over {pairs}, as enrichment = share / "
                    f"base rate, mean over pairs with bootstrap {cap.v('ci_level', '.0%')} intervals; "
                    + "; ".join(parts)
                    + ". Differential "
                    f"attribution puts {cap.v(o + '.differential_share_after_divergence.mean', '.0%')} of its absolute mass in frame slots from the "
                    f"divergence on; of the top tokens of class attribution, {cap.v(o + '.class_dla_top8_before_divergence.mean', '.1f')} per pair "
                    "lie before it."
                ),
            )
            parts = []
            for region, per in st["outcome"]["ablation"].items():
                b = f"{o}.ablation.{region}.logit_gap"
                bd = f"{o}.ablation.{region}.direction"
                if (
                    per["logit_gap"]["control_mean"] is None
                ):  # fewer than two pairs had a box matching the region's share of the difference
                    parts.append(
                        f"{region}: logit gap change {cap.v(b + '.change.mean', '+.3f')} [{cap.v(b + '.change.ci95.0', '+.3f')}, "
                        f"{cap.v(b + '.change.ci95.1', '+.3f')}], direction change {cap.v(bd + '.change.mean', '+.2f')} (matched "
                        f"control boxes in {cap.v(bd + '.pairs_with_controls')} of the pairs, too few for an interval: untested)"
                    )
                    continue
                descriptive = region in st["outcome"].get("descriptive_regions", ())
                parts.append(
                    f"{region}: logit gap change {cap.v(b + '.change.mean', '+.3f')} [{cap.v(b + '.change.ci95.0', '+.3f')}, "
                    f"{cap.v(b + '.change.ci95.1', '+.3f')}] against {cap.v(b + '.control_mean.mean', '+.3f')} for the boxes"
                    + ("" if descriptive else _paired_phrase(cap, per["logit_gap"], b, "the region minus its boxes"))
                    + f", direction "
                    f"change {cap.v(bd + '.change.mean', '+.2f')} against {cap.v(bd + '.control_mean.mean', '+.2f')} (beyond all but "
                    f"five per cent of the boxes in {cap.v(bd + '.share_p_at_most_5pct', '.0%')} of the "
                    f"{cap.v(bd + '.pairs_with_controls')} pairs with matched boxes)"
                    + (
                        " (selected on each pair it is tested on: descriptive, no test over pairs)"
                        if descriptive
                        else _paired_phrase(cap, per["direction"], bd, "the region minus its boxes")
                    )
                )
            pairs = f"the first {cap.v(o + '.pairs')} of these {dom} pairs"
            if "cross_fitting" in st["outcome"]:
                parts.append(
                    f"the cross-fitted region holds the top {cap.v(o + '.cross_fitting.tokens_per_fold')} differential-DLA tokens "
                    f"of the other half of the pairs (pairs split by index parity), so selection and test never share a pair"
                )
            out[(dom, "ablation")] = cap.record(
                f"{dom} ablation",
                (
                    f"Outcome-targeted region ablation in {m} over {pairs}: each region zeroed in both clips from the divergence on, against "
                    f"up to {cap.v(o + '.n_controls')} boxes per pair matched on size and on share of the pair's pixel difference; means over pairs with bootstrap {cap.v('ci_level', '.0%')} "
                    "intervals. " + "; ".join(parts) + "."
                ),
            )
        pr = f"{pre}.probes"
        b = st["probes"]["best"]
        bb = f"{pr}.{b['pooling']}.{b['index']}"
        out[(dom, "probes")] = cap.record(
            f"{dom} probes",
            (
                f"Outcome probes in {m} on {cap.v(pr + '.pairs')} {dom} pairs (seeds {cap.v(pr + '.seeds.0')} to {cap.v(pr + '.seeds.1')}), repeated "
                f"grouped {cap.v(pr + '.folds')}-fold cross-validation ({cap.v(pr + '.repeats')} repeats, groups = pairs), bootstrap "
                f"{cap.v('ci_level', '.0%')} intervals over pairs. Best (chosen on the same pairs): {b['pooling']} at {cap.v(pr + '.best.layer')}, paired accuracy "
                f"{cap.v(bb + '.paired_accuracy', '.0%')} [{cap.v(bb + '.paired_accuracy_ci95.0', '.0%')}, {cap.v(bb + '.paired_accuracy_ci95.1', '.0%')}], "
                f"control {cap.v(bb + '.control_paired_accuracy', '.0%')}; pixel baselines {cap.v(pr + '.pixels.paired_accuracy', '.0%')} (spatially "
                f"resolved) and {cap.v(pr + '.pixels_mean.paired_accuracy', '.0%')} (mean-pooled)."
                + nested_probe_phrase(cap, pr, st["probes"])
            ),
        )
    return out


def write_study(
    out: Path | OutputDir, model: HookedVideoTransformer, studies: list[dict], *, overwrite: bool = False
) -> Path:
    data = {"model": model.cfg.model_name, "scope": rp.scope(model), "ci_level": 0.95, "studies": studies}
    data["multiple_comparisons"] = adjust_study_pvalues(data)
    captions = study_captions(data)
    with output_directory(out, overwrite=overwrite, writer="hooked-vivit study") as tmp:
        sections = []
        for st in studies:
            dom = st["domain"]
            deltas = {
                where: {k: st[f"deltas_{where}"]["mean"][i] for i, k in enumerate(st["kinds"])}
                for where in ("cls", "tokens")
            }
            ci = {
                where: {
                    k: (st[f"deltas_{where}"]["ci95"][0][i], st[f"deltas_{where}"]["ci95"][1][i])
                    for i, k in enumerate(st["kinds"])
                }
                for where in ("cls", "tokens")
            }
            f1 = rp.fig_deltas(deltas, tmp / f"{dom}_deltas.png", ci)
            h = st.get("headline", ex.HEADLINE_RECOVERY)
            head = st["recovery"][h]
            rec = {h: {"attn": head["attn"]["mean"], "mlp": head["mlp"]["mean"]}}
            rp.fig_recovery(
                rec, tmp / f"{dom}_recovery.png", kind=h, ci={"attn": head["attn"]["ci95"], "mlp": head["mlp"]["ci95"]}
            )
            f2 = rp.fig_recovery_variants(
                {v: {c: st["recovery"][v][c]["mean"] for c in st["recovery"][v]} for v in st["recovery"]},
                tmp / f"{dom}_recovery_variants.png",
                ci={v: {c: st["recovery"][v][c]["ci95"] for c in st["recovery"][v]} for v in st["recovery"]},
            )
            f3 = rp.fig_probes_ci(st["probes"], tmp / f"{dom}_probes.png")
            sections += [
                (f"{dom}: activation differences ({st['pairs']} pairs)", f1, captions[(dom, "deltas")], ""),
                (f"{dom}: component recovery, every variant", f2, captions[(dom, "recovery")], recovery_table_html(st)),
            ]
            if "outcome" in st:
                o = st["outcome"]
                enr = {
                    obj: {w: {"enrichment": e["enrichment"]["mean"]} for w, e in per.items()}
                    for obj, per in o["enrichment"].items()
                }
                enr_ci = {
                    obj: {w: e["enrichment"]["ci95"] for w, e in per.items()} for obj, per in o["enrichment"].items()
                }
                f4 = rp.fig_enrichment(enr, tmp / f"{dom}_enrichment.png", ci=enr_ci) if enr else None
                abl = {
                    "n_controls": o["n_controls"],
                    "regions": {
                        r: {
                            s: {
                                "change": e[s]["change"]["mean"],
                                "control_mean": e[s]["control_mean"]["mean"] if e[s]["control_mean"] else None,
                                "control_std": e[s]["control_std_mean"],
                            }
                            for s in ex.SIGNALS
                        }
                        for r, e in o["ablation"].items()
                    },
                }
                f5 = rp.fig_outcome_ablation(abl, tmp / f"{dom}_outcome_ablation.png")
                sections += [
                    (f"{dom}: object enrichment ({o['pairs']} pairs)", f4, captions[(dom, "enrichment")], ""),
                    (
                        f"{dom}: outcome-targeted region ablation ({o['pairs']} pairs)",
                        f5,
                        captions[(dom, "ablation")],
                        "",
                    ),
                ]
            sections.append((f"{dom}: outcome probes", f3, captions[(dom, "probes")], probe_table_html(st["probes"])))
        rp.write_json(tmp / "results.json", data)
        verdict = "; ".join(f"{s['domain']}: MLP - attention = {gap_text(s['mlp_minus_attn'])}" for s in studies)
        intro = (
            rp.scope_html(data["scope"]) + f'<p>Does "attention gathers evidence, MLPs compose the concept" hold '
            f"across pairs and domains? {verdict} (headline recovery "
            + ", ".join(f"{s['domain']}: {s.get('headline', ex.HEADLINE_RECOVERY)}" for s in studies)
            + ", 95 % bootstrap intervals over pairs).</p>"
            + "".join(
                f"<p>Recovery headline ({html.escape(s['domain'])}): "
                f"{html.escape(s.get('headline_reason', ex.HEADLINE_REASON))}.</p>"
                for s in studies
            )
        )
        rp.write_html(tmp, "hooked-vivit multi-pair study", intro, sections)
    return out.path if isinstance(out, OutputDir) else Path(out)


def recovery_table_html(st: dict) -> str:
    rows = []
    for comp in ("attn", "mlp"):
        for l in st["layers"]:
            row = {"layer": l, "block": comp}
            for v, r in st["recovery"].items():
                row[v] = f"{r[comp]['mean'][l]:.1%} [{r[comp]['ci95'][0][l]:.1%}, {r[comp]['ci95'][1][l]:.1%}]"
            rows.append(row)
    table = rp.table_html(rows, ["layer", "block", *st["recovery"]])
    if st.get("questions"):  # each variant labelled with the question it answers; the headline first
        table += f"<p>Headline: {html.escape(st['headline'])}. The question each variant answers:</p>" + rp.table_html(
            [{"variant": v, "question": html.escape(q)} for v, q in st["questions"].items()], ["variant", "question"]
        )
    return table


def study_summary(model: HookedVideoTransformer, studies: list[dict], digits: int = 4) -> dict:
    """The compact summary shipped with the organism: per-pair recovery of every variant (for placing
    a single pair in the distribution), means with intervals, probes and outcome measures."""
    r = lambda x: np.round(np.asarray(x, dtype=np.float64), digits).tolist()  # noqa: E731
    out: dict = {"model": model.cfg.model_name, "weights_fingerprint": weights_fingerprint(model), "domains": {}}
    for st in studies:
        key = next((k for k, v in synthetic.DOMAINS.items() if v == st["domain"] or k == st["domain"]), st["domain"])
        out["domains"][key] = {
            "pairs": st["pairs"],
            "seeds": st["seeds"],
            "recovery_per_pair": {
                v: {c: r(st["recovery"][v][c]["per_pair"]) for c in ("attn", "mlp")} for v in st["recovery"]
            },
            "recovery": {
                v: {
                    c: {"mean": r(st["recovery"][v][c]["mean"]), "ci95": r(st["recovery"][v][c]["ci95"])}
                    for c in ("attn", "mlp")
                }
                for v in st["recovery"]
            },
            "norm_ratio_above_1": st["norm_ratio_above_1"],
            "mlp_minus_attn": st["mlp_minus_attn"],
            "probes": {
                k: ([{kk: vv for kk, vv in e.items()} for e in v] if k in ("cls", "mean") else v)
                for k, v in st["probes"].items()
            },
            "outcome": st.get("outcome"),
            "cost": st.get("cost"),
        }
    return out


def study_tables_markdown(summary: dict) -> str:
    """The closing tables: recovery side by side, outcome enrichment and ablation, probes, with intervals."""
    lines = [
        f"# Multi-pair study of `{summary['model']}`",
        "",
        "Generated by `hooked_vivit.analysis.pipeline.study_tables_markdown` from `study_summary.json`; mean over held-out pairs "
        "with percentile-bootstrap 95 % intervals over pairs. Findings are about this small organism, not ViViT-B.",
        "",
    ]
    for dom, st in summary["domains"].items():
        lines += [
            f"## {dom}: {st['pairs']} pairs, seeds {st['seeds'][0]}..{st['seeds'][1]}",
            "",
            "### Component recovery, every variant",
            "",
            "| block | " + " | ".join(st["recovery"]) + " |",
            "|---|" + "---|" * len(st["recovery"]),
        ]
        L = len(next(iter(st["recovery"].values()))["attn"]["mean"])
        for comp in ("attn", "mlp"):
            for l in range(L):
                cells = [
                    f"{v[comp]['mean'][l]:.1%} [{v[comp]['ci95'][0][l]:.1%}, {v[comp]['ci95'][1][l]:.1%}]"
                    for v in st["recovery"].values()
                ]
                lines.append(f"| L{l} {comp} | " + " | ".join(cells) + " |")
        nr = st["norm_ratio_above_1"]
        lines += [
            "",
            f"Norm ratio above 100 %: at {_at_readout(st)} in {nr['cls']['count']} of {nr['cls']['of']} (pair, component) cases "
            f"({nr['cls']['share_of_pairs_with_any']:.0%} of pairs), over all tokens in {nr['tokens']['count']} of {nr['tokens']['of']}; "
            f"the projection stays below 100 % in {nr['cls']['with_projection_below_1']:.0%} / {nr['tokens']['with_projection_below_1']:.0%} "
            "of those cases.",
            "",
        ]
        o = st.get("outcome")
        if o:
            lines += [
                f"### Outcome-targeted attribution: enrichment on each object ({o['pairs']} pairs)",
                "",
                "| object | weighting | share | base rate | enrichment |",
                "|---|---|---|---|---|",
            ]
            for obj, per in o["enrichment"].items():
                for w, e in per.items():
                    lines.append(
                        f"| {obj} | {w.replace('|', chr(92) + '|')} | {e['mean_share']['mean']:.1%} | {e['base_rate']['mean']:.1%} | "
                        f"{e['enrichment']['mean']:.2f} [{e['enrichment']['ci95'][0]:.2f}, {e['enrichment']['ci95'][1]:.2f}] |"
                    )
            lines += [
                "",
                f"Differential DLA mass from the divergence slot on: {o['differential_share_after_divergence']['mean']:.0%} "
                f"[{o['differential_share_after_divergence']['ci95'][0]:.0%}, {o['differential_share_after_divergence']['ci95'][1]:.0%}]; "
                f"top-8 class-DLA tokens before the divergence: {o['class_dla_top8_before_divergence']['mean']:.1f} per pair.",
                "",
                f"### Outcome-targeted region ablation (both clips, from the divergence on; up to {o['n_controls']} boxes per pair matched on size and share of the pixel difference)",
                "",
                "| region | signal | change | matched boxes | change - boxes | pairs with p <= 0.05 | over pairs: Wilcoxon p (Holm), rank-biserial r |",
                "|---|---|---|---|---|---|---|",
            ]
            for region, per in o["ablation"].items():
                for s, e in per.items():
                    if e["control_mean"] is None:
                        lines.append(
                            f"| {region} | {s} | {e['change']['mean']:+.3f} [{e['change']['ci95'][0]:+.3f}, {e['change']['ci95'][1]:+.3f}] | "
                            f"matched in {e['pairs_with_controls']} pairs (too few) | - | - | untested |"
                        )
                        continue
                    lines.append(
                        f"| {region} | {s} | {e['change']['mean']:+.3f} [{e['change']['ci95'][0]:+.3f}, {e['change']['ci95'][1]:+.3f}] | "
                        f"{e['control_mean']['mean']:+.3f} (sd {e['control_std_mean']:.3f}) | {e['change_minus_control']['mean']:+.3f} "
                        f"[{e['change_minus_control']['ci95'][0]:+.3f}, {e['change_minus_control']['ci95'][1]:+.3f}] | {e['share_p_at_most_5pct']:.0%} | "
                        f"{_paired_cell(e, region in o.get('descriptive_regions', ()))} |"
                    )
        pr = st["probes"]
        lines += [
            "",
            f"### Outcome probes ({pr['pairs']} pairs, repeated grouped {pr['folds']}-fold x {pr['repeats']}, groups = pairs)",
            "",
            "| features | accuracy | paired accuracy | control accuracy | control paired |",
            "|---|---|---|---|---|",
        ]
        rows = (
            [(f"{k} {n}", e) for k in ("cls", "mean") if k in pr for n, e in zip(pr["layers"], pr[k])]
            + [(k, pr[k]) for k in ("pixels", "pixels_mean")]
            + [(name, pr[k]) for k, name in NESTED_ROWS if k in pr]
        )
        for name, e in rows:
            lines.append(
                f"| {name} | {e['accuracy']:.0%} [{e['accuracy_ci95'][0]:.0%}, {e['accuracy_ci95'][1]:.0%}] | {e['paired_accuracy']:.0%} "
                f"[{e['paired_accuracy_ci95'][0]:.0%}, {e['paired_accuracy_ci95'][1]:.0%}] | {e['control_accuracy']:.0%} | "
                f"{e['control_paired_accuracy']:.0%} [{e['control_paired_accuracy_ci95'][0]:.0%}, {e['control_paired_accuracy_ci95'][1]:.0%}] |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def run_study(
    model: HookedVideoTransformer,
    domains: Sequence[str],
    n_pairs: int,
    out: Path | OutputDir,
    *,
    progress: bool = True,
    overwrite: bool = False,
    outcome_pairs: int | None = None,
    probe_pairs: int | None = None,
    outcome_classes: Sequence[int | str] | None = None,
) -> list[dict]:
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 3:
        raise ValueError(
            f"--pairs (n_pairs) must be an integer >= 3 (intervals and held-out probes over pairs), got {n_pairs!r}"
        )
    studies = [
        study_domain(
            model,
            d,
            n_pairs,
            progress=progress,
            outcome_pairs=outcome_pairs,
            probe_pairs=probe_pairs,
            outcome_classes=outcome_classes,
        )
        for d in domains
    ]
    write_study(out, model, studies, overwrite=overwrite)
    return studies
