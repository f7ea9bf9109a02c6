"""What `analyze` and `study` cost, in forward-equivalents (FE) per experiment, before and after partial blocks.

    python -m benchmarks.analysis_cost --out benchmarks/results     # counts and agreement (minutes)

One process, random weights. FE as defined in hooked_vivit.analysis.cost: the FLOPs of every
attention and MLP call the blocks run, over those of one full forward of one clip; the whole-block
count of earlier versions (batch x blocks touched / n_layers) beside it. "before" is the code of
commit f3d9857 (experiments.py, pipeline.py and patching.py read with `git show`), run beside the
current code on the same model and pair and counted by the same counter (the pipeline records its
own sections in results.json["cost"]).

The work is counted on a model of ViViT-B's depth (12 layers, 12 heads) with few tokens and a narrow
width, where a pair takes seconds, and priced at ViViT-B's shape (3137 tokens, d_model 768, d_mlp
3072: ``cost.reprice``): a work item's batch, query rows and keys do not depend on the width, and
every full-length row and key count becomes 3137 (the readout row stays 1). The same runs give the
largest difference between the old and new results.json numbers, in float64 (where rounding cannot
hide a real difference).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import VivitConfig, VivitForVideoClassification

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis.cost import DEFINITION, VIVIT_B, attention_flops, mlp_flops, reprice

BEFORE = "f3d9857"


def _analyze_default(name: str) -> int:
    import inspect

    from hooked_vivit.analysis import pipeline

    return inspect.signature(pipeline.analyze_pair).parameters[name].default


ANALYZE_CONTROLS, ANALYZE_STOP = _analyze_default("n_controls"), _analyze_default("stop_after")
ROOT = Path(__file__).resolve().parent.parent
# Modules that have only moved since BEFORE: their old name -> where they live now.
MOVED = {f"hooked_vivit.{m}": f"hooked_vivit.causal.{m}" for m in ("metrics", "ablation", "logit_attribution")}
GOALS = {"analyze, no probes": 15.0, "analyze, probes": None, "study": 12.0}  # probes: 15 + 2 per probe pair


def old_modules() -> types.ModuleType:
    """pipeline.py as of BEFORE, calling experiments.py, patching.py and probes.py as of BEFORE; the
    modules that have only moved since (into hooked_vivit.causal) are the current ones under their old names."""
    import importlib

    mods: dict[str, types.ModuleType] = {}
    aliases = {old: importlib.import_module(new) for old, new in MOVED.items()}
    sys.modules.update(aliases)  # the old import lines find these, until the old files are loaded
    try:
        for name, path in (
            ("probes", "hooked_vivit/probes.py"),
            ("patching", "hooked_vivit/patching.py"),
            ("experiments", "hooked_vivit/analysis/experiments.py"),
            ("pipeline", "hooked_vivit/analysis/pipeline.py"),
        ):
            src = subprocess.run(
                ["git", "show", f"{BEFORE}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            mod = types.ModuleType(f"old_{name}")
            sys.modules[mod.__name__] = mod  # dataclasses look their module up
            exec(compile(src, f"{BEFORE}:{path}", "exec"), mod.__dict__)
            mods[name] = mod
            sys.modules[f"hooked_vivit.{name}"] = mod  # where the later old files import it from
    finally:
        for old in [*aliases, *(f"hooked_vivit.{k}" for k in mods)]:
            sys.modules.pop(old, None)
    mods["experiments"].patching = mods["patching"]
    mods["pipeline"].ex = mods["experiments"]
    return mods["pipeline"]


def small_deep_model(dtype: torch.dtype) -> HookedViViT:
    """ViViT-B's depth and heads, 8 frames of 64x64 (65 tokens), 96 wide: ViViT-B's work items, in seconds."""
    torch.manual_seed(0)
    cfg = VivitConfig(
        num_frames=8,
        image_size=64,
        hidden_size=96,
        num_attention_heads=12,
        intermediate_size=384,
        num_hidden_layers=12,
        num_labels=400,
    )
    return HookedViViT.from_hf_model(
        VivitForVideoClassification._from_config(cfg, attn_implementation="sdpa").eval(), dtype=dtype
    )


def priced(cost: dict) -> dict:
    """A results.json cost record: FE at ViViT-B's shape and the whole-block count, per experiment."""
    at_b = reprice(cost, VIVIT_B)
    return {
        "fe_vivit_b": at_b["per_experiment"],
        "total_fe_vivit_b": at_b["total"],
        "whole_blocks": cost["whole_blocks"]["per_experiment"],
        "total_whole_blocks": cost["whole_blocks"]["total"],
        "record": cost,
    }


def numbers(x: Any, path: str = "") -> dict[str, float]:
    """Every number of a results dict, by path (captions, timings and the cost record left out)."""
    out: dict[str, float] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("captions", "seconds", "cost") or str(k).startswith("_"):
                continue
            out.update(numbers(v, f"{path}.{k}"))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            out.update(numbers(v, f"{path}.{i}"))
    elif isinstance(x, torch.Tensor):
        out.update(numbers(x.tolist(), path))
    elif isinstance(x, np.ndarray):
        out.update(numbers(x.tolist(), path))
    elif isinstance(x, (bool, np.bool_, int, float, np.integer, np.floating)):
        out[path] = float(x)
    return out


# Numbers whose definition issue 30 changed, so "before" and "after" measure different things: the
# ablations' controls (random boxes then, boxes matched on size and pixel-difference share now), what
# the study derives from them (region minus controls, pairs with controls) and their p-values (k/n
# then, (k + 1)/(n + 1) now). They are left out of the agreement; numbers only "after"
# has (new fields) are counted, not compared.
CHANGED_DEFINITION = re.compile(
    r"\.(controls|control_mean|control_std|control_p|control_p_holm|control_pixels_mean|change_minus_control"
    r"|control_std_mean|share_p_at_most_5pct|pairs_with_controls|controls_found)(\.|$)"
)


def largest_difference(a: dict, b: dict) -> dict:
    na = {k: v for k, v in numbers(a).items() if not CHANGED_DEFINITION.search(k)}
    nb = {k: v for k, v in numbers(b).items() if not CHANGED_DEFINITION.search(k)}
    if set(na) - set(nb):
        return {
            "same_keys": False,
            "only_before": sorted(set(na) - set(nb))[:10],
            "only_after": sorted(set(nb) - set(na))[:10],
        }
    diffs = {k: abs(na[k] - nb[k]) for k in na if np.isfinite(na[k]) or np.isfinite(nb[k])}
    worst = max(diffs, key=diffs.get)
    return {
        "same_keys": True,
        "new_in_after": len(set(nb) - set(na)),
        "numbers": len(na),
        "max_abs_difference": diffs[worst],
        "at": worst,
        "above_1e-6": sum(d > 1e-6 for d in diffs.values()),
    }


def measure(args: argparse.Namespace) -> dict:
    old_pl = old_modules()
    model = small_deep_model(torch.float64)
    pair = pipeline.rendered_pair(model, "bowling", pipeline.ANALYSIS_SEEDS["pair"])
    out: dict = {}
    runs = [("analyze, no probes", 0), ("analyze, probes", args.probe_pairs), ("study", None)]
    for label, probe_pairs in runs:
        if args.only and not label.startswith(args.only):
            continue
        entry: dict = {}
        results = {}
        for which, pl in (("before", old_pl), ("after", pipeline)):
            t = time.perf_counter()
            if probe_pairs is None:
                res = pl.study_domain(
                    model,
                    "bowling",
                    args.study_pairs,
                    n_controls=args.controls,
                    outcome_pairs=args.study_outcome_pairs,
                    progress=False,
                )
            else:
                res = pl.analyze_pair(model, pair, probe_pairs=probe_pairs, n_controls=args.controls, progress=False)
            entry[f"seconds_{which}"] = time.perf_counter() - t
            entry[which] = priced(res["cost"])
            results[which] = res
            print(
                f"{label} {which}: {entry[which]['total_fe_vivit_b']:.2f} FE at ViViT-B "
                f"({entry[which]['total_whole_blocks']:.2f} whole blocks), {entry[f'seconds_{which}']:.0f} s",
                file=sys.stderr,
            )
        after = results["after"]
        entry["agreement_float64"] = largest_difference(results["before"], after)
        if probe_pairs is None:
            entry.update(pairs=args.study_pairs, outcome_pairs=after["outcome"]["pairs"] if "outcome" in after else 0)
            regions = sum(per["class_logit"]["pairs"] for per in after["outcome"]["ablation"].values())
            entry["outcome_regions_summed_over_pairs"] = regions
            # the matched control boxes found (at most n_controls per region): the ablated clips "after" ran
            found = after["outcome"].get("controls_found", {})
            entry["outcome_clips_after"] = sum(2 * (1 + f) for per in found.values() for f in per)
        else:
            entry.update(probe_pairs=probe_pairs, outcome_regions=len(after["outcome"]["ablation"]["regions"]))
            entry["outcome_clips_after"] = after["cost"]["outcome_ablated_clips"]
            # the class-logit box and its matched control boxes (issue 30), each one ablated clip
            entry["region_ablation_clips_after"] = 1 + (after["region_ablation"].get("controls") or {}).get("found", 0)
        entry["n_controls"] = args.controls
        out[label] = entry
    return out


def block_shares() -> str:
    """How one ViViT-B block's FLOPs split, in words."""
    n = VIVIT_B.n_ctx
    attn, mlp = attention_flops(VIVIT_B, 1, n, n), mlp_flops(VIVIT_B, 1, n)
    mixing = 4 * n * n * VIVIT_B.d_attn
    return (
        f"{attn / (attn + mlp):.1%} (q, k, v and W_O {(attn - mixing) / (attn + mlp):.1%}; q k^T and pattern v "
        f"{mixing / (attn + mlp):.1%}) and MLP {mlp / (attn + mlp):.1%} of the FLOPs"
    )


def to_markdown(r: dict) -> str:
    lines = [
        f"# analyze / study cost in forward-equivalents ({r['machine']})",
        "",
        DEFINITION + ".",
        "",
        f"Before = commit {r['before']}, after = this code; same model, pair and counter. Work counted on a 12-layer, "
        "12-head model (ViViT-B's depth; 65 tokens, 96 wide) and priced at ViViT-B's shape (3137 tokens, d_model 768, "
        "d_mlp 3072): every full-length row and key becomes 3137 tokens, the readout row stays one. At that shape one "
        f"block is attention {block_shares()}. "
        f"Outcome ablation with {r['n_controls']} boxes per region (the CLI default: up to {ANALYZE_CONTROLS} matched boxes, "
        f"drawn sequentially until {ANALYZE_STOP} are at least as extreme, so their number depends on the pair). Whole-block count: "
        "the earlier definition (batch x blocks touched / n_layers).",
        "",
    ]
    for label, e in r["counts"].items():
        b, a = e["before"], e["after"]
        names = list(dict.fromkeys(list(b["fe_vivit_b"]) + list(a["fe_vivit_b"])))
        goal = GOALS[label] if label != "analyze, probes" else 15 + 2 * e["probe_pairs"]
        extra = f", {e['probe_pairs']} probe pairs" if e.get("probe_pairs") else ""
        if "pairs" in e:
            extra += (
                f", {e['pairs']} pairs (outcome methods on {e['outcome_pairs']}, {e['n_controls']} boxes per region)"
            )
        lines += [
            f"## {label}{extra} (goal <= {goal:g}{' per pair' if 'pairs' in e else ''}, without the outcome ablation)",
            "",
            "| experiment | before FE | after FE | before whole blocks | after whole blocks |",
            "|---|---|---|---|---|",
        ]
        for n in names:
            lines.append(
                f"| {n} | {b['fe_vivit_b'].get(n, 0):.2f} | {a['fe_vivit_b'].get(n, 0):.2f} | "
                f"{b['whole_blocks'].get(n, 0):.2f} | {a['whole_blocks'].get(n, 0):.2f} |"
            )
        lines += [
            f"| **total** | **{b['total_fe_vivit_b']:.2f}** | **{a['total_fe_vivit_b']:.2f}** | "
            f"**{b['total_whole_blocks']:.2f}** | **{a['total_whole_blocks']:.2f}** |",
            "",
        ]
        outcome_b, outcome_a = b["fe_vivit_b"].get("outcome", 0), a["fe_vivit_b"].get("outcome", 0)
        if "pairs" in e:
            P = e["pairs"]
            clips = 2 * e["outcome_regions_summed_over_pairs"] * (1 + e["n_controls"])
            clips_a = e.get("outcome_clips_after", clips)  # after: the matched boxes found (at most N per region)
            lines.append(
                f"Per pair without the outcome methods: before {(b['total_fe_vivit_b'] - outcome_b) / P:.2f}, after "
                f"{(a['total_fe_vivit_b'] - outcome_a) / P:.2f} FE. The outcome methods: differential DLA from the shared "
                f"runs, and the outcome ablation's 2R(1 + N) ablated clips ({e['outcome_regions_summed_over_pairs']} "
                f"regions over {e['outcome_pairs']} pairs x 2 clips x (1 + {e['n_controls']}) boxes = {clips} clips): "
                f"before {outcome_b:.2f}, after {outcome_a:.2f} FE over {clips_a} clips ({outcome_b / clips:.3f} / {outcome_a / clips_a:.3f} per "
                "clip; the signal reads the logits and the readout row of the last resid_post, so the last block computes "
                "only that row). The study's recovery reads every token of the last resid_post "
                "(its token variants), so no patched run can compute only the readout row of its last block: the sweep "
                "costs L - 1 + m (m the MLP's share of a block) beside the 2 shared runs."
            )
        else:
            R, N = e["outcome_regions"], e["n_controls"]
            clips = 2 * R * (1 + N)
            per_b, per_a = outcome_b / clips, outcome_a / e.get("outcome_clips_after", clips)
            lines.append(
                f"The outcome ablation's ablated clips, 2R(1 + N) = 2 x {R} x {1 + N} = {clips}: before {outcome_b:.2f} FE, "
                f"after {outcome_a:.2f} ({per_b:.3f} / {per_a:.3f} per clip; the signal reads the logits and the readout "
                f"row of the last resid_post, so the last block computes only that row); without them: before "
                f"{b['total_fe_vivit_b'] - outcome_b:.2f}, after {a['total_fe_vivit_b'] - outcome_a:.2f} FE. With 20 boxes "
                f"per region (the earlier default) the outcome ablation runs 2R(1 + 20) = {2 * R * 21} clips: before "
                f"{2 * R * 21 * per_b:.1f}, after {2 * R * 21 * per_a:.1f} FE; the CLI's sequential test runs between "
                f"2R(1 + {ANALYZE_STOP}) = {2 * R * (1 + ANALYZE_STOP)} and 2R(1 + {ANALYZE_CONTROLS}) = "
                f"{2 * R * (1 + ANALYZE_CONTROLS)} clips (after: {2 * R * (1 + ANALYZE_STOP) * per_a:.1f} to "
                f"{2 * R * (1 + ANALYZE_CONTROLS) * per_a:.1f} FE)."
            )
        g = e["agreement_float64"]
        lines += [
            "",
            f"Seconds on the small model (a loaded machine): before {e['seconds_before']:.1f}, after {e['seconds_after']:.1f}. "
            f"results.json numbers, before vs after, float64: {g.get('numbers')} numbers, largest |difference| "
            f"{g.get('max_abs_difference', float('nan')):.2e} (at {g.get('at')}), {g.get('above_1e-6')} above 1e-6.",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe-pairs", type=int, default=5)
    p.add_argument("--study-pairs", type=int, default=5, help="at least 5 (the probes' 5 folds)")
    p.add_argument("--study-outcome-pairs", type=int, default=2, help="study pairs that run the outcome methods")
    p.add_argument("--controls", type=int, default=2, help="random boxes per region in the outcome ablation")
    p.add_argument("--only", choices=["analyze", "study"], default=None, help="one command (no files written)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    r = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "definition": DEFINITION,
        "priced_at": VIVIT_B.__dict__,
        "before": BEFORE,
        "n_controls": args.controls,
        "counts": measure(args),
    }
    if args.only:
        print(json.dumps({k: {w: v[w]["fe_vivit_b"] for w in ("before", "after")} for k, v in r["counts"].items()}))
        return 0
    md = to_markdown(r)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "analysis_cost.json").write_text(json.dumps(r, indent=1, default=float))
        (args.out / "analysis_cost.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
