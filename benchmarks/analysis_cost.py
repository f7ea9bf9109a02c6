"""What `analyze` and `study` cost, in forward-equivalents (FE) per experiment, before and after issue 18.

    python -m benchmarks.analysis_cost --out benchmarks/results            # counts, agreement, ViViT-B wall time
    python -m benchmarks.analysis_cost --no-wall                            # counts and agreement only (a minute)

One process, random weights. FE as defined in hooked_vivit.analysis.cost: every model.forward is
counted as batch x blocks run / n_layers. "before" is the code of commit f3072cb (read with `git
show`, run beside the current code on the same model and pair, counted by the same counter; each
experiment it called counted as one section).

Counts depend only on batch sizes, blocks run and n_layers, not on width or tokens, so they are
measured on a model of ViViT-B's depth (12 layers, 12 heads) with few tokens and a narrow width,
where the old code's ~200 forwards per pair take seconds; the same model gives the largest
difference between the old and new results.json numbers (float32, and float64 where rounding
cannot hide a real difference). ``--wall`` then times, at the ViViT-B shape (3137 tokens, 768 wide),
one plain forward and the new code's experiments (outcome ablation with ``--wall-controls`` random
boxes), so the counted FE can be checked against seconds / one forward's seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
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
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis.cost import DEFINITION, ForwardCounter

BEFORE = "f3072cb"
ROOT = Path(__file__).resolve().parent.parent
GOALS = {"analyze, no probes": "<= 15", "analyze, probes": "<= 15 + 2 per probe pair", "study": "<= 12 per pair"}
# The old pipeline's calls into experiments -> the section they are counted in (the new code's names).
OLD_SECTIONS = {
    "activation_deltas": "deltas",
    "component_recovery": "recovery",
    "token_dla": "dla",
    "cls_attention": "cls_attention",
    "region_ablation": "region_ablation",
    "outcome_analysis": "outcome",
    "layer_probes": "probes",
}


def old_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """experiments.py and pipeline.py as of BEFORE, as modules (the old pipeline calls the old experiments)."""
    mods = []
    for name in ("experiments", "pipeline"):
        src = subprocess.run(
            ["git", "show", f"{BEFORE}:hooked_vivit/analysis/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        mod = types.ModuleType(f"old_{name}")
        sys.modules[mod.__name__] = mod  # dataclasses look their module up
        exec(compile(src, f"{BEFORE}:hooked_vivit/analysis/{name}.py", "exec"), mod.__dict__)
        mods.append(mod)
    old_ex, old_pl = mods
    return old_ex, old_pl


class Sectioned:
    """The old experiments module as the old pipeline sees it: each call it makes is one counter section."""

    def __init__(self, module: types.ModuleType, cost: ForwardCounter):
        self._module, self._cost = module, cost

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if name not in OLD_SECTIONS:
            return value

        def counted(*args, **kwargs):
            with self._cost.section(OLD_SECTIONS[name]):
                return value(*args, **kwargs)

        return counted


def small_deep_model(dtype: torch.dtype) -> HookedViViT:
    """ViViT-B's depth and heads, 8 frames of 64x64 (65 tokens), 96 wide: the counts of ViViT-B, in seconds."""
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


def vivit_b() -> HookedViViT:
    torch.manual_seed(0)
    return HookedViViT.from_hf_model(
        VivitForVideoClassification._from_config(VivitConfig(num_labels=400), attn_implementation="sdpa").eval()
    )


def run_analyze(
    pl: types.ModuleType, model, pair, probe_pairs: int, n_controls: int, old_ex: types.ModuleType | None
) -> tuple[dict, dict]:
    """results and the counter's summary of one analyze_pair call (old: sections from the wrapped experiments)."""
    with ForwardCounter(model) as cost:
        if old_ex is not None:
            pl.ex = Sectioned(old_ex, cost)
            with cost.section("prediction logits"):
                pass  # the old code's first forward (both clips) lands in "other"; renamed below
        res = pl.analyze_pair(model, pair, probe_pairs=probe_pairs, n_controls=n_controls, progress=False)
    if (
        old_ex is None
    ):  # the current code counts itself, per experiment, into results.json; the outer counter agrees in total
        assert res["cost"]["total"] == cost.fe(), (res["cost"]["total"], cost.fe())
        return res, res["cost"]
    pl.ex = old_ex
    return res, rename_other(cost.summary(), "prediction logits")


def run_study(
    pl: types.ModuleType,
    model,
    n_pairs: int,
    n_controls: int,
    old_ex: types.ModuleType | None,
    outcome_pairs: int | None,
) -> tuple[dict, dict]:
    with ForwardCounter(model) as cost:
        if old_ex is not None:
            pl.ex = Sectioned(old_ex, cost)
            with cost.section("prediction logits"):
                pass
        st = pl.study_domain(
            model, "bowling", n_pairs, n_controls=n_controls, outcome_pairs=outcome_pairs, progress=False
        )
    if old_ex is None:
        assert st["cost"]["total"] == cost.fe(), (st["cost"]["total"], cost.fe())
        return st, dict(st["cost"])
    pl.ex = old_ex
    return st, rename_other(cost.summary(), "prediction logits")


def rename_other(s: dict, name: str) -> dict:
    """The old code's bare model() calls (outside any experiment function) under ``name``."""
    for key in ("per_experiment", "clip_blocks", "forward_calls"):
        d = s[key]
        d[name] = d.get(name, 0) + d.pop("other", 0)
    return s


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
    elif isinstance(x, (bool, np.bool_)):
        out[path] = float(x)
    elif isinstance(x, (int, float, np.integer, np.floating)):
        out[path] = float(x)
    return out


def largest_difference(a: dict, b: dict) -> dict:
    na, nb = numbers(a), numbers(b)
    if set(na) != set(nb):
        return {
            "same_keys": False,
            "only_before": sorted(set(na) - set(nb))[:10],
            "only_after": sorted(set(nb) - set(na))[:10],
        }
    diffs = {k: abs(na[k] - nb[k]) for k in na if np.isfinite(na[k]) or np.isfinite(nb[k])}
    worst = max(diffs, key=diffs.get)
    return {
        "same_keys": True,
        "numbers": len(na),
        "max_abs_difference": diffs[worst],
        "at": worst,
        "above_1e-6": sum(d > 1e-6 for d in diffs.values()),
    }


def counts(
    probe_pairs: int,
    study_pairs: int,
    n_controls: int,
    dtypes: tuple[torch.dtype, ...],
    only: str | None = None,
    study_outcome_pairs: int | None = None,
) -> dict:
    old_ex, old_pl = old_modules()
    out: dict = {}
    for dtype in dtypes:
        model = small_deep_model(dtype)
        pair = pipeline.rendered_pair(model, "bowling", pipeline.ANALYSIS_SEEDS["pair"])
        key = str(dtype).removeprefix("torch.")
        entry: dict = {}
        out[key] = entry
        for label, pp in (("analyze, no probes", 0), ("analyze, probes", probe_pairs)):
            if only == "study":
                break
            t0 = time.perf_counter()
            before, cb = run_analyze(old_pl, model, pair, pp, n_controls, old_ex)
            t1 = time.perf_counter()
            after, ca = run_analyze(pipeline, model, pair, pp, n_controls, None)
            t2 = time.perf_counter()
            print(
                f"{dtype} {label}: before {cb['total']:.2f} FE ({t1 - t0:.0f} s), after {ca['total']:.2f} FE ({t2 - t1:.0f} s)",
                file=sys.stderr,
            )
            entry[label] = {
                "before": cb,
                "after": ca,
                "seconds_before": t1 - t0,
                "seconds_after": t2 - t1,
                "agreement": largest_difference(before, after),
                "outcome_regions": len(after["outcome"]["ablation"]["regions"]),
                "n_controls": n_controls,
                "probe_pairs": pp,
            }
        if only == "analyze":
            continue
        t0 = time.perf_counter()
        sb, cb = run_study(old_pl, model, study_pairs, n_controls, old_ex, study_outcome_pairs)
        t1 = time.perf_counter()
        sa, ca = run_study(pipeline, model, study_pairs, n_controls, None, study_outcome_pairs)
        t2 = time.perf_counter()
        ca.pop("per_pair", None)
        print(
            f"{dtype} study: before {cb['total']:.2f} FE ({t1 - t0:.0f} s), after {ca['total']:.2f} FE ({t2 - t1:.0f} s)",
            file=sys.stderr,
        )
        entry["study"] = {
            "before": cb,
            "after": ca,
            "pairs": study_pairs,
            "outcome_pairs": sa["outcome"]["pairs"] if "outcome" in sa else 0,
            "n_controls": n_controls,
            "seconds_before": t1 - t0,
            "seconds_after": t2 - t1,
            "agreement": largest_difference(sb, sa),
        }
    return out


def wall(n_controls: int, reps: int) -> dict:
    """ViViT-B shape: one plain forward, then each new-code experiment on one pair, in seconds and counted FE."""
    model = vivit_b()
    pair = pipeline.rendered_pair(model, "bowling", pipeline.ANALYSIS_SEEDS["pair"])
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    forward = []
    for _ in range(reps):
        t = time.perf_counter()
        with torch.inference_mode():
            model(pos)
        forward.append(time.perf_counter() - t)
    one = float(np.median(forward))
    seconds: dict[str, float] = {}
    with ForwardCounter(model) as cost:

        def timed(name, fn):
            t = time.perf_counter()
            with cost.section(name):
                value = fn()
            seconds[name] = time.perf_counter() - t
            return value

        runs = timed("shared clean and corrupted runs", lambda: ex.pair_runs(model, pos, neg))
        c = int(runs.clean.logits[0].argmax())
        timed("deltas", lambda: ex.activation_deltas(model, pos, neg, runs=runs))
        timed("recovery", lambda: ex.component_recovery(model, pos, neg, runs=runs))
        dla = timed("dla", lambda: ex.token_dla(model, pos, c, run=runs.clean))
        timed("cls_attention", lambda: ex.cls_attention(model, pos, masks=pair.masks["positive"], run=runs.clean))
        timed("region_ablation", lambda: ex.region_ablation(model, pos, dla, before=runs.clean.logits))
        o = timed(
            "outcome",
            lambda: ex.outcome_analysis(
                model,
                pos,
                neg,
                c,
                pair_masks=pair.masks,
                divergence_frame=pair.divergence_frame,
                positive_dla=dla,
                n_controls=n_controls,
                runs=runs,
            ),
        )
    s = cost.summary()
    return {
        "one_forward_seconds": one,
        "forward_seconds": forward,
        "n_controls": n_controls,
        "outcome_regions": len(o.ablation.regions),
        "per_experiment": {
            k: {"fe": s["per_experiment"][k], "seconds": seconds[k], "seconds_over_one_forward": seconds[k] / one}
            for k in seconds
        },
        "total_fe": s["total"],
        "total_seconds_over_one_forward": sum(seconds.values()) / one,
    }


def to_markdown(r: dict) -> str:
    lines = [
        f"# analyze / study cost in forward-equivalents ({r['machine']})",
        "",
        DEFINITION + ".",
        "",
        f"Before = commit {BEFORE}, after = this code; same model, pair and counter. Counts measured on a 12-layer, 12-head model "
        f"(ViViT-B's depth; 65 tokens, 96 wide: counts depend only on batch, blocks run and n_layers). Outcome ablation with "
        f"{r['n_controls']} random boxes per region (the CLI default is 20).",
        "",
    ]
    c = r["counts"]["float32"]
    for label, e in c.items():
        if label not in GOALS:
            continue
        names = list(dict.fromkeys(list(e["before"]["per_experiment"]) + list(e["after"]["per_experiment"])))
        extra = f", {e['probe_pairs']} probe pairs" if e.get("probe_pairs") else ""
        extra += (
            f", {e['pairs']} pairs (outcome methods on {e['outcome_pairs']}, {e['n_controls']} boxes per region)"
            if "pairs" in e
            else ""
        )
        lines += [
            f"## {label}{extra} (goal {GOALS[label]})",
            "",
            "| experiment | before FE | after FE |",
            "|---|---|---|",
        ]
        for n in names:
            lines.append(
                f"| {n} | {e['before']['per_experiment'].get(n, 0):.2f} | {e['after']['per_experiment'].get(n, 0):.2f} |"
            )
        per = (
            f" ({e['before']['total'] / e['pairs']:.2f} / {e['after']['total'] / e['pairs']:.2f} per pair)"
            if "pairs" in e
            else ""
        )
        lines += [f"| **total** | **{e['before']['total']:.2f}** | **{e['after']['total']:.2f}** |", ""]
        if "outcome_regions" in e:
            R, N = e["outcome_regions"], e["n_controls"]
            boxes = 2 * R * (1 + N)
            lines += [
                f"The outcome ablation's ablated clips, 2R(1 + N) = 2 x {R} x {1 + N} = {boxes} FE, are the same in both; everything "
                f"else: before {e['before']['total'] - boxes:.2f}, after {e['after']['total'] - boxes:.2f}. With the CLI default of "
                f"N = 20 boxes the totals are {e['before']['total'] + 2 * R * (20 - N):.2f} before and "
                f"{e['after']['total'] + 2 * R * (20 - N):.2f} after (2R more FE per extra box, counted in the tests).",
                "",
            ]
        lines += [
            f"Total{per}. Seconds on this model (a machine loaded many times over): before {e['seconds_before']:.1f}, after {e['seconds_after']:.1f}. "
        ]
        for dt in r["counts"]:
            if label not in r["counts"][dt]:
                continue
            a = r["counts"][dt][label]["agreement"]
            lines[-1] += (
                f"results.json numbers, before vs after, {dt}: {a.get('numbers')} numbers, largest |difference| "
                f"{a.get('max_abs_difference', float('nan')):.2e} (at {a.get('at')}), {a.get('above_1e-6')} above 1e-6. "
            )
        lines.append("")
    if "wall" in r:
        w = r["wall"]
        lines += [
            f"## ViViT-B shape (3137 tokens), after, one pair, outcome ablation with {w['n_controls']} random boxes per region "
            f"({w['outcome_regions']} regions)",
            "",
            f"One plain forward: {w['one_forward_seconds']:.2f} s.",
            "",
            "| experiment | counted FE | seconds / one forward |",
            "|---|---|---|",
        ]
        for k, v in w["per_experiment"].items():
            lines.append(f"| {k} | {v['fe']:.2f} | {v['seconds_over_one_forward']:.2f} |")
        lines += [f"| **total** | **{w['total_fe']:.2f}** | **{w['total_seconds_over_one_forward']:.2f}** |", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe-pairs", type=int, default=5)
    p.add_argument("--study-pairs", type=int, default=5, help="at least 5 (the probes' 5 folds)")
    p.add_argument("--controls", type=int, default=20, help="random boxes per region in the outcome ablation (counts)")
    p.add_argument("--float64", action="store_true", help="also compare the two codes' numbers in float64")
    p.add_argument("--only-float64", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--only", choices=["analyze", "study"], default=None, help="one command (writes analysis_cost_<only>.json)"
    )
    p.add_argument(
        "--study-outcome-pairs", type=int, default=None, help="study pairs that run the outcome methods (default: all)"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="merge analysis_cost_analyze.json and _study.json in --out into analysis_cost.md/json",
    )
    p.add_argument("--no-wall", action="store_true", help="skip the ViViT-B-shape timing")
    p.add_argument("--wall-controls", type=int, default=1, help="random boxes per region in the ViViT-B-shape timing")
    p.add_argument("--reps", type=int, default=2, help="plain forwards timed at the ViViT-B shape (median)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads((args.out / f"analysis_cost_{k}.json").read_text()) for k in ("analyze", "study")]
        r = parts[0]
        for extra in [parts[1]] + (
            [json.loads((args.out / "analysis_cost_analyze64.json").read_text())]
            if (args.out / "analysis_cost_analyze64.json").exists()
            else []
        ):
            for dt, e in extra["counts"].items():
                r["counts"].setdefault(dt, {}).update(e)
        r.update({k: v for k, v in parts[1].items() if k == "wall"})
    else:
        dtypes = (
            (torch.float64,)
            if args.only_float64
            else (torch.float32, torch.float64)
            if args.float64
            else (torch.float32,)
        )
        r = {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "definition": DEFINITION,
            "before": BEFORE,
            "n_controls": args.controls,
            "counts": counts(
                args.probe_pairs, args.study_pairs, args.controls, dtypes, args.only, args.study_outcome_pairs
            ),
        }
        if not args.no_wall:
            r["wall"] = wall(args.wall_controls, args.reps)
    name = f"analysis_cost_{args.only}{'64' if args.only_float64 else ''}" if args.only else "analysis_cost"
    md = to_markdown(r) if not args.only else json.dumps(r["counts"], indent=1, default=float)[:4000]
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(r, indent=1, default=float))
        if not args.only:
            (args.out / f"{name}.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
