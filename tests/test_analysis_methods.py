"""Issue 11's methods on constructed inputs with known answers: every recovery variant, enrichment,
mask ablation and its random-box control, the outcome signal, the batched probe fitter against
L-BFGS, the cross-validated probe, and the held-out analysis seeds."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.causal import statistics
from hooked_vivit.causal.ablation import ablate_pixel_mask, random_boxes_like, token_pixel_mask
from hooked_vivit.causal.metrics import SignalRecovery, norm_ratio
from hooked_vivit.causal.probes import bootstrap_ci, cross_validated_probe, fit_logistic, fit_logistic_batched
from hooked_vivit.organism import checkpoint_path
from hooked_vivit.organism import data as od
from tests.conftest import make_hf
from tests.tolerances import fp32_input_error, fp32_tol

ROOT = Path(__file__).resolve().parent.parent
SQUARE = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=6,
)


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_hf_model(make_hf(SQUARE, seed=3))


@pytest.fixture(scope="module")
def model64():
    """The same model in float64, for the exact claims (tests/tolerances.py)."""
    return HookedViViT.from_hf_model(make_hf(SQUARE, seed=3), dtype=torch.float64)


# ----------------------------------------------------------------------------------- recovery variants
def test_every_recovery_variant_on_constructed_activations():
    clean = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, tokens (CLS, one patch), d]
    corrupt = torch.zeros(1, 2, 2)
    patched = torch.stack(
        [
            clean[0],  # restored
            corrupt[0],  # nothing
            2 * clean[0],  # overshoot along the difference
            -clean[0],  # moved as far as clean, the opposite way
            torch.tensor([[0.0, 3.0], [0.0, 0.0]]),  # moved 3x as far, orthogonally, at CLS only
        ]
    )
    got = ex.recovery_variants(patched, clean, corrupt)
    s10 = float(np.sqrt(10))
    expected = {
        "cls_projection": [1, 0, 2, -1, 0],
        "token_projection": [1, 0, 2, -1, 0],
        "norm_ratio_cls": [1, 0, 2, 1, 3],
        "norm_ratio_tokens": [1, 0, 2, 1, 3 / np.sqrt(2)],
        "norm_recovery": [1, 0, 0, -1, 1 - s10],
    }
    assert set(got) == set(expected) == set(ex.RECOVERY_VARIANTS)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, atol=1e-6, err_msg=name)
    # Rows 3 and 4: a norm ratio of 1 or 3 while nothing was restored: a ratio above 1 is not sufficiency.
    assert norm_ratio(patched[4], clean[0], corrupt[0]) == pytest.approx(3 / np.sqrt(2))
    with pytest.raises(ValueError, match="kind must be one of"):
        SignalRecovery("h", clean, corrupt, kind="ratio")


# Every recovery variant of (patched a, clean c, corrupt k), [tokens, d] each; "cls" ones at token 0.
VARIANTS = {
    "cls_projection": lambda a, c, k: (a[0] - k[0]) @ (c[0] - k[0]) / (c[0] - k[0]).pow(2).sum(),
    "token_projection": lambda a, c, k: ((a - k) * (c - k)).sum() / (c - k).pow(2).sum(),
    "norm_ratio_cls": lambda a, c, k: (a[0] - k[0]).norm() / (c[0] - k[0]).norm(),
    "norm_ratio_tokens": lambda a, c, k: (a - k).norm() / (c - k).norm(),
    "norm_recovery": lambda a, c, k: 1 - (a[0] - c[0]).norm() / (k[0] - c[0]).norm(),
}


def test_component_recovery_variants_match_hand_made_patches(model64):
    """In float64; the library reads the residuals as float32, so each variant is compared within
    its own float32 rounding times its conditioning (fp32_input_error, tests/tolerances.py)."""
    from hooked_vivit.analysis.pipeline import rendered_pair

    model = model64
    pair = rendered_pair(model, "golf", 4_000_011)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    rec = ex.component_recovery(model, pos, neg)
    _, clean = model.run_with_cache(pos)
    _, corrupt = model.run_with_cache(neg)
    last = "blocks.1.hook_resid_post"
    for layer in range(2):
        for comp in ("attn", "mlp"):
            grabbed = {}
            model.run_with_hooks(
                neg,
                fwd_hooks=[
                    (f"blocks.{layer}.hook_{comp}_out", lambda a, hook: clean[hook.name]),
                    (last, lambda a, hook: grabbed.setdefault("a", a.clone())),
                ],
            )
            a, c, k = (t[0].detach() for t in (grabbed["a"], clean[last], corrupt[last]))
            for name, f in VARIANTS.items():
                want = pytest.approx(float(f(a, c, k)), abs=fp32_input_error(f, a, c, k))
                assert rec["variants"][name][comp][layer] == want, (name, comp, layer)
    assert rec["projection"] == rec["variants"]["cls_projection"] and rec["norm"] == rec["variants"]["norm_recovery"]


# ------------------------------------------------------------------------------- enrichment, masks
def test_enrichment_share_base_rate_and_ratio():
    e = ex.enrichment(torch.tensor([0.5, 0.25, 0.25, 0.0]), torch.tensor([True, False, False, False]))
    none = {"base_rate_differing": None, "enrichment_differing": None}  # no differing tokens given
    assert e.to_json() == {"share": 0.5, "mean_share": 0.5, "base_rate": 0.25, "enrichment": 2.0, **none}
    e2 = ex.enrichment(
        torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([True, True, False, False])
    )
    assert e2.share.tolist() == [0.5, 0.0] and (e2.mean_share, e2.base_rate, e2.enrichment) == (0.25, 0.5, 0.5)
    assert e2.to_json() == {"share": [0.5, 0.0], "mean_share": 0.25, "base_rate": 0.5, "enrichment": 0.5, **none}
    assert ex.enrichment(torch.ones(3), torch.zeros(3, dtype=torch.bool)).enrichment is None  # no object tokens


def test_enrichment_against_the_differing_tokens():
    """The object is 2 of 8 tokens (all-token base rate 1/4) but 2 of the 4 tokens that differ between the
    clips (base rate 1/2): 3/4 of the weight on it is an enrichment of 3 over all tokens, 1.5 over what differs."""
    w = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0])
    on = torch.tensor([True, True] + [False] * 6)
    differing = torch.tensor([True] * 4 + [False] * 4)
    e = ex.enrichment(w, on, differing)
    assert (e.mean_share, e.base_rate, e.enrichment) == (0.75, 0.25, 3.0)
    assert (e.base_rate_differing, e.enrichment_differing) == (0.5, 1.5)
    assert e.to_json()["base_rate_differing"] == 0.5 and e.to_json()["enrichment_differing"] == 1.5
    # the object holds none of the differing tokens: base rate 0, no ratio; no token differs: neither
    off = ex.enrichment(w, on, torch.tensor([False] * 4 + [True] * 2 + [False] * 2))
    assert (off.base_rate_differing, off.enrichment_differing, off.enrichment) == (0.0, None, 3.0)
    nothing = ex.enrichment(w, on, torch.zeros(8, dtype=torch.bool))
    assert (nothing.base_rate_differing, nothing.enrichment_differing) == (None, None)
    with pytest.raises(ValueError, match="non-negative"):
        ex.enrichment(torch.tensor([-1.0, 1.0]), torch.tensor([True, False]))


def test_mask_ablation_token_mask_and_equal_size_random_boxes(model):
    x = torch.randn(2, 8, 3, 32, 32)
    mask = np.zeros((8, 32, 32), dtype=bool)
    mask[2, 3:7, 5:9] = True
    out = ablate_pixel_mask(x, mask)
    assert (out[:, 2, :, 3:7, 5:9] == 0).all()
    keep = torch.from_numpy(~mask)[None, :, None].expand_as(x)
    assert torch.equal(out[keep], x[keep])
    grid = model.cfg.grid
    tokens = [grid.index(1, 0, 2), grid.index(3, 3, 3)]
    tm = token_pixel_mask(grid, tokens, 8, 32, 32)
    assert tm.sum() == 2 * 2 * 8 * 8 and tm[2:4, 0:8, 16:24].all() and tm[6:8, 24:32, 24:32].all()
    region = np.zeros((8, 32, 32), dtype=bool)
    region[4, :4, :4] = True  # 16 px
    region[5, :3, :3] = True  # 9 px
    boxes = random_boxes_like(region, 25, seed=1)
    assert boxes.shape == (25, 8, 32, 32)
    np.testing.assert_array_equal(boxes.reshape(25, 8, -1).sum(-1), np.tile([0, 0, 0, 0, 16, 9, 0, 0], (25, 1)))
    assert len({tuple(np.argwhere(b[4])[0]) for b in boxes}) > 10  # the boxes move


def test_logits_and_readout_equal_a_cached_run(model):
    """The logits and the readout row of the last resid_post, from a run whose last block computes only
    token 0, equal a whole run's; a hook on the last block, or mean pooling, takes the whole run."""
    from hooked_vivit import HookedVideoMAE
    from hooked_vivit.analysis.cost import ForwardCounter
    from tests.test_videomae import CONFIGS
    from tests.test_videomae import make_hf as make_videomae
    from tests.test_videomae import pixels as videomae_pixels

    x = torch.randn(3, 8, 3, 32, 32)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.inference_mode():
        want_logits, cache = model.run_with_cache(x, names_filter=[last])
        with ForwardCounter(model) as cost:
            logits, r = ex.logits_and_readout(model, x)
        assert torch.allclose(logits, want_logits, atol=1e-5) and torch.allclose(r, cache[last][:, 0], atol=1e-5)
        # Per block, (attention query rows, keys) and MLP rows: the last block computed the CLS row alone.
        work = [(kind, rows, keys) for _, kind, _, rows, keys in cost.work]
        n = model.cfg.n_ctx
        assert work == [("attn", n, n), ("mlp", n, 0)] * (model.cfg.n_layers - 1) + [("attn", 1, n), ("mlp", 1, 0)]
        seen = []
        with model.hooks(fwd_hooks=[(last, lambda act, hook: seen.append(act.shape))]):
            logits2, r2 = ex.logits_and_readout(model, x)
        assert seen == [cache[last].shape]  # the hook saw every row: the whole run
        assert torch.equal(logits2, want_logits) and torch.equal(r2, cache[last][:, 0])
        kw = CONFIGS["mean_nonsquare_5frames"]
        mae = HookedVideoMAE.from_hf_model(make_videomae(kw))
        xm = videomae_pixels(kw)
        ml, mcache = mae.run_with_cache(xm, names_filter=[f"blocks.{mae.cfg.n_layers - 1}.hook_resid_post"])
        got_l, got_r = ex.logits_and_readout(mae, xm)
    assert torch.equal(got_l, ml) and torch.equal(
        got_r, mcache[f"blocks.{mae.cfg.n_layers - 1}.hook_resid_post"].mean(1)
    )


def test_outcome_signal_and_region_ablation_against_brute_force(model64):
    """In float64 (tests/tolerances.py). OutcomeSignal reads logits as float32, and this pair's logit
    gap is 0.2 % of its logits: the relative change carries float32 rounding times that conditioning
    (~500), which fp32_input_error bounds (a fixed rel=1e-4 sat at it, and AVX2 / AVX-512 crossed it)."""
    model = model64
    pair = pipeline.rendered_pair(model, "bowling", 4_000_003)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    c = 2
    sig = ex.OutcomeSignal(model, pos, neg, c)
    with torch.inference_mode():
        lp, ln = model(pos)[0, c], model(neg)[0, c]
    # direction = delta . delta / ||delta||^2 in float32, two reductions over d_model in other orders
    assert float(sig.base.direction[0]) == pytest.approx(1.0, abs=fp32_tol(1.0, model.cfg.d_model))
    assert float(sig.base.logit_gap[0]) == pytest.approx(float(lp - ln), abs=fp32_input_error(torch.sub, lp, ln))
    assert float(sig.base.class_logit[0]) == pytest.approx(float(lp), abs=fp32_input_error(torch.clone, lp))
    same = sig.measure(neg, neg)
    assert float(same.direction[0]) == pytest.approx(0.0, abs=1e-6) and float(same.logit_gap[0]) == 0.0
    region = np.zeros((8, 32, 32), dtype=bool)
    region[pair.divergence_frame :, 8:20, 4:30] = True
    ablation = ex.outcome_region_ablation(model, pos, neg, sig, {"r": region}, n_controls=3, seed=5)
    res = ablation.regions["r"]
    # the controls: boxes matched on size and on share of the pair's pixel difference (statistics.matched_boxes)
    matched = statistics.matched_boxes(region, statistics.pixel_difference(pos, neg), 3, seed=5)
    assert matched.found == 3 and res.controls == {**matched.to_json(), "used": matched.found} and not res.descriptive
    boxes = matched.masks
    with torch.inference_mode():  # the class logit of each ablated clip: the region, then the 3 boxes
        ap, an = (torch.stack([model(ablate_pixel_mask(x, m))[0, c] for m in [region, *boxes]]) for x in (pos, neg))

    def changes(ap, an, lp, ln):  # the logit gap's change, region first
        return (ap - an) - (lp - ln)

    want = {
        "change": lambda *v: changes(*v)[0],
        "control_mean": lambda *v: changes(*v)[1:].mean(),
        "control_std": lambda *v: changes(*v)[1:].std(),
        "relative_change": lambda *v: changes(*v)[0] / (v[2] - v[3]),
    }
    for key, f in want.items():
        value = float(f(ap, an, lp, ln))
        assert getattr(res.logit_gap, key) == pytest.approx(value, abs=fp32_input_error(f, ap, an, lp, ln)), key
    ch = changes(ap, an, lp, ln).numpy()
    # Monte-Carlo p-value: (k + 1)/(n + 1), k of the n = 3 boxes at least as large in magnitude (was k/n, which can be 0)
    k = int((np.abs(ch[1:]) >= abs(ch[0])).sum())
    assert res.logit_gap.control_p == (k + 1) / 4 >= 1 / 4
    assert res.pixels == int(region.sum()) and res.frames == [pair.divergence_frame, 7]
    # results.json's layout: the unablated signals (direction first), then per region its size and each signal.
    assert ablation.to_json() == {
        "n_controls": 3,
        "matching": statistics.matching_rule(),
        "mode": "zero",
        "base": {k: float(getattr(sig.base, k)[0]) for k in ("direction", "logit_gap", "class_logit")},
        "regions": {
            "r": {
                "pixels": res.pixels,
                "control_pixels_mean": res.control_pixels_mean,
                "frames": res.frames,
                "controls": {**matched.to_json(), "used": 3},
                "descriptive": False,
                **{
                    s: {
                        "change": getattr(res, s).change,
                        "control_mean": getattr(res, s).control_mean,
                        "control_std": getattr(res, s).control_std,
                        "control_p": getattr(res, s).control_p,
                        "sequential": None,
                        "relative_change": getattr(res, s).relative_change,
                    }
                    for s in ("class_logit", "logit_gap", "direction")
                },
            }
        },
    }
    assert list(ablation.to_json()["base"]) == ["direction", "logit_gap", "class_logit"]


def test_differential_dla_cancels_what_both_clips_share(model):
    pair = pipeline.rendered_pair(model, "bowling", 4_000_004)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    same = ex.differential_token_dla(model, pos, pos, 1)
    assert same.attention_total == 0.0 and np.abs(same.heatmap).max() == 0.0 and same.logit_difference == 0.0
    d = ex.differential_token_dla(model, pos, neg, 1)
    _, cp = model.run_with_cache(pos)
    _, cn = model.run_with_cache(neg)
    direction = ex.class_direction(model, 1)
    heads = [
        (c.stack_head_results(layer=-1, pos_slice=0, apply_ln=True)[:, 0] @ direction).view(2, 2) for c in (cp, cn)
    ]
    torch.testing.assert_close(torch.tensor(d.per_head), heads[0] - heads[1], atol=1e-5, rtol=1e-4)
    # results.json holds every number but the [layer, head, token] terms, each the terms' sum it names.
    grid_sum = model.cfg.grid.unflatten(d.terms.sum((0, 1)))[1]
    assert d.to_json() == {
        "class": 1,
        "class_name": model.cfg.id2label[1],
        "logit_difference": d.logit_difference,
        "attention_total": float(d.terms.sum()),
        "per_head": d.terms.sum(-1).tolist(),
        "cls_source": float(d.terms.sum((0, 1))[0]),
        "heatmap": grid_sum.tolist(),
        "per_slot_abs": grid_sum.abs().sum((1, 2)).tolist(),
    }


# ---------------------------------------------------------------------------------------------- probes
def test_batched_newton_fitter_matches_lbfgs_narrow_and_wide():
    rng = np.random.default_rng(0)
    for d in (6, 150):  # fewer and more features than training rows
        x = torch.tensor(rng.normal(size=(60, d)))
        y = torch.tensor((rng.random(60) < 0.5).astype(float))
        x[:, 0] += 2 * y
        train = torch.tensor(rng.random(60) < 0.8)
        w, b = fit_logistic(x[train], y[train], steps=500)
        wb, bb = fit_logistic_batched(torch.stack([x, x]), torch.stack([y, 1 - y]), torch.stack([train, train]))
        torch.testing.assert_close(wb[0], w, atol=2e-4, rtol=0)
        assert float(bb[0]) == pytest.approx(float(b), abs=5e-4)
        torch.testing.assert_close(
            wb[1], -w, atol=2e-4, rtol=0
        )  # flipped labels: the mirrored problem, solved alongside


def test_bootstrap_interval_known_cases():
    lo, hi = bootstrap_ci(np.full(30, 0.7))
    assert lo == hi == pytest.approx(0.7)
    lo, hi = bootstrap_ci(np.tile([0.0, 1.0], 50))
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02) and hi == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)


def test_cross_validated_probe_planted_signals():
    rng = np.random.default_rng(1)
    n, d = 100, 8
    labels = np.tile([1, 0], n)
    groups = np.repeat(np.arange(n), 2)
    # Minimal pairs: the two clips share everything (a per-pair offset far larger than the outcome) but one
    # small outcome feature. Across pairs the outcome is near chance; within each pair it is always right.
    feats = np.repeat(rng.normal(scale=3, size=(n, d)), 2, 0) + 0.1 * rng.normal(size=(2 * n, d))
    feats[:, 0] += 0.5 * (labels - 0.5)
    res = cross_validated_probe(feats, labels, groups, k=5, repeats=5)
    assert res.pairs == 100 and res.train_pairs_per_fold == 80 and res.test_pairs_per_fold == 20
    assert res.paired_accuracy == 1.0 and res.paired_accuracy_ci95 == [1.0, 1.0]
    assert res.accuracy < 0.6
    assert res.control_paired_accuracy < 0.65 and res.selectivity == res.accuracy - res.control_accuracy
    strong = rng.normal(size=(2 * n, d))
    strong[:, 1] += 20 * (labels - 0.5)
    s = cross_validated_probe(strong, labels, groups)
    assert s.accuracy == 1.0 and s.paired_accuracy == 1.0 and s.accuracy_ci95 == [1.0, 1.0]
    assert s.to_json() == {
        "pairs": 100,
        "folds": 5,
        "repeats": 5,
        "train_pairs_per_fold": 80,
        "test_pairs_per_fold": 20,
        "train_accuracy": 1.0,
        "accuracy": 1.0,
        "accuracy_ci95": [1.0, 1.0],
        "paired_accuracy": 1.0,
        "paired_accuracy_ci95": [1.0, 1.0],
        "control_accuracy": s.control_accuracy,
        "control_accuracy_ci95": s.control_accuracy_ci95,
        "control_paired_accuracy": s.control_paired_accuracy,
        "control_paired_accuracy_ci95": s.control_paired_accuracy_ci95,
        "selectivity": 1.0 - s.control_accuracy,
    }
    # Without the control task the probe's numbers are the same; results.json then says None for its two.
    alone = cross_validated_probe(strong, labels, groups, control=False)
    assert (alone.accuracy, alone.paired_accuracy_ci95, alone.control_paired_accuracy) == (1.0, [1.0, 1.0], None)
    assert {k: alone.to_json()[k] for k in ("control_accuracy", "selectivity")} == {
        "control_accuracy": None,
        "selectivity": None,
    } and "control_accuracy_ci95" not in alone.to_json()
    noise = cross_validated_probe(rng.normal(size=(2 * n, d)), labels, groups)
    assert noise.paired_accuracy_ci95[0] < 0.5 < noise.paired_accuracy_ci95[1]
    with pytest.raises(ValueError, match="exactly two clips"):
        cross_validated_probe(feats[:3], labels[:3], groups[:3], k=1)


# ----------------------------------------------------------------------------------- held-out seeds
def test_analysis_seeds_are_disjoint_from_every_recorded_organism_range():
    recorded = od.recorded_seed_ranges()
    path = checkpoint_path()
    metrics = json.loads((path / "metrics.json").read_text())
    probes = json.loads((path / "probes.json").read_text())
    assert recorded["used"] == od.used_seed_ranges(metrics, probes)  # the record is what the checkpoint's files say
    assert {r["use"].split(" ")[0] for r in recorded["used"]} == {"train", "val", "test", "probe"}
    lo, hi = od.ANALYSIS_RANGE
    assert (recorded["analysis"]["first"], recorded["analysis"]["last"]) == (lo, hi - 1)
    for r in recorded["used"]:
        assert r["last"] < lo or r["first"] >= hi, r
    for s in od.ANALYSIS_SEEDS.values():
        assert lo <= s < hi and od.seed_use(s, recorded["used"]) is None
    # The study's and the analyses' default pairs all lie inside the range.
    assert lo <= od.ANALYSIS_SEEDS["study"] + 10_000 < hi


def test_defaults_readme_and_notebooks_use_held_out_seeds():
    from hooked_vivit.cli import build_parser

    lo, hi = od.ANALYSIS_RANGE
    import argparse

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("analyze", "render"):
        assert lo <= subparsers.choices[cmd].get_default("seed") < hi, cmd
    texts = {
        "README.md": (ROOT / "README.md").read_text(),
        "make_notebooks.py": (ROOT / "notebooks" / "make_notebooks.py").read_text(),
    }
    for name, text in texts.items():
        # Render seeds of the organism's clips; the planted models (hooked_vivit.planted, `pm.`) draw their own.
        text = "\n".join(line for line in text.splitlines() if "pm." not in line)
        seeds = [int(s.replace("_", "")) for s in re.findall(r"(?:--seed |seed0?=)([\d_]+)", text)]
        assert seeds, name
        for s in seeds:
            assert lo <= s < hi, (name, s)


def test_a_training_seed_warns(model):
    with pytest.warns(UserWarning, match="train"):
        assert pipeline.check_seed(0) == "train (stage 1)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipeline.check_seed(od.ANALYSIS_SEEDS["pair"]) is None
