"""Metrics with known values, ablations against hand-written hooks, attribution patching against
real patching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.causal import ablation, patching
from hooked_vivit.causal.attribution import attribution_patch
from hooked_vivit.causal.metrics import (
    ClassLogit,
    KLToClean,
    LogitDiff,
    LogProb,
    SignalRecovery,
    norm_recovery,
    recovery,
)
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_hf_model(make_hf(KW))


def test_logit_metrics():
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 5.0]])
    torch.testing.assert_close(ClassLogit(1)(logits), torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(ClassLogit([0, 2])(logits), torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(LogitDiff(1, 0)(logits), torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(LogProb(2)(logits), logits.log_softmax(-1)[:, 2])
    kl = KLToClean(logits[:1])(logits)
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0.1
    p, q = logits[0].softmax(-1), logits[1].softmax(-1)
    assert kl[1] == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    assert LogitDiff(1, 0).mean_over_batch(logits) == pytest.approx(0.0)


def test_recovery_formulas():
    clean, corrupt = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[0.0, 0.0]]])
    m = SignalRecovery("h", clean, corrupt, positions=0)
    acts = {"h": torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[0.5, 0.5]], [[2.0, 2.0]], [[1.0, 0.0]]])}
    torch.testing.assert_close(m(None, acts), torch.tensor([0.0, 1.0, 0.5, 2.0, 0.5]))  # can exceed 100 %
    n = SignalRecovery("h", clean, corrupt, positions=0, kind="norm")
    torch.testing.assert_close(n(None, acts), torch.tensor([0.0, 1.0, 0.5, 0.0, 1 - 1 / 2**0.5]))
    assert recovery(acts["h"][2], clean, corrupt) == pytest.approx(0.5)
    assert norm_recovery(acts["h"][3], clean, corrupt) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="identical"):
        SignalRecovery("h", clean, clean)
    with pytest.raises(ValueError, match="needs the activation"):
        m(torch.zeros(1, 3))


def test_zero_mean_resample_ablation(model):
    x, other = pixels(KW, batch=1, seed=1), pixels(KW, batch=1, seed=7)
    hook = "blocks.0.hook_attn_out"
    pos = [0, 4, 9]

    def manual(fn):
        return model.run_with_hooks(x, fwd_hooks=[(hook, fn)])

    def zero(act, hook):
        act[:, pos] = 0
        return act

    torch.testing.assert_close(ablation.ablate(model, x, hook, pos, mode="zero"), manual(zero))

    def mean(act, hook):
        act[:, pos] = act[:, pos].mean(1, keepdim=True)
        return act

    torch.testing.assert_close(ablation.ablate(model, x, hook, pos, mode="mean"), manual(mean))
    _, ref = model.run_with_cache(torch.cat([x, other, other * 0.5]), names_filter=hook)

    def ref_mean(act, hook):
        act[:, pos] = ref[hook.name][:, pos].mean(0)
        return act

    torch.testing.assert_close(ablation.ablate(model, x, hook, pos, mode="mean", reference=ref[hook]), manual(ref_mean))
    _, own = model.run_with_cache(x, names_filter=hook)
    torch.testing.assert_close(ablation.ablate(model, x, hook, pos, mode="resample", reference=own[hook]), model(x))
    _, oth = model.run_with_cache(other, names_filter=hook)
    assert (ablation.ablate(model, x, hook, pos, mode="resample", reference=oth[hook]) - model(x)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs reference"):
        ablation.ablate(model, x, hook, pos, mode="resample")


def test_pixel_and_token_region_ablation(model):
    x = pixels(KW, batch=2, seed=3)
    box = ablation.PixelBox(t0=2, t1=4, y0=8, y1=16, x0=16, x1=40)
    for mode in ("zero", "black", "mean", "blur"):
        out = ablation.ablate_pixels(x, box, mode=mode)
        outside = out.clone()
        outside[:, 2:4, :, 8:16, 16:40] = x[:, 2:4, :, 8:16, 16:40]
        assert torch.equal(outside, x), mode  # nothing outside the box moved
        assert not torch.equal(out, x), mode
    assert (ablation.ablate_pixels(x, box, mode="black")[:, 2:4, :, 8:16, 16:40] == -3).all()
    grid = model.cfg.grid
    region = patching.Region(frame_slots=[1], rows=[1], cols=[2, 3, 4])
    toks = patching.resolve_positions(model, region)
    assert ablation.PixelBox.from_tokens(grid, toks) == ablation.PixelBox(2, 4, 8, 16, 16, 40)
    # Through pixel space instead of the embedding hook: zeroing the box's pixels leaves exactly the
    # conv bias b_E as those tokens' embeddings (the box is whole tubelets), so subtracting b_E there
    # must give what zero-ablating the region's embeddings gives.
    logits = ablation.token_region_ablation(model, x, region)

    def minus_bias(act, hook):
        act[:, list(toks)] -= model.embed.b_E
        return act

    zeroed_pixels = ablation.ablate_pixels(x, ablation.PixelBox(2, 4, 8, 16, 16, 40), mode="zero")
    torch.testing.assert_close(
        logits, model.run_with_hooks(zeroed_pixels, fwd_hooks=[("hook_embed", minus_bias)]), atol=1e-5, rtol=1e-5
    )
    assert (logits - model(x)).abs().max() > 1e-3  # the region matters to the output: the check has teeth
    mask = np.zeros((4, 32, 48), bool)
    mask[1:3, 5:7, 10:12] = True
    assert ablation.PixelBox.from_mask(mask, margin=1) == ablation.PixelBox(1, 3, 4, 8, 9, 13)


def test_topk_table(model):
    before = torch.tensor([[0.1, 5.0, 2.0, 3.0]])
    after = torch.tensor([[0.0, 4.0, 2.5, 3.0]])
    rows = ablation.topk_table(before, after, {0: "a", 1: "bowling", 2: "c", 3: "d"}, k=3)
    assert [r["class"] for r in rows] == [1, 3, 2] and rows[0]["name"] == "bowling"
    assert rows[0]["delta"] == pytest.approx(-1.0) and rows[2]["after"] == pytest.approx(2.5)
    assert "bowling" in ablation.format_topk_table(rows)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_attribution_patching_matches_real_patching(model):
    clean = pixels(KW, batch=1, seed=1)
    corrupted = clean + 0.05 * pixels(KW, batch=1, seed=2)  # close: the linear estimate should hold
    m = LogitDiff(2, 5)
    _, clean_cache = model.run_with_cache(clean)
    attr = attribution_patch(model, clean, corrupted, m, clean_cache=clean_cache)
    L, P, H = model.cfg.n_layers, model.cfg.n_ctx, model.cfg.n_heads
    assert attr.scores["resid_pre"].shape == (L, P) and attr.scores["z"].shape == (L, P, H)
    real = patching.run_patches(
        model, patching.token_patches(model, "resid_pre"), source_cache=clean_cache, target=corrupted, metric=m
    )
    effect = (real.values - real.baseline).view(L, P)
    assert _pearson(attr.scores["resid_pre"], effect) > 0.95
    slots = patching.run_patches(
        model, patching.frame_slot_patches(model), source_cache=clean_cache, target=corrupted, metric=m
    )
    assert _pearson(attr.by_frame_slot("resid_pre"), (slots.values - slots.baseline).view(L, -1)) > 0.95
    heads = patching.run_patches(
        model, patching.head_patches(model, "z"), source_cache=clean_cache, target=corrupted, metric=m
    )
    assert _pearson(attr.by_head("z"), (heads.values - heads.baseline).view(L, H)) > 0.9
    # Layer-0 resid_pre at every position is the whole input difference: a complete patch.
    torch.testing.assert_close(
        attr.scores["resid_pre"][0].sum(),
        effect.new_tensor(float(m(model(clean)) - m(model(corrupted)))),
        atol=0.05,
        rtol=0.2,
    )
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    assert all(p.grad is None for p in model.parameters())
