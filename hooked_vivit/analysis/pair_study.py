"""``hooked-vivit study --pairs MANIFEST``: the multi-pair study over real clip pairs, data-parallel
under torchrun.

The manifest (hooked_vivit.collection: CSV or JSONL with path, pair, role = positive / negative,
optional label, start, end) names the pairs; each pair's two clips are decoded in DataLoader workers
and measured with the rendered study's per-pair functions (hooked_vivit.analysis.experiments):
activation_deltas (a), component_recovery in every variant (b), token_dla + outcome_analysis (the
outcome-targeted methods, on the first ``outcome_pairs`` pairs; real clips carry no object masks or
divergence frame, so the ablation runs from frame 0 and there is no enrichment) and probe_features
(f). The statistics over pairs are those of ``pipeline.study_domain`` (same keys, same bootstrap),
computed from the per-pair numbers in manifest order, so any number of processes gives the same
results. Under torchrun rank r measures pairs r, r + W, ...; rank 0 gathers them and writes the
report. A pair with an unreadable clip is skipped and named in results.json.
"""

from __future__ import annotations

import html
import time
import warnings
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis import report as rp
from hooked_vivit.collection import Distributed, clip_loader, group_pairs, read_collection
from hooked_vivit.output_dir import OutputDir, output_directory

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer


def pair_measures(
    model: HookedVideoTransformer,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    outcome: bool,
    seed: int = 0,
    n_controls: int = 20,
    outcome_classes: Any = None,
    random_model: HookedVideoTransformer | None = None,
) -> dict:
    """One pair's numbers, from the rendered study's per-pair functions (the per-pair part of
    pipeline.study_domain, without the rendered masks and divergence frame); ``outcome_classes``
    (positive, negative): the logit-difference recovery too; ``random_model`` (the probes'
    random-weights control, experiments.random_weights_model): its probe features of the pair too."""
    d = ex.activation_deltas(model, positive, negative)
    rec = ex.component_recovery(model, positive, negative, outcome_classes=outcome_classes)
    out: dict = {
        "deltas_cls": [d.at_readout[k] for k in ex.KINDS],
        "deltas_tokens": [d.token_mean[k] for k in ex.KINDS],
        "recovery": {name: [rec["variants"][name]["attn"], rec["variants"][name]["mlp"]] for name in rec["variants"]},
        "features": ex.probe_features(model, [(positive, negative)]),
    }
    if random_model is not None:
        out["random_features"] = ex.probe_features(random_model, [(positive, negative)])
    if outcome:
        with torch.inference_mode():
            c = int(model(positive).argmax())
        dla = ex.token_dla(model, positive, c)
        out["outcome"] = ex.outcome_analysis(
            model,
            positive,
            negative,
            c,
            pair_masks=None,
            divergence_frame=None,
            positive_dla=dla,
            n_controls=n_controls,
            seed=seed,
        )
    return _on_cpu(out)


def _on_cpu(x: Any) -> Any:
    """Tensors moved to the CPU (results travel between ranks, possibly between machines)."""
    if isinstance(x, (torch.Tensor, ex.ProbeFeatures)):
        return x.cpu()
    if isinstance(x, ex.OutcomeAnalysis):  # only the differential DLA's terms are a tensor
        return replace(x, differential_dla=replace(x.differential_dla, terms=x.differential_dla.terms.cpu()))
    if isinstance(x, dict):
        return {k: _on_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_on_cpu(v) for v in x)
    return x


def merge_features(per_pair: list[dict]) -> ex.ProbeFeatures:
    """probe_features of single pairs -> probe_features of all of them (pair i = group i)."""
    return ex.ProbeFeatures.concat([p["features"] for p in per_pair])


def summarize_pairs(model: HookedVideoTransformer, per_pair: list[dict], *, probe_folds: int = 5) -> dict:
    """The statistics of pipeline.study_domain over measured pairs (in order)."""
    L = model.cfg.n_layers
    with_logits = any(ex.LOGIT_DIFF_RECOVERY in p["recovery"] for p in per_pair)
    names = ([ex.LOGIT_DIFF_RECOVERY] if with_logits else []) + list(ex.RECOVERY_VARIANTS)
    missing = np.full((2, L), np.nan)  # logit_diff undefined on a pair (equal logit differences)
    arrays = {name: np.array([p["recovery"].get(name, missing) for p in per_pair]) for name in names}  # [pairs, 2, L]
    headline, reason = ex.headline_for(with_logits)
    out: dict = {
        "pairs": len(per_pair),
        "kinds": list(ex.KINDS),
        "layers": list(range(L)),
        "headline": headline,
        "headline_reason": reason,
        "questions": {name: ex.RECOVERY_QUESTIONS[name] for name in names},
    }
    out.update(
        pipeline.summarize_pair_statistics(
            [p["deltas_cls"] for p in per_pair], [p["deltas_tokens"] for p in per_pair], arrays, headline
        )
    )
    outcomes = [p["outcome"] for p in per_pair if "outcome" in p]
    if outcomes:
        # No divergence frame in a real pair: the two divergence measures do not apply.
        out["outcome"] = pipeline.summarize_outcomes(outcomes)
    if len(per_pair) >= probe_folds:
        # the random-weights control where every pair measured it (pair_measures' random_model)
        rand = (
            ex.ProbeFeatures.concat([p["random_features"] for p in per_pair])
            if all("random_features" in p for p in per_pair)
            else None
        )
        out["probes"] = ex.layer_probes(
            model,
            [],
            k=probe_folds,
            features=merge_features(per_pair),
            random_weights=rand is not None,
            random_features=rand,
        ).to_json()
        out["probes"]["best"] = pipeline.best_probe(out["probes"])
    else:
        out["probes_skipped"] = (
            f"{len(per_pair)} pair(s): the probes' grouped {probe_folds}-fold cross-validation needs at least {probe_folds}"
        )
    return out


def _measure_rank(
    model: HookedVideoTransformer,
    clips: list,
    pairs: list,
    dist: Distributed,
    *,
    outcome_pairs: int,
    n_controls: int,
    workers: int,
    progress: bool,
    outcome_classes: Any = None,
) -> list[tuple[int, dict]]:
    from tqdm.auto import tqdm

    mine = list(range(dist.rank, len(pairs), dist.world))
    batches = [[pairs[i][1].index, pairs[i][2].index] for i in mine]
    device = model.W_E.device
    rand = ex.random_weights_model(model)  # the probes' random-weights control (the same seed on every rank)
    out = []
    loader = clip_loader(clips, model.cfg, batches, workers=workers)
    for i, batch in tqdm(
        zip(mine, loader), total=len(mine), desc=f"study pairs (rank {dist.rank})", disable=not progress
    ):
        if batch["errors"]:
            out.append((i, {"error": "; ".join(f"{clips[c].file}: {r}" for c, r in batch["errors"])}))
            continue
        x = batch["pixels"].to(device)
        try:
            m = pair_measures(
                model,
                x[:1],
                x[1:],
                outcome=i < outcome_pairs,
                seed=i,
                n_controls=n_controls,
                outcome_classes=outcome_classes,
                random_model=rand,
            )
            m["native_sizes"] = [list(wh) for wh in batch["sizes"]]
            out.append((i, m))
        except ValueError as e:  # e.g. two identical clips: no outcome signal
            out.append((i, {"error": f"{type(e).__name__}: {e}"}))
    return out


def study_pairs(
    model: HookedVideoTransformer,
    manifest: str | Path,
    out: str | Path,
    *,
    outcome_pairs: int | None = None,
    n_controls: int = 20,
    device: str = "cpu",
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    outcome_classes: Any = None,
) -> dict | None:
    """The study over the manifest's pairs (module docstring); writes report.html, results.json and
    figures into ``out`` (rank 0) and returns the results (None on the other ranks). ``outcome_classes``
    (positive, negative; label names or indices): the logit-difference recovery, as the headline."""
    t0 = time.perf_counter()
    clips = read_collection(manifest)
    pairs = group_pairs(clips, manifest)
    if len(pairs) < 3:
        raise ValueError(f"{manifest}: {len(pairs)} pair(s); the study's intervals over pairs need at least 3")
    outcome_pairs = min(len(pairs), 50) if outcome_pairs is None else outcome_pairs
    local_model = (
        Path(model).expanduser() if isinstance(model, (str, Path)) and Path(model).expanduser().is_dir() else None
    )
    with Distributed(device) as dist, ExitStack() as stack:
        reserved, error = None, None
        if dist.is_main:
            try:
                reserved = stack.enter_context(
                    OutputDir(
                        out,
                        overwrite=overwrite,
                        inputs=[manifest, local_model, *(c.path for c in clips)],  # every clip: never overwritten
                        writer="hooked-vivit study",
                    )
                )
            except Exception as e:  # noqa: BLE001  every rank learns of it
                error = e
        dist.agree(error)
        if isinstance(model, (str, Path)):
            from hooked_vivit.extract import load_model

            model = load_model(str(model), dist.rank_device(device))
        if model.unembed is None:
            raise ValueError(
                "study --pairs needs class logits; give a checkpoint with a classifier (VivitForVideoClassification)"
            )
        outcome_classes = ex.outcome_class_pair(model, outcome_classes)
        measured = _measure_rank(
            model,
            clips,
            pairs,
            dist,
            outcome_pairs=outcome_pairs,
            n_controls=n_controls,
            workers=workers,
            progress=progress and dist.is_main,
            outcome_classes=outcome_classes,
        )
        gathered = sorted((item for part in dist.all_gather(measured) for item in part), key=lambda t: t[0])
        if not dist.is_main:
            return None
        ok = [(i, m) for i, m in gathered if "error" not in m]
        skipped = [{"pair": pairs[i][0], "reason": m["error"]} for i, m in gathered if "error" in m]
        if len(ok) < 3:
            raise ValueError(
                f"{manifest}: only {len(ok)} pair(s) could be measured (at least 3 needed); skipped: "
                + "; ".join(f"{s['pair']}: {s['reason']}" for s in skipped[:3])
            )
        result = summarize_pairs(model, [m for _, m in ok])
        # analyze's rule (pipeline.size_mismatch_warning): measured, and named as not minimal pairs.
        size_warnings = [
            {"pair": pairs[i][0], "native_sizes": m["native_sizes"], "warning": w}
            for i, m in ok
            if (w := pipeline.size_mismatch_warning((pairs[i][1].file, pairs[i][2].file), m["native_sizes"]))
        ]
        for sw in size_warnings:
            warnings.warn(f"pair {sw['pair']}: {sw['warning']}", stacklevel=2)
        result.update(
            domain=Path(manifest).stem,
            manifest=str(manifest),
            pair_ids=[pairs[i][0] for i, _ in ok],
            files=[[pairs[i][1].file, pairs[i][2].file] for i, _ in ok],
            skipped=skipped,
            native_sizes=[m["native_sizes"] for _, m in ok],
            size_warnings=size_warnings,
            world_size=dist.world,
            outcome_pairs=sum("outcome" in m for _, m in ok),
            seconds=time.perf_counter() - t0,
        )
        write_pair_study(reserved, model, result)
    return result


def write_pair_study(
    out: Path | OutputDir, model: HookedVideoTransformer, st: dict, *, overwrite: bool = False
) -> Path:
    data = {"model": model.cfg.model_name, "scope": rp.scope(model), "ci_level": 0.95, "studies": [st]}
    data["multiple_comparisons"] = pipeline.adjust_study_pvalues(data)
    n = st["pairs"]
    with output_directory(out, overwrite=overwrite, writer="hooked-vivit study") as tmp:
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
        f1 = rp.fig_deltas(deltas, tmp / "deltas.png", ci)
        f2 = rp.fig_recovery_variants(
            {v: {c: st["recovery"][v][c]["mean"] for c in ("attn", "mlp")} for v in st["recovery"]},
            tmp / "recovery_variants.png",
            ci={v: {c: st["recovery"][v][c]["ci95"] for c in ("attn", "mlp")} for v in st["recovery"]},
        )
        g = st["mlp_minus_attn"]
        sections = [
            (
                f"activation differences ({n} pairs)",
                f1,
                f"Mean activation difference (positive minus negative clip) per layer "
                f"in {data['model']} over {n} pairs of {st['manifest']}, bootstrap 95 % intervals over pairs.",
                "",
            ),
            (
                "component recovery, every variant",
                f2,
                f"Mean recovery per component over {n} pairs, bootstrap 95 % intervals; "
                f"MLP minus attention ({st['headline']}) {pipeline.gap_text(g)}"
                + (f", MLP higher in {g['share_of_pairs_mlp_higher']:.0%} of pairs." if g["mean"] is not None else "."),
                pipeline.recovery_table_html(st),
            ),
        ]
        if "outcome" in st:
            o = st["outcome"]
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
            f3 = rp.fig_outcome_ablation(abl, tmp / "outcome_ablation.png")
            sections.append(
                (
                    f"outcome-targeted region ablation ({o['pairs']} pairs)",
                    f3,
                    f"Top class-DLA and differential-DLA tokens "
                    f"zeroed in both clips against {o['n_controls']} random equal-size boxes per pair (no divergence frame is known "
                    "for real clips: all frames count).",
                    "",
                )
            )
        if "probes" in st:
            f4 = rp.fig_probes_ci(st["probes"], tmp / "probes.png")
            sections.append(
                (
                    "outcome probes",
                    f4,
                    f"Outcome probes on {n} pairs, {st['probes']['method']}.",
                    pipeline.probe_table_html(st["probes"]),
                )
            )
        rp.write_json(tmp / "results.json", data)
        skipped = "".join(f"<li>{html.escape(s['pair'])}: {html.escape(s['reason'])}</li>" for s in st["skipped"])
        mismatched = "".join(
            f"<li>{html.escape(w['pair'])}: {html.escape(w['warning'])}</li>" for w in st["size_warnings"]
        )
        intro = (
            rp.scope_html(data["scope"])
            + f"<p>{n} clip pairs from <code>{html.escape(st['manifest'])}</code>.</p>"
            + (f"<p>Skipped pairs:</p><ul>{skipped}</ul>" if skipped else "")
            + (
                f"<p style='color:#a00'><b>{len(st['size_warnings'])} of {n} pairs are not minimal pairs</b> (their clips "
                f"differ in native size; each was resized and centre-cropped to the model's input):</p><ul>{mismatched}</ul>"
                if mismatched
                else ""
            )
        )
        rp.write_html(tmp, "hooked-vivit study over clip pairs", intro, sections)
    return out.path if isinstance(out, OutputDir) else Path(out)
