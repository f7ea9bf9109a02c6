"""attribution_patch's fast path (graph from the earliest attributed layer, frozen parameters,
clean run cut after the last attributed layer) against the formula computed by brute force: one
separate corrupted run per hook, the activation swapped for a leaf, its own gradient."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.causal.attribution import DEFAULT_ACTS, attribution_patch
from hooked_vivit.causal.metrics import LogitDiff, SignalRecovery
from tests.conftest import SMALL_CONFIGS, make_hf, pixels
from tests.tolerances import FP32_EPS, SAFETY


def _activations_and_gradient(model, clean, corrupted, metric, act: str, layer: int):
    """(clean activation, corrupted activation, d metric / d activation at the corrupted run), by hand."""
    from transformer_lens.utilities import get_act_name

    name = get_act_name(act, layer)
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean, names_filter=[name])
    reads = tuple(getattr(metric, "hooks", ()))
    seen: dict[str, torch.Tensor] = {}

    def swap(a, hook):
        seen[name] = a.detach().clone().requires_grad_(True)
        return seen[name]

    def read(a, hook):
        seen[hook.name] = a

    with torch.enable_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, swap)] + [(h, read) for h in reads])
        values = metric(logits, {h: seen[h] for h in reads}) if reads else metric(logits)
        (grad,) = torch.autograd.grad(values.sum(), seen[name])
    return clean_cache[name], seen[name].detach(), grad


def brute_force(model, clean, corrupted, metric, act: str, layer: int) -> torch.Tensor:
    a, b, grad = _activations_and_gradient(model, clean, corrupted, metric, act, layer)
    return ((a - b) * grad).sum(-1).mean(0)


def rounding_bound(model, clean, corrupted, metric, act: str, layer: int) -> torch.Tensor:
    """Per position, SAFETY x float32's rounding of the activations the score reads, through its gradient:
    FP32_EPS * sum_d |grad_d| (|clean_d| + |corrupted_d|), batch-averaged as the score is. Two float32 runs
    through other kernels (the readout-row block, ATen's default / avx2 / avx512 paths) differ by rounding of
    that size: the score is a small difference of activations of order 1 (tests/tolerances.py)."""
    a, b, grad = _activations_and_gradient(model, clean, corrupted, metric, act, layer)
    return SAFETY * FP32_EPS * (grad.abs() * (a.abs() + b.abs())).sum(-1).mean(0)


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6) -> bool:
    """Within ``rel`` of the scores' own scale (they are ~1e-3 here)."""
    return (
        float((actual - expected).abs().max()) <= rel * float(expected.abs().max()) and float(expected.abs().max()) > 0
    )


def with_switches(model: HookedViViT, **switches) -> HookedViViT:
    other = HookedViViT(dataclasses.replace(model.cfg, **switches), init_weights=False)
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize(
    "switches", [{}, {"use_split_qkv_input": True, "use_attn_result": True}], ids=["default", "split+result"]
)
@pytest.mark.parametrize("config", ["nonsquare_2x8x8_3heads", "3layers_4x4x4"])
def test_scores_equal_brute_force(config, switches):
    kw = SMALL_CONFIGS[config]
    model = with_switches(HookedViViT.from_hf_model(make_hf(kw)), **switches)
    clean, corrupted = pixels(kw, batch=2, seed=1), pixels(kw, batch=2, seed=2)
    metric = LogitDiff(1, 2)
    attr = attribution_patch(model, clean, corrupted, metric)
    for act in DEFAULT_ACTS:
        for l in range(model.cfg.n_layers):
            expected = brute_force(model, clean, corrupted, metric, act, l)
            assert attr.scores[act][l].shape == expected.shape
            bound = rounding_bound(model, clean, corrupted, metric, act, l)
            assert bool(((attr.scores[act][l] - expected).abs() <= bound).all()), (act, l)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_layer_subset_and_metric_reading_an_activation():
    """layers=[1, 2]: the graph starts at block 1; a metric reading block 2's output."""
    kw = SMALL_CONFIGS["3layers_4x4x4"]
    model = HookedViViT.from_hf_model(make_hf(kw))
    clean, corrupted = pixels(kw, batch=1, seed=1), pixels(kw, batch=1, seed=2)
    with torch.inference_mode():
        _, c = model.run_with_cache(clean, names_filter=["blocks.2.hook_resid_post"])
        _, k = model.run_with_cache(corrupted, names_filter=["blocks.2.hook_resid_post"])
    metric = SignalRecovery("blocks.2.hook_resid_post", c["blocks.2.hook_resid_post"], k["blocks.2.hook_resid_post"])
    attr = attribution_patch(model, clean, corrupted, metric, layers=[2, 1])
    assert attr.layers == [2, 1] and attr.scores["z"].shape[0] == 2
    for act in DEFAULT_ACTS:
        for i, l in enumerate([2, 1]):
            expected = brute_force(model, clean, corrupted, metric, act, l)
            bound = rounding_bound(model, clean, corrupted, metric, act, l)
            assert bool(((attr.scores[act][i] - expected).abs() <= bound).all()), (act, l)
    with pytest.raises(ValueError, match="layers must be a non-empty list of layers in 0..2"):
        attribution_patch(model, clean, corrupted, metric, layers=[3])


def float64_model_and_pair(config: str = "3layers_4x4x4"):
    kw = SMALL_CONFIGS[config]
    model = HookedViViT.from_hf_model(make_hf(kw)).to(torch.float64)
    return model, pixels(kw, batch=2, seed=1).double(), pixels(kw, batch=2, seed=2).double()


def test_float64_scores_equal_brute_force():
    """In float64 the fast path and one full backward per hook agree to 1e-6 of the scores' scale
    (the float32 the scores are reported in)."""
    model, clean, corrupted = float64_model_and_pair()
    metric = LogitDiff(1, 2)
    attr = attribution_patch(model, clean, corrupted, metric)
    assert all(s.dtype == torch.float32 for s in attr.scores.values())  # reported as float32, computed in float64
    for act in DEFAULT_ACTS:
        for l in range(model.cfg.n_layers):
            assert close(attr.scores[act][l], brute_force(model, clean, corrupted, metric, act, l).float()), (act, l)


def test_truncated_backward_equals_full_backward_and_stops_at_the_first_layer():
    """layers=[2]: the graph starts at block 2, and the scores equal those of the full backward
    (every layer attributed, graph from block 0); no gradient reaches blocks 0 and 1."""
    model, clean, corrupted = float64_model_and_pair()
    metric = LogitDiff(1, 2)
    full = attribution_patch(model, clean, corrupted, metric)
    fired: list[str] = []

    def record(grad, hook):
        fired.append(hook.name)

    bwd = [(f"blocks.{l}.hook_resid_post", record) for l in range(3)]
    with model.hooks(bwd_hooks=bwd):
        truncated = attribution_patch(model, clean, corrupted, metric, layers=[2])
    assert sorted(fired) == ["blocks.2.hook_resid_post"]
    for act in DEFAULT_ACTS:
        assert close(truncated.scores[act][0], full.scores[act][2]), act


def test_clean_run_cut_after_the_last_layer_equals_a_full_clean_cache():
    """layers=[0, 1]: the clean run stops after block 1; the scores equal those from a clean cache
    of the whole model."""
    model, clean, corrupted = float64_model_and_pair()
    metric = LogitDiff(1, 2)
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean)
    given = attribution_patch(model, clean, corrupted, metric, layers=[0, 1], clean_cache=clean_cache)
    cut = attribution_patch(model, clean, corrupted, metric, layers=[0, 1])
    for act in DEFAULT_ACTS:
        # (the full cache takes the explicit attention path, the cut run the fused one: rounding apart)
        assert close(cut.scores[act], given.scores[act]), act


def test_parameter_flags_restored_when_the_metric_fails():
    """Parameters are frozen during the backward; their requires_grad flags (a mix here) come back
    as they were, also when the metric raises or returns the wrong shape."""
    model, clean, corrupted = float64_model_and_pair()
    params = list(model.parameters())
    for p in params[::3]:
        p.requires_grad_(False)
    before = [p.requires_grad for p in params]
    assert True in before and False in before

    def broken(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        attribution_patch(model, clean, corrupted, broken)
    assert [p.requires_grad for p in params] == before
    with pytest.raises(ValueError, match="one value per batch row"):
        attribution_patch(model, clean, corrupted, lambda logits: logits)
    assert [p.requires_grad for p in params] == before
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_readout_row_run_equals_the_whole_last_block(monkeypatch):
    """With a first-token readout both runs compute only token 0 of the last block. The scores equal
    those of the whole last block run (every hook kind, a full clean cache given or not), the rows a
    readout-row run skips score exactly 0 (keys and values, computed for every token, do not), and
    the runs do less work: each attention and MLP call of the last block has one query row."""
    from hooked_vivit.analysis.cost import ForwardCounter
    from hooked_vivit.causal import attribution

    model, clean, corrupted = float64_model_and_pair()
    metric = LogitDiff(1, 2)
    acts = ("resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern")
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean)
    with ForwardCounter(model) as rows_counter:
        rows = attribution_patch(model, clean, corrupted, metric, acts=acts)
    given = attribution_patch(model, clean, corrupted, metric, acts=acts, clean_cache=clean_cache)
    monkeypatch.setattr(attribution, "_readout_row_only", lambda model, metric_hooks: False)
    with ForwardCounter(model) as whole_counter:
        whole = attribution_patch(model, clean, corrupted, metric, acts=acts)
    last = model.cfg.n_layers - 1
    for act in acts:
        assert rows.scores[act].shape == whole.scores[act].shape, act
        assert close(rows.scores[act], whole.scores[act]), act
        assert close(given.scores[act], whole.scores[act]), act
        skipped = rows.scores[act][last, 1:]
        if act in ("k", "v", "resid_pre"):
            assert skipped.abs().max() > 0, act
        else:
            assert torch.equal(skipped, torch.zeros_like(skipped)), act
    last_block_rows = {
        name: sorted({r for (_, kind, _, r, _) in c.work if kind == "attn"})
        for name, c in (("rows", rows_counter), ("whole", whole_counter))
    }
    assert 1 in last_block_rows["rows"] and 1 not in last_block_rows["whole"]
    assert sum(r for (_, _, _, r, _) in rows_counter.work) < sum(r for (_, _, _, r, _) in whole_counter.work)


def test_readout_row_run_not_taken_where_other_rows_are_read():
    """A metric reading an activation, mean pooling or a user's hook on the last block: the whole
    block runs (the hook sees every row)."""
    from hooked_vivit.causal.attribution import _readout_row_only

    model, clean, corrupted = float64_model_and_pair()
    assert _readout_row_only(model, ())
    assert not _readout_row_only(model, ("blocks.2.hook_resid_post",))
    seen = []
    model.add_hook("blocks.2.hook_mlp_out", lambda act, hook: seen.append(act.shape))
    try:
        assert not _readout_row_only(model, ())
        attribution_patch(model, clean, corrupted, LogitDiff(1, 2))
    finally:
        model.reset_hooks()
    assert seen and all(s[1] == model.cfg.n_ctx for s in seen)
    mean_pooled = with_switches(model, pooling="mean")
    assert not _readout_row_only(mean_pooled, ())
