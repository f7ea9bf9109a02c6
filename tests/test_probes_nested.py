"""Nested cross-validation of the probe's layer / pooling choice, its control task (Hewitt & Liang
selectivity), on constructed features with known answers."""

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT, synthetic
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis import report as rp
from hooked_vivit.causal.probes import (
    CrossValidatedProbe,
    NestedProbe,
    cross_validated_probe,
    nested_cross_validated_probe,
)
from tests.conftest import make_hf

N_PAIRS, D = 40, 16
LABELS = np.tile([1, 0], N_PAIRS)
GROUPS = np.repeat(np.arange(N_PAIRS), 2)


def noise_configs(rng, n: int) -> dict[str, np.ndarray]:
    return {f"layer {i}": rng.normal(size=(2 * N_PAIRS, D)) for i in range(n)}


def test_nested_cv_picks_the_one_informative_configuration():
    rng = np.random.default_rng(0)
    feats = noise_configs(rng, 6)
    informative = rng.normal(size=(2 * N_PAIRS, D))
    informative[:, 2] += 20 * (LABELS - 0.5)  # the outcome, linearly separable by a wide margin
    feats["layer 3"] = informative
    res = nested_cross_validated_probe(feats, LABELS, GROUPS, k=5, inner_k=4, repeats=3)
    # Every outer fold of every repeat chose it, and the probe it refits is always right.
    assert res.chosen == [["layer 3"] * 5] * 3 and res.chosen_counts == {"layer 3": 15}
    assert (res.accuracy, res.paired_accuracy, res.paired_accuracy_ci95) == (1.0, 1.0, [1.0, 1.0])
    assert (res.pairs, res.folds, res.inner_folds, res.repeats) == (40, 5, 4, 3)
    # The control task (labels swapped within a random half of the pairs) has far less to find on held-out
    # pairs (not exactly nothing: a probe of the real signal scores the share of unswapped pairs).
    assert res.control_paired_accuracy < 0.75 and res.selectivity > 0.25
    assert res.selectivity == pytest.approx(1.0 - res.control_accuracy)
    js = res.to_json()
    assert js["chosen_counts"] == [{"configuration": "layer 3", "folds": 15}] and js["selectivity"] == res.selectivity
    assert js["configurations"] == [f"layer {i}" for i in range(6)]


def test_nested_cv_of_one_configuration_is_the_cross_validated_probe():
    # With nothing to choose, the outer loop is cross_validated_probe's: same folds, same control labels.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2 * N_PAIRS, D))
    x[:, 0] += 1.0 * (LABELS - 0.5)
    one = nested_cross_validated_probe({"only": x}, LABELS, GROUPS, repeats=3, seed=7)
    ref = cross_validated_probe(x, LABELS, GROUPS, repeats=3, seed=7)
    for key in ("accuracy", "paired_accuracy", "control_accuracy", "control_paired_accuracy"):
        assert getattr(one, key) == pytest.approx(getattr(ref, key), abs=1e-12), key
    assert one.paired_accuracy_ci95 == pytest.approx(ref.paired_accuracy_ci95, abs=1e-12)


def test_nested_estimate_on_noise_is_at_chance_and_below_the_naive_argmax():
    rng = np.random.default_rng(2)
    feats = noise_configs(rng, 10)
    nested = nested_cross_validated_probe(feats, LABELS, GROUPS, repeats=3, seed=0)
    per_config = [cross_validated_probe(v, LABELS, GROUPS, repeats=3, seed=0).paired_accuracy for v in feats.values()]
    naive = max(per_config)  # today's "best": the argmax over configurations, its own fold's winner
    # Fixed seeds, exact values: the argmax is inflated well above chance, the nested estimate is not.
    assert naive == pytest.approx(NAIVE_ON_NOISE, abs=1e-12)
    assert nested.paired_accuracy == pytest.approx(NESTED_ON_NOISE, abs=1e-12)
    assert nested.paired_accuracy < naive
    assert nested.paired_accuracy_ci95[0] < 0.5 < nested.paired_accuracy_ci95[1]
    assert naive > 0.5 and abs(nested.paired_accuracy - 0.5) < naive - 0.5
    assert nested.selectivity == pytest.approx(nested.accuracy - nested.control_accuracy)
    assert abs(nested.selectivity) < 0.15  # no signal: nothing selective


def test_selectivity_on_a_constructed_case():
    # Real labels: readable from one feature (Bayes accuracy 97.7 %); the control task's labels are a
    # coin flip per pair, which no probe can predict on pairs it never saw: selectivity ~ accuracy - 0.5.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2 * N_PAIRS, D))
    x[:, 5] += 4 * (LABELS - 0.5)
    res = nested_cross_validated_probe({"a": x, "b": rng.normal(size=(2 * N_PAIRS, D))}, LABELS, GROUPS, repeats=3)
    assert res.accuracy > 0.85 and abs(res.control_accuracy - 0.5) < 0.12
    assert res.selectivity == pytest.approx(res.accuracy - res.control_accuracy)
    assert res.selectivity == pytest.approx(SELECTIVITY, abs=1e-12)
    alone = nested_cross_validated_probe({"a": x}, LABELS, GROUPS, repeats=3, control=False)
    assert alone.selectivity is None and "control_chosen" not in alone.to_json()


def test_nested_cv_refuses_too_few_pairs_or_inner_folds():
    x = np.zeros((8, 3))
    with pytest.raises(ValueError, match="at least"):
        nested_cross_validated_probe({"a": x}, np.tile([1, 0], 4), np.repeat(np.arange(4), 2), k=5)
    with pytest.raises(ValueError, match="inner"):
        nested_cross_validated_probe(
            {"a": np.zeros((20, 3))}, np.tile([1, 0], 10), np.repeat(np.arange(10), 2), inner_k=1
        )


def test_layer_probes_nest_the_choice_and_read_a_random_weights_model():
    cfg = dict(image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=2)
    model = HookedViViT.from_hf_model(make_hf({**cfg, "num_attention_heads": 2, "intermediate_size": 64}, seed=3))
    pairs = [
        tuple(pipeline.model_pixels(model, v) for v in synthetic.render_pair("golf", s, num_frames=8, size=32)[:2])
        for s in range(6)
    ]
    res = ex.layer_probes(model, pairs)
    names = [f"{k} {n}" for k in ("cls", "mean") for n in res.layers]
    assert res.nested.configurations == names and res.nested.pairs == 6 and res.nested.repeats == 2
    assert all(c in names for rep in res.nested.chosen for c in rep) and len(res.nested.chosen[0]) == 5
    f = ex.probe_features(model, pairs)
    again = nested_cross_validated_probe(
        {f"{k} {n}": v for k in ("cls", "mean") for n, v in zip(res.layers, getattr(f, k))},
        f.labels,
        f.groups,
        repeats=2,
    )
    assert res.nested == again
    # The random-weights control: the same class and config, weights drawn afresh by init_weights(seed).
    rand = ex.random_weights_model(model, 0)
    assert type(rand) is type(model) and rand.cfg == model.cfg
    assert not torch.equal(rand.blocks[0].attn.W_Q, model.blocks[0].attn.W_Q)
    assert torch.equal(rand.blocks[0].attn.W_Q, ex.random_weights_model(model, 0).blocks[0].attn.W_Q)
    g = ex.probe_features(rand, pairs)
    assert res.random_weights == nested_cross_validated_probe(
        {f"{k} {n}": v for k in ("cls", "mean") for n, v in zip(res.layers, getattr(g, k))},
        g.labels,
        g.groups,
        repeats=2,
    )
    js = res.to_json()
    assert js["nested"] == res.nested.to_json() and js["random_weights"]["seed"] == 0
    assert js["pixel_ceiling"] == res.pixel_ceiling()
    without = ex.layer_probes(model, pairs, features=f, random_weights=False)
    assert without.random_weights is None and "random_weights" not in without.to_json()
    assert "random_weights" not in without.pixel_ceiling()


def _cv(paired: float, ci: list[float]) -> CrossValidatedProbe:
    return CrossValidatedProbe(6, 5, 5, 4, 2, 1.0, paired, ci, paired, ci)


def _nested(paired: float, ci: list[float]) -> NestedProbe:
    return NestedProbe(["cls resid_pre 0"], 6, 5, 4, 2, paired, ci, paired, ci, [["cls resid_pre 0"] * 5] * 2)


@pytest.mark.parametrize(
    "pixels, probe, random, fingerprint, above_random",
    [
        ((1.0, [1.0, 1.0]), (1.0, [1.0, 1.0]), 0.5, True, True),  # the default report's case: pixels decode it all
        ((0.9, [0.8, 1.0]), (1.0, [0.95, 1.0]), 0.5, False, True),  # the probe exceeds the pixels' interval
        ((0.6, [0.45, 0.75]), (0.55, [0.4, 0.7]), 0.5, False, False),  # pixels not above chance: no fingerprint
        ((0.97, [0.9, 1.0]), (0.99, [0.96, 1.0]), 0.99, True, False),  # pixels within the probe's interval
    ],
)
def test_pixel_ceiling_is_a_computed_comparison(pixels, probe, random, fingerprint, above_random):
    lp = ex.LayerProbes(
        layers=["resid_pre 0"],
        pairs=6,
        folds=5,
        repeats=5,
        method="",
        cls=None,
        mean=[_cv(*probe)],
        pixels=_cv(*pixels),
        pixels_mean=_cv(0.5, [0.3, 0.7]),
        nested=_nested(*probe),
        random_weights=_nested(random, [random, random]),
        random_weights_seed=0,
    )
    c = lp.pixel_ceiling()
    assert c["baseline"] == "pixels" and c["fingerprint"] is fingerprint and c["above_random_weights"] is above_random
    assert c["pixels"] == pixels[0] and c["probe_ci95"] == probe[1]
    # The report's words follow the computed comparison, and every number it writes is one of results.json.
    data = {"probes": {**lp.to_json(), "random_weights": {"seed": 0, **lp.random_weights.to_json()}}}
    cap = rp.Caption(data)
    text = pipeline.nested_probe_phrase(cap, "probes", data["probes"])
    assert ("decodable from pixels alone: a fingerprint" in text.lower()) is fingerprint
    assert ("interval lies above it" in text) is above_random
    written = sorted(rp.numbers_in(text, ("Hewitt & Liang",)))
    assert written == sorted(
        t for path, fmt in cap.numbers for t in rp.numbers_in(rp.format_number(rp.lookup(data, path), fmt))
    )


# Fixed-seed values (counts of pairs over 40 pairs x 3 repeats, so exact in any float order).
NAIVE_ON_NOISE = 71 / 120  # the best of 10 noise configurations' cross-validated paired accuracies
NESTED_ON_NOISE = 55 / 120
SELECTIVITY = 0.9125 - 0.5291666666666666


def test_forward_counter_counts_the_random_weights_model_beside_the_model():
    from hooked_vivit.analysis.cost import ForwardCounter

    cfg = dict(image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=2)
    model = HookedViViT.from_hf_model(make_hf({**cfg, "num_attention_heads": 2, "intermediate_size": 64}, seed=3))
    rand = ex.random_weights_model(model, 1)
    x = torch.randn(2, 8, 3, 32, 32)
    with ForwardCounter(model) as cost, cost.section("probes"), cost.also(rand):
        model(x)
        rand(x)
    assert cost.clip_blocks("probes") == 2 * 2 * 2 and "forward" not in vars(rand)  # unwrapped on exit
    other = HookedViViT.from_hf_model(make_hf({**cfg, "num_attention_heads": 4, "intermediate_size": 64}, seed=3))
    with ForwardCounter(model) as cost, pytest.raises(ValueError, match="same config"), cost.also(other):
        pass


def test_batched_fit_survives_set_num_threads():
    # Batched LU through MKL failed for ~200-unknown Newton systems once torch.set_num_threads had been
    # called (tests and benchmarks call it); the fitter's Cholesky solve does not.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        rng = np.random.default_rng(4)
        n = 100
        labels, groups = np.tile([1, 0], n), np.repeat(np.arange(n), 2)
        x = rng.normal(size=(2 * n, 400))
        x[:, 0] += 2 * (labels - 0.5)
        res = cross_validated_probe(x, labels, groups, repeats=1)
        assert np.isfinite(res.accuracy) and res.paired_accuracy > 0.6
    finally:
        torch.set_num_threads(threads)
