"""Nested cross-validation of the probe's layer / pooling choice, its control task (Hewitt & Liang
selectivity), on constructed features with known answers."""

import numpy as np
import pytest

from hooked_vivit.causal.probes import cross_validated_probe, nested_cross_validated_probe

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
    assert js["chosen_counts"] == {"layer 3": 15} and js["selectivity"] == res.selectivity
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


# Fixed-seed values (counts of pairs over 40 pairs x 3 repeats, so exact in any float order).
NAIVE_ON_NOISE = 71 / 120  # the best of 10 noise configurations' cross-validated paired accuracies
NESTED_ON_NOISE = 55 / 120
SELECTIVITY = 0.9125 - 0.5291666666666666
