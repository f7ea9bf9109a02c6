"""analyze / study on shared runs: every number equals a brute-force recomputation with fresh,
separate forwards (full attention patterns, one full forward per patched component), and the
forward-equivalent counts equal the sums derived by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis.cost import ForwardCounter
from hooked_vivit.causal.ablation import PixelBox, ablate_pixels
from tests.conftest import make_hf

TINY = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=6,
)
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def model():
    # float64: the recovery ratios divide by a small clean-minus-corrupted difference, which turns
    # float32 rounding (different but equally valid summation orders) into 1e-5; in float64 any
    # difference beyond 1e-6 is a real one.
    return HookedViViT.from_hf_model(make_hf(TINY, seed=3), dtype=torch.float64)


@pytest.fixture(scope="module")
def analyzed(model):
    pair = pipeline.rendered_pair(model, "bowling", 4_000_000)
    res = pipeline.analyze_pair(model, pair, probe_pairs=5, n_controls=2, progress=False)
    return pair, res


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64), **TOL)


def hand_prices(cfg):
    """FLOPs by hand: (attention over every token, attention of one query row, MLP on every token, MLP on one row)."""
    n, d, a, m = cfg.n_ctx, cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_mlp
    attn = 2 * n * d * a + 4 * n * d * a + 4 * n * n * a + 2 * n * a * d  # q; k, v; q k^T, pattern v; W_O
    attn_row = 2 * d * a + 4 * n * d * a + 4 * n * a + 2 * a * d  # one query row against every key
    return attn, attn_row, 4 * n * d * m, 4 * d * m


def fresh(model, x, names):
    """A separate forward of one clip with its own cache."""
    with torch.inference_mode():
        return model.run_with_cache(x[:1], names_filter=names)


def test_forward_counter_counts_batch_and_blocks(model):
    x = torch.randn(3, 8, 3, 32, 32, dtype=torch.float64)
    with ForwardCounter(model) as cost:
        with torch.inference_mode():
            with cost.section("full"):
                model(x)  # 3 clips x 2 blocks
            with cost.section("started at 1"):
                resid = model(x[:2], stop_at_layer=1)  # 2 x 1
                model(resid, start_at_layer=1)  # 2 x 1
            with cost.section("head only"):
                model(resid, start_at_layer=2)  # no block
            with cost.section("reads a cache"):
                pass
            with cost.section("run_with_hooks"):  # TransformerLens calls model.forward directly here
                model.run_with_hooks(x[:1], fwd_hooks=[("blocks.1.hook_resid_pre", lambda act, hook: act)])  # 1 x 2
            model.run_with_cache(
                x[:1], names_filter=["blocks.0.hook_resid_pre"], stop_at_layer=1
            )  # 1 x 1, outside a section
    s = cost.summary()
    assert s["clip_blocks"] == {
        "full": 6,
        "started at 1": 4,
        "head only": 0,
        "reads a cache": 0,
        "run_with_hooks": 2,
        "other": 1,
    }
    assert s["per_experiment"] == {
        "full": 3.0,
        "started at 1": 2.0,
        "head only": 0.0,
        "reads a cache": 0.0,
        "run_with_hooks": 1.0,
        "other": 0.5,
    }
    assert s["total"] == 6.5 and s["forward_calls"]["started at 1"] == 2 and s["grad_calls"] == 0
    assert s["whole_blocks"]["per_experiment"] == s["per_experiment"]  # whole blocks only: the two counts agree
    # Partial blocks are priced by their FLOPs, by hand: one forward of one clip is L (attn + mlp).
    attn, attn_row, mlp, mlp_row = hand_prices(model.cfg)
    with torch.inference_mode():
        mid = model.run_with_cache(x[:2], names_filter=["blocks.1.hook_resid_mid"])[1]["blocks.1.hook_resid_mid"]
        with ForwardCounter(model) as cost:
            with cost.section("from resid_mid"):
                model(mid, start_at_layer=1, from_resid_mid=True)  # 2 clips x block 1's MLP
            with cost.section("readout row"):
                model(x[:1], query_positions=[0])  # block 0 whole, block 1 for the CLS row
    s = cost.summary()
    assert cost.flops("from resid_mid") == 2 * mlp and cost.flops("readout row") == attn + mlp + attn_row + mlp_row
    assert s["per_experiment"]["readout row"] == (attn + mlp + attn_row + mlp_row) / (2 * (attn + mlp))
    assert s["whole_blocks"]["per_experiment"] == {"from resid_mid": 1.0, "readout row": 1.0}
    assert s["work"]["readout row"] == [["attn", 1, 65, 1], ["attn", 65, 65, 1], ["mlp", 1, 0, 1], ["mlp", 65, 0, 1]]
    assert "forward" not in vars(model)  # the wrapper is gone
    with ForwardCounter(model) as cost:
        model(x[:1])  # autograd on: recorded
    assert cost.grad_calls == 1 and cost.fe() == 1.0


def test_analyze_counts_equal_the_hand_sums(model, analyzed):
    _, res = analyzed
    L = model.cfg.n_layers  # 2
    cost = res["cost"]
    regions = len(res["outcome"]["ablation"]["regions"])
    assert regions == 4  # top class-DLA, top differential-DLA, ball, pins
    # the control boxes matched on size and pixel-difference share (found may fall short of the 2 requested)
    found = [r["controls"]["found"] for r in res["outcome"]["ablation"]["regions"].values()]
    box_found = res["region_ablation"]["controls"]["found"]
    clips = sum(2 * (1 + f) for f in found)  # both clips x (region + its matched boxes)
    # Clip-blocks touched: 2 shared runs x L; recovery: per layer l the attn_out patch from block l's MLP
    # (L - l blocks touched), the mlp_out patch from block l + 1 (L - 1 - l); region ablation: the ablated
    # clip and its matched boxes; outcome: both clips x regions x (region + matched boxes); probes: 5 pairs x 2 clips.
    expected = {
        "shared clean and corrupted runs": 2 * L,
        "deltas": 0,
        "recovery": sum(2 * (L - l) - 1 for l in range(L)),
        "dla": 0,
        "cls_attention": 0,
        "region_ablation": (1 + box_found) * L,
        "outcome": clips * L,
        "probes": 2 * 5 * 2 * L,  # the trained model and its random-weights control, 5 pairs x 2 clips each
    }
    assert cost["clip_blocks"] == expected
    assert cost["whole_blocks"]["per_experiment"] == {k: v / L for k, v in expected.items()}
    # FLOPs: the recovery metric reads every token of the last resid_post, so its runs compute every row;
    # the region ablation and the outcome ablation read only the logits and the readout (CLS) row of the
    # last resid_post, so their last block computes the CLS row only.
    attn, attn_row, mlp, mlp_row = hand_prices(model.cfg)
    one = L * (attn + mlp)
    flops = {
        "shared clean and corrupted runs": 2 * one,
        "deltas": 0,
        "recovery": sum(mlp + 2 * (L - 1 - l) * (attn + mlp) for l in range(L)),
        "dla": 0,
        "cls_attention": 0,
        "region_ablation": (1 + box_found) * ((L - 1) * (attn + mlp) + attn_row + mlp_row),
        "outcome": clips * ((L - 1) * (attn + mlp) + attn_row + mlp_row),
        "probes": 2 * 5 * 2 * one,
    }
    assert cost["per_experiment"] == {k: v / one for k, v in flops.items()}
    assert cost["total"] == pytest.approx(sum(flops.values()) / one, rel=1e-12)
    assert cost["outcome_ablated_clips"] == clips and cost["probe_pairs"] == 5 and cost["grad_calls"] == 0


def run_study(model):
    return pipeline.study_domain(model, "bowling", 3, outcome_pairs=2, probe_pairs=5, n_controls=2, progress=False)


@pytest.fixture(scope="module")
def studied(model):
    return run_study(model)


def test_study_counts_equal_the_hand_sums(model, studied):
    st = studied
    L = model.cfg.n_layers
    region_runs = sum(
        per["class_logit"]["pairs"] for per in st["outcome"]["ablation"].values()
    )  # regions summed over the 2 outcome pairs
    assert region_runs == 8
    # both clips x (region + its matched boxes), over the regions of the 2 outcome pairs
    clips = sum(2 * (1 + f) for found in st["outcome"]["controls_found"].values() for f in found)
    assert sum(len(found) for found in st["outcome"]["controls_found"].values()) == region_runs
    expected = {
        "shared clean and corrupted runs": 3 * 2 * L,
        "deltas": 0,
        "recovery": 3 * sum(2 * (L - l) - 1 for l in range(L)),
        "outcome": clips * L,
        "probes": 2 * 2 * L + 5 * 2 * L,
    }  # probes: pairs 4 and 5 run; 3 come from the shared runs; the random-weights control runs all 5
    assert st["cost"]["clip_blocks"] == expected
    attn, attn_row, mlp, mlp_row = hand_prices(model.cfg)
    one = L * (attn + mlp)
    flops = {
        "shared clean and corrupted runs": 3 * 2 * one,
        "deltas": 0,
        "recovery": 3 * sum(mlp + 2 * (L - 1 - l) * (attn + mlp) for l in range(L)),
        "outcome": clips * ((L - 1) * (attn + mlp) + attn_row + mlp_row),
        "probes": 2 * 2 * one + 5 * 2 * one,
    }
    assert st["cost"]["per_experiment"] == {k: v / one for k, v in flops.items()}
    assert st["cost"]["total"] == pytest.approx(sum(flops.values()) / one, rel=1e-12)
    assert st["cost"]["per_pair"] == st["cost"]["total"] / 3
    # The probe features read from the shared runs equal a fresh probe_features over the same pairs.
    pairs = [
        tuple(
            pipeline.model_pixels(model, f)
            for f in pipeline.synthetic.render_pair("bowling", 6_000_000 + i, num_frames=8, size=32)[:2]
        )
        for i in range(5)
    ]
    ref = ex.layer_probes(model, pairs)
    for kind in ("cls", "mean"):
        close([r["accuracy"] for r in st["probes"][kind]], [r.accuracy for r in getattr(ref, kind)])
        close([r["paired_accuracy"] for r in st["probes"][kind]], [r.paired_accuracy for r in getattr(ref, kind)])


def test_shared_runs_give_the_brute_force_numbers(model, analyzed):
    pair, res = analyzed
    L, cfg = model.cfg.n_layers, model.cfg
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    last = f"blocks.{L - 1}.hook_resid_post"
    # Residual-stream hooks from fused-attention runs (as the old code ran them), full patterns from explicit ones.
    resid = [f"blocks.{l}.hook_{k}" for l in range(L) for k in ex.KINDS]
    lp, cp = fresh(model, pos, resid)
    ln, cn = fresh(model, neg, resid)
    patterns = [f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("pattern", "v")] + ["ln_final.hook_scale"]
    pp, pn = fresh(model, pos, patterns)[1], fresh(model, neg, patterns)[1]
    c = int(lp[0].argmax())
    assert res["prediction"]["positive"]["class"] == c
    close(res["prediction"]["negative"]["logit"], float(ln[0].max()))

    # (a) deltas
    for kind in ex.KINDS:
        d = torch.stack([(cp[f"blocks.{l}.hook_{kind}"] - cn[f"blocks.{l}.hook_{kind}"])[0] for l in range(L)]).norm(
            dim=-1
        )
        close(res["deltas"]["cls"][kind], d[:, 0])
        close(res["deltas"]["tokens"][kind], d.mean(1))

    # (b) one full forward of the negative clip per patched component
    a_pos, a_neg = (
        cp[last][0].float(),
        cn[last][0].float(),
    )  # the recovery metrics compute in float32 (hooked_vivit.causal.metrics)
    delta = a_pos - a_neg
    for l in range(L):
        for comp, key in (("attn_out", "attn"), ("mlp_out", "mlp")):
            name = f"blocks.{l}.hook_{comp}"
            with torch.inference_mode():
                got = {}
                model.run_with_hooks(
                    neg,
                    fwd_hooks=[
                        (name, lambda act, hook: cp[hook.name]),
                        (last, lambda act, hook: got.__setitem__("a", act.clone())),
                    ],
                )
            a = got["a"][0].float()
            v = res["recovery"]["variants"]
            close(v["cls_projection"][key][l], ((a[0] - a_neg[0]) @ delta[0]) / (delta[0] @ delta[0]))
            close(v["token_projection"][key][l], ((a - a_neg) * delta).sum() / delta.pow(2).sum())
            close(v["norm_ratio_cls"][key][l], (a[0] - a_neg[0]).norm() / delta[0].norm())
            close(v["norm_ratio_tokens"][key][l], (a - a_neg).norm() / delta.norm())
            close(v["norm_recovery"][key][l], 1 - (a[0] - a_pos[0]).norm() / delta[0].norm())
            close(res["recovery"]["projection"][key][l], v["cls_projection"][key][l])
            close(res["recovery"]["norm"][key][l], v["norm_recovery"][key][l])

    # (c) DLA from the full pattern of a fresh run
    def dla_terms(cache):
        direction = ex.class_direction(model, c)
        per = []
        for l in range(L):
            ov = torch.einsum("phe,hed->hpd", cache[f"blocks.{l}.attn.hook_v"][0], model.blocks[l].attn.W_O)
            ov = ov - ov.mean(-1, keepdim=True)
            per.append(
                cache[f"blocks.{l}.attn.hook_pattern"][0, :, 0]
                * (ov @ direction / cache["ln_final.hook_scale"][0, 0, 0])
            )
        return torch.stack(per)

    with torch.inference_mode():
        tp, tn = dla_terms(pp), dla_terms(pn)
    close(res["dla"]["per_head"], tp.sum(-1))
    close(res["dla"]["heatmap"], cfg.grid.unflatten(tp.sum((0, 1)))[1])
    close(res["dla"]["logit"], float(lp[0, c]))
    diff = res["outcome"]["differential_dla"]
    close(diff["per_head"], (tp - tn).sum(-1))
    close(diff["logit_difference"], float(lp[0, c] - ln[0, c]))
    close(diff["attention_total"], float((tp - tn).sum()))

    # (d) CLS attention and object shares from the full pattern
    pattern = torch.stack([pp[f"blocks.{l}.attn.hook_pattern"][0, :, 0] for l in range(L)])  # [L, H, P]
    close(res["cls_attention"]["grid"], cfg.grid.unflatten(pattern)[1])
    for name, mask in pair.masks["positive"].items():
        tm = (ex.token_masks(model, mask)[1:] > 0).float()
        close(res["cls_attention"]["object_share"][name], (pattern[..., 1:] * tm).sum(-1) / pattern[..., 1:].sum(-1))
    for obj, tokens in ex.object_token_masks(model, ex.object_masks_union(pair.masks, pair.divergence_frame)).items():
        e = ex.enrichment(pattern[..., 1:], tokens)
        close(res["outcome"]["enrichment"][obj]["CLS attention (positive clip)"]["mean_share"], e.mean_share)

    # (e) region ablation: a fresh unablated and ablated forward
    box = PixelBox(**res["region_ablation"]["box"])
    with torch.inference_mode():
        before, after = model(pos), model(ablate_pixels(pos, box))
    for row in res["region_ablation"]["table"]:
        close([row["before"], row["after"]], [float(before[0, row["class"]]), float(after[0, row["class"]])])
    assert [r["class"] for r in res["region_ablation"]["table"]] == before[0].topk(6).indices.tolist()
    # outcome signal of the unmodified pair
    base = res["outcome"]["ablation"]["base"]
    close(base["class_logit"], float(lp[0, c]))
    close(base["logit_gap"], float(lp[0, c] - ln[0, c]))
    close(base["direction"], 1.0)

    # (f) probe features from fresh, full forwards of each probe pair
    pairs = pipeline.rendered_probe_pairs(model, "bowling", 5, pipeline.ANALYSIS_SEEDS["probe"])
    names = ex.probe_hooks(model)
    cls, preds = [], []
    for p, n in pairs:
        for x in (p, n):
            logits, cache = fresh(model, x, names)
            cls.append(torch.stack([cache[h][0, 0] for h in names]))
            preds.append(int(logits[0].argmax()))
    f = ex.probe_features(model, pairs)
    close(f.cls.transpose(0, 1), torch.stack(cls))
    assert f.predictions.tolist() == preds
    ref = ex.layer_probes(model, pairs, features=f)
    for kind in ("cls", "mean"):
        close([r["paired_accuracy"] for r in res["probes"][kind]], [r.paired_accuracy for r in getattr(ref, kind)])


def numbers(x, path=""):
    """Every number of a results dict by path (the cost record and timings left out)."""
    if isinstance(x, dict):
        return {
            k: v
            for key, val in x.items()
            if key not in ("cost", "seconds")
            for k, v in numbers(val, f"{path}.{key}").items()
        }
    if isinstance(x, (list, tuple)):
        return {k: v for i, val in enumerate(x) for k, v in numbers(val, f"{path}.{i}").items()}
    if isinstance(x, torch.Tensor):
        return numbers(x.tolist(), path)
    if isinstance(x, (bool, int, float, np.number, np.bool_)):
        return {path: float(x)}
    if isinstance(x, np.ndarray):
        return numbers(x.tolist(), path)
    return {}


def test_partial_blocks_change_no_number(model, analyzed, studied):
    """analyze and study with every block run whole (the engine patching by hook from the patched layer,
    as before partial blocks) give the same numbers, to 1e-6 in float64, at the old cost."""
    _, res = analyzed
    pair = pipeline.rendered_pair(model, "bowling", 4_000_000)
    for block in model.blocks:
        block.runs_partially = False
    try:
        assert not model.runs_partial_blocks
        whole = pipeline.analyze_pair(model, pair, probe_pairs=5, n_controls=2, progress=False)
        whole_study = run_study(model)
    finally:
        for block in model.blocks:
            del block.runs_partially
    L = model.cfg.n_layers
    assert whole["cost"]["clip_blocks"]["recovery"] == sum(2 * (L - l) for l in range(L))  # the old count
    assert whole["cost"]["per_experiment"]["recovery"] > res["cost"]["per_experiment"]["recovery"]
    for new, old in ((res, whole), (studied, whole_study)):
        a, b = numbers(new), numbers(old)
        assert a.keys() == b.keys() and len(a) > 500
        keys = sorted(a)
        close([a[k] for k in keys], [b[k] for k in keys])
