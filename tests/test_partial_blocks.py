"""Partial blocks: a run from a block's resid_mid, and a last block computing only some query rows,
give the full run's numbers; hooks on work they skip raise; the patching engine's stream patches
(started past what they replace, the readout row only where the metric reads only logits) equal a
brute-force loop of run_with_hooks patches, and cost the FLOPs summed by hand. float64 throughout,
so any difference beyond 1e-6 is a real one."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.analysis.cost import ForwardCounter, Shape, attention_flops, mlp_flops
from hooked_vivit.causal import patching
from hooked_vivit.causal.metrics import LogitDiff, SignalRecovery
from hooked_vivit.causal.patching import Patch
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["3layers_4x4x4"]
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def setup():
    model = HookedViViT.from_hf_model(make_hf(KW), dtype=torch.float64)
    clean = pixels(KW, batch=1, seed=1).double()
    corrupted = clean + 0.5 * pixels(KW, batch=1, seed=2).double()
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupted)
    return model, clean, corrupted, clean_cache, corrupt_cache


def test_query_rows_and_resid_mid_starts_equal_the_full_run(setup):
    model, clean, _, cache, _ = setup
    L = model.cfg.n_layers
    rows = [7, 0, 20]
    with torch.inference_mode():
        full = model(clean)
        close = lambda a, b: torch.testing.assert_close(a, b, **TOL)  # noqa: E731
        close(model(clean, query_positions=rows), full)
        close(model(clean, stop_at_layer=L, query_positions=rows), cache[f"blocks.{L - 1}.hook_resid_post"][:, rows])
        close(model(clean, stop_at_layer=2, query_positions=rows), cache["blocks.1.hook_resid_post"][:, rows])
        mid = cache["blocks.1.hook_resid_mid"]
        close(model(mid, start_at_layer=1, from_resid_mid=True), full)
        close(
            model(mid, start_at_layer=1, stop_at_layer=2, from_resid_mid=True, query_positions=rows),
            cache["blocks.1.hook_resid_post"][:, rows],
        )
        # From the last block's resid_mid: its MLP alone, on the readout row alone.
        close(
            model(
                cache[f"blocks.{L - 1}.hook_resid_mid"], start_at_layer=L - 1, from_resid_mid=True, query_positions=[0]
            ),
            full,
        )
        # A hook on the last block's resid_pre sees every row and fires.
        seen = []
        model.run_with_hooks(
            clean,
            query_positions=[0],
            fwd_hooks=[(f"blocks.{L - 1}.hook_resid_pre", lambda a, hook: seen.append(a.shape))],
        )
        assert seen == [torch.Size([1, model.cfg.n_ctx, model.cfg.d_model])]


def test_readout_row_suffices(setup):
    """True exactly where a readout-row run is possible: some block runs, and no hook sits on work it
    skips or feeds one row (the last block's resid_pre sees every row); mean pooling never."""
    from hooked_vivit import HookedVideoMAE
    from tests.test_videomae import CONFIGS
    from tests.test_videomae import make_hf as make_videomae

    model = setup[0]
    L = model.cfg.n_layers
    assert [model.readout_row_suffices(s) for s in (-1, 0, L - 1, L)] == [True, True, True, False]
    noop = lambda act, hook: None  # noqa: E731
    cases = {
        f"blocks.{L - 1}.hook_resid_post": False,
        f"blocks.{L - 1}.attn.hook_z": False,
        "ln_final.hook_normalized": False,
        f"blocks.{L - 1}.hook_resid_pre": True,
        "blocks.0.hook_resid_post": True,
    }
    for name, want in cases.items():
        with model.hooks(fwd_hooks=[(name, noop)]):
            assert model.readout_row_suffices() is want, name
    # A run from a block's resid_mid skips that block's attention: a hook there blocks it; run whole, it fires.
    with model.hooks(fwd_hooks=[(f"blocks.{L - 2}.attn.hook_z", noop)]):
        assert model.readout_row_suffices(L - 2, from_resid_mid=True) is False
        assert model.readout_row_suffices(L - 2) is True
        assert model.readout_row_suffices(L - 1, from_resid_mid=True) is True  # that block is not in the run
    mae = HookedVideoMAE.from_hf_model(make_videomae(CONFIGS["mean_nonsquare_5frames"]))
    assert mae.readout_row_suffices() is False


def test_partial_runs_refuse_what_they_cannot_do(setup):
    model, clean, _, cache, _ = setup
    L = model.cfg.n_layers
    mid = cache["blocks.1.hook_resid_mid"]
    keep = lambda act, hook: act  # noqa: E731
    with torch.inference_mode():
        with pytest.raises(ValueError, match=r"blocks\.1\.attn\.hook_z.*would not fire"):
            model.run_with_hooks(mid, start_at_layer=1, from_resid_mid=True, fwd_hooks=[("blocks.1.attn.hook_z", keep)])
        with pytest.raises(ValueError, match=r"blocks\.2\.mlp\.hook_post.*see only some rows"):
            model.run_with_hooks(clean, query_positions=[0], fwd_hooks=[(f"blocks.{L - 1}.mlp.hook_post", keep)])
        with pytest.raises(ValueError, match=r"ln_final\.hook_normalized"):
            model.run_with_hooks(clean, query_positions=[0], fwd_hooks=[("ln_final.hook_normalized", keep)])
        # Hooks on the work that runs whole are fine: the MLP half of a resid_mid start, earlier blocks.
        model.run_with_hooks(mid, start_at_layer=1, from_resid_mid=True, fwd_hooks=[("blocks.1.mlp.hook_post", keep)])
        model.run_with_hooks(clean, query_positions=[0], fwd_hooks=[("blocks.0.attn.hook_z", keep)])
        with pytest.raises(ValueError, match="token 0 among the query positions"):
            model(clean, query_positions=[3])
        with pytest.raises(ValueError, match="distinct"):
            model(clean, query_positions=[0, 0])
        with pytest.raises(ValueError, match="outside"):
            model(clean, query_positions=[0, model.cfg.n_ctx])
        with pytest.raises(ValueError, match="give start_at_layer"):
            model(clean, from_resid_mid=True)
        with pytest.raises(ValueError, match="runs none"):
            model(cache[f"blocks.{L - 1}.hook_resid_post"], start_at_layer=L, query_positions=[0])
    mean_pooled = HookedViViT.from_hf_model(make_hf(KW))
    mean_pooled.cfg.pooling = "mean"
    with pytest.raises(ValueError, match="pooling 'mean'"):
        mean_pooled(pixels(KW, batch=1), query_positions=[0])


def _brute_force(model, corrupted, clean_cache, patch, read):
    """One run_with_hooks forward of the whole model with the patch set by hand; ``read(logits, last)``."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    got = {}

    def set_patch(act, hook):
        pos = slice(None) if patch.positions is None else list(patch.positions)
        act[:, pos] = clean_cache[hook.name][:, pos]
        return act

    with torch.inference_mode():
        logits = model.run_with_hooks(
            corrupted, fwd_hooks=[(patch.hook, set_patch), (last, lambda a, hook: got.setdefault("a", a.clone()))]
        )
    return read(logits, {last: got["a"]})


def _stream_patches(model):
    L = model.cfg.n_layers
    out = patching.component_patches(model)
    out += patching.component_patches(model, positions=[0, 5, 9])
    out += [Patch(f"blocks.{l}.hook_{k}", (0, 3)) for l in range(L) for k in ("resid_pre", "resid_mid", "resid_post")]
    return out


def test_engine_stream_patches_equal_brute_force(setup):
    model, _, corrupted, clean_cache, corrupt_cache = setup
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    patches = _stream_patches(model)
    for metric in (
        LogitDiff(2, 1),  # logits only: the last block computes the readout row only
        SignalRecovery(last, clean_cache[last], corrupt_cache[last], positions=None, kind="projection"),  # every token
    ):
        sweep = patching.denoise(model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=metric)
        expected = torch.stack([_brute_force(model, corrupted, clean_cache, p, metric).float() for p in patches])
        torch.testing.assert_close(sweep.values, expected.flatten(), **TOL)
        # The same from a target_run cache holding only resid_pre, attn_out and mlp_out (as analyze's).
        names = [
            f"blocks.{l}.hook_{k}" for l in range(model.cfg.n_layers) for k in ("resid_pre", "attn_out", "mlp_out")
        ]
        with torch.inference_mode():
            logits, cache = model.run_with_cache(corrupted, names_filter=[*names, last])
        again = patching.denoise(
            model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=metric, target_run=(logits, cache)
        )
        torch.testing.assert_close(again.values, expected.flatten(), **TOL)


def test_engine_runs_by_hook_where_a_user_hook_sits_on_skipped_work(setup):
    model, _, corrupted, clean_cache, _ = setup
    patches = patching.component_patches(model, layers=[1]) + [Patch("blocks.2.hook_resid_mid", (0, 3))]
    halve = lambda act, hook: act * 0.5  # noqa: E731  (a real edit: skipping it would change the numbers)
    model.add_hook("blocks.1.attn.hook_z", halve)
    model.add_hook("blocks.1.hook_mlp_out", halve)
    model.add_hook("blocks.2.hook_resid_mid", halve)  # on the patched hook itself: it fires before the patch
    try:
        sweep = patching.denoise(model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=LogitDiff(2, 1))
        expected = [_brute_force(model, corrupted, clean_cache, p, LogitDiff(2, 1)) for p in patches]
    finally:
        model.reset_hooks(including_permanent=True)
    torch.testing.assert_close(sweep.values, torch.stack(expected).float().flatten(), **TOL)


def test_engine_flops_equal_the_hand_sum(setup):
    model, _, corrupted, clean_cache, corrupt_cache = setup
    cfg = model.cfg
    L, n, d, a, m = cfg.n_layers, cfg.n_ctx, cfg.d_model, cfg.n_heads * cfg.d_head, cfg.d_mlp
    last = f"blocks.{L - 1}.hook_resid_post"
    # By hand: attention over n queries and n keys, q k v and W_O projections, q k^T and pattern v.
    attn = a * (2 * n * d + 4 * n * d + 4 * n * n + 2 * n * d)
    attn_row = a * (2 * 1 * d + 4 * n * d + 4 * 1 * n + 2 * 1 * d)  # one query row, keys and values for all n
    mlp, mlp_row = 4 * n * d * m, 4 * 1 * d * m
    assert attention_flops(Shape.of(cfg), 1, n, n) == attn and mlp_flops(Shape.of(cfg), 1, 1) == mlp_row
    full = L * (attn + mlp)
    target = model.run_with_cache(
        corrupted,
        names_filter=[last] + [f"blocks.{l}.hook_{k}" for l in range(L) for k in ("resid_pre", "attn_out", "mlp_out")],
    )
    patches = patching.component_patches(model)
    with ForwardCounter(model) as cost:
        with cost.section("every token"):
            rec = SignalRecovery(last, clean_cache[last], corrupt_cache[last], positions=None)
            patching.denoise(
                model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=rec, target_run=target
            )
        with cost.section("logits"):
            patching.denoise(
                model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=LogitDiff(2, 1), target_run=target
            )
    # attn_out at l: block l's MLP, then blocks l+1..L-1; mlp_out at l: blocks l+1..L-1 (none for l = L-1).
    every = sum(mlp + 2 * (L - 1 - l) * (attn + mlp) for l in range(L))
    # Logits only: the last block run computes the readout row; at l = L-1, attn_out runs that block's
    # MLP on the readout row and mlp_out no block.
    logits = sum(mlp + 2 * (L - 2 - l) * (attn + mlp) + 2 * (attn_row + mlp_row) for l in range(L - 1)) + mlp_row
    s = cost.summary()
    assert cost.flops("every token") == every and s["per_experiment"]["every token"] == every / full
    assert cost.flops("logits") == logits and s["per_experiment"]["logits"] == logits / full
    assert s["whole_blocks"]["per_experiment"]["every token"] == sum(2 * (L - l) - 1 for l in range(L)) / L
