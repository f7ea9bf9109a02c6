"""The benchmarks' own machinery still runs against the current library (no timings here: those live
in benchmarks/): the analysis-cost benchmark's "before" code, and the bridge side of benchmarks.run."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import torch

from hooked_vivit.compat import TL_MAJOR
from hooked_vivit.testing import make_hf

ROOT = Path(__file__).resolve().parent.parent


def has_commit(commit: str) -> bool:
    done = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def test_analysis_cost_before_and_after_agree():
    """The benchmark's "before" (the pipeline, experiments, patching and probes of commit BEFORE, run on
    today's core) loads and runs; its results.json numbers equal today's in float64, and today's code
    costs no more forward-equivalents in any experiment."""
    from benchmarks import analysis_cost

    if not has_commit(analysis_cost.BEFORE):
        pytest.skip(f"this clone lacks commit {analysis_cost.BEFORE} (a shallow clone)")
    args = argparse.Namespace(only="analyze, no", probe_pairs=0, controls=2, study_pairs=5, study_outcome_pairs=1)
    entry = analysis_cost.measure(args)["analyze, no probes"]
    agreement = entry["agreement_float64"]
    assert agreement["same_keys"] and agreement["above_1e-6"] == 0 and agreement["numbers"] > 1000
    before, after = entry["before"]["fe_vivit_b"], entry["after"]["fe_vivit_b"]
    assert set(before) == set(after)
    # The region ablation now also runs its matched control boxes (issue 30): more clips, each cheaper.
    assert all(after[k] <= before[k] + 1e-12 for k in before if k != "region_ablation")
    # The outcome ablation's clips compute only the CLS row of the last block: (L - 1 + r) / L each; "after"
    # runs the matched boxes it found (at most the 2 asked for per region), "before" 2 random boxes per region.
    clips = 2 * entry["outcome_regions"] * (1 + args.controls)
    assert before["outcome"] == pytest.approx(clips)
    per_clip = after["region_ablation"] / entry["region_ablation_clips_after"]
    assert per_clip < before["region_ablation"] == 1.0
    assert entry["outcome_clips_after"] <= clips
    assert after["outcome"] == pytest.approx(entry["outcome_clips_after"] * per_clip)


@pytest.mark.skipif(TL_MAJOR < 4, reason="TransformerBridge is TransformerLens 4.x")
def test_bridge_cache_filter_drops_only_the_attention_maps():
    """Under eager attention the bridge fires its score and pattern hooks; the filter drops those alone."""
    from benchmarks.run import bridge_without_maps, make_bridge

    kw = dict(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=24, num_hidden_layers=2)
    hf = make_hf({**kw, "num_attention_heads": 3, "intermediate_size": 48, "num_labels": 7}, attn="eager")
    bridge = make_bridge(hf)
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.inference_mode():
        _, everything = bridge.run_with_cache(x)
        _, cache = bridge.run_with_cache(x, names_filter=bridge_without_maps)
    maps = {n for n in everything.keys() if n.endswith((".hook_pattern", ".hook_attn_scores"))}
    assert maps == {f"blocks.{l}.attn.{h}" for l in range(2) for h in ("hook_pattern", "hook_attn_scores")}
    assert set(cache.keys()) == set(everything.keys()) - maps
