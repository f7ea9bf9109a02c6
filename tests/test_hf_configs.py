"""Every ViViT config transformers builds and runs, this library runs and computes the same (issue 21).

- parity with transformers (eager: logits, every hidden state, every attention pattern; sdpa: logits
  and every hidden state), every parameter perturbed, on the kinds of config that used to be refused
  (sizes that are not tubelet multiples, head_dim != hidden_size / heads, image_size lists, other
  activations, channels, no classifier), and on random small configs transformers accepts;
- what transformers cannot run is refused with a clear error;
- the pixels each token sees, checked pixel by pixel against transformers' own Conv3d, and the
  pixel-side tools (pixel boxes, viewer overlays, object masks, position groups) that rely on it.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from transformers import VivitConfig, VivitForVideoClassification
from transformers.activations import ACT2CLS

from hooked_vivit import HookedViViT, HookedViViTConfig, viewer
from hooked_vivit.analysis.experiments import probe_features, token_masks
from hooked_vivit.causal.ablation import PixelBox, ablate_pixels
from hooked_vivit.causal.patching import FrameSlot, Region, resolve_positions
from hooked_vivit.testing import random_pixels
from hooked_vivit.video import preprocess
from tests.conftest import make_hf, max_rel
from tests.test_parity import TOL, _compare

# transformers' own nn.Linear init on the width-0 MLPs below.
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")

# Configs transformers runs that this library refused before issue 21 (the closing note lists them).
NEWLY_ACCEPTED = {
    # transformers' own VivitModelTester config: 10 px frames, 4 px tubelets (rows/cols 8, 9 unseen).
    "hf_model_tester": dict(
        image_size=10,
        num_frames=8,
        tubelet_size=[2, 4, 4],
        num_channels=3,
        hidden_size=768,
        num_hidden_layers=5,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu_fast",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        num_labels=10,
    ),
    # Remainders on every axis: frame 6, pixel row 12 and column 10 feed no token.
    "ragged_every_axis": dict(
        image_size=[13, 11],
        num_frames=7,
        tubelet_size=[3, 4, 5],
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=20,
        num_labels=3,
    ),
    # transformers' ConfigTester size: hidden 37 over 12 heads -> head_dim 3, attention in 36 dims.
    "hidden_37_12_heads": dict(
        image_size=12,
        num_frames=4,
        tubelet_size=[2, 4, 4],
        hidden_size=37,
        num_hidden_layers=2,
        num_attention_heads=12,
        intermediate_size=11,
        num_labels=2,
    ),
    # An explicit head_dim wider than hidden_size / heads (3 x 5 = 15 > 12).
    "head_dim_5_of_12": dict(
        image_size=8,
        num_frames=4,
        tubelet_size=[2, 4, 4],
        hidden_size=12,
        head_dim=5,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=11,
        num_labels=2,
    ),
    # image_size as a 3-list (transformers reads [0] and [1]), one channel, a learned activation, no qkv bias.
    "list3_image_1ch_prelu": dict(
        image_size=[9, 10, 3],
        num_frames=3,
        tubelet_size=[2, 4, 4],
        num_channels=1,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=11,
        hidden_act="prelu",
        qkv_bias=False,
        num_labels=2,
    ),
    # xIELU: transformers keeps its learned parameters in bfloat16 inside a float32 model.
    "xielu_bf16_params": dict(
        image_size=[9, 7],
        num_frames=5,
        tubelet_size=[2, 4, 3],
        hidden_size=12,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=16,
        hidden_act="xielu",
        num_labels=3,
    ),
    # MLPs of width 0 (each adds its output bias) and num_labels=-1 (an identity head, as for 0).
    "mlp_width_0_labels_minus_1": dict(
        image_size=[8, 6],
        num_frames=3,
        tubelet_size=[2, 3, 3],
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=0,
        num_labels=-1,
    ),
    # No classifier (num_labels=0: transformers' head is the identity on the CLS token), mish, eps 1e-3.
    "no_classifier_mish": dict(
        image_size=[8, 12],
        num_frames=2,
        tubelet_size=[1, 4, 4],
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=11,
        num_labels=0,
        hidden_act="mish",
        layer_norm_eps=1e-3,
    ),
}


def clip_pixels(hf_config, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return random_pixels(hf_config.num_frames, hf_config.image_size, batch, seed, channels=hf_config.num_channels)


def _worst(diffs: dict[str, float]) -> float:
    assert all(math.isfinite(v) for v in diffs.values()), diffs  # max() would pass a NaN over
    return max(diffs.values())


def parity_both_paths(kw: dict, seed: int = 0) -> dict[str, float]:
    """Worst max|ours - HF| / max(1, max|HF|) over logits, hidden states (and eager patterns)."""
    hf = make_hf(kw, attn="eager", seed=seed)
    model = HookedViViT.from_hf_model(hf)
    x = clip_pixels(hf.config, seed=seed + 1)
    eager = _worst(_compare(hf, model, x, patterns=True))
    hf.set_attn_implementation("sdpa")
    assert hf.config._attn_implementation == "sdpa"
    sdpa = _worst(_compare(hf, model, x, patterns=False))
    with torch.no_grad():
        fast = model(x)  # the hooked SDPA path (nothing hooked)
        ref = hf(x).logits
    sdpa = max(sdpa, _worst({"logits (hooked SDPA)": max_rel(fast, ref)}))
    return {"eager": eager, "sdpa": sdpa}


@pytest.mark.parametrize("name", list(NEWLY_ACCEPTED))
def test_newly_accepted_configs_match_transformers(name):
    worst = parity_both_paths(NEWLY_ACCEPTED[name])
    assert max(worst.values()) <= TOL, (name, worst)


def random_config(rng: random.Random) -> dict:
    """A small VivitConfig that transformers builds and runs (sizes >= the tubelet on every axis)."""
    t, h, w = rng.randint(1, 3), rng.randint(1, 5), rng.randint(1, 5)
    H, W = h + rng.randint(0, 6), w + rng.randint(0, 6)
    heads = rng.randint(1, 4)
    kw = dict(
        num_frames=t + rng.randint(0, 4),
        tubelet_size=[t, h, w],
        image_size=H if H == W and rng.random() < 0.5 else rng.choice([[H, W], (H, W), [H, W, rng.randint(1, 9)]]),
        num_channels=rng.randint(1, 4),
        hidden_size=rng.randint(heads, 20),
        num_attention_heads=heads,
        num_hidden_layers=rng.randint(1, 2),
        intermediate_size=rng.randint(0, 24),
        qkv_bias=rng.random() < 0.7,
        hidden_act=rng.choice(sorted(ACT2CLS)),
        layer_norm_eps=rng.choice([1e-12, 1e-6, 1e-5, 1e-3]),
        num_labels=rng.randint(-1, 5),
    )
    if rng.random() < 0.3:
        kw["head_dim"] = rng.randint(1, 8)
    return kw


def test_random_configs_transformers_accepts_match_it():
    rng = random.Random(21)
    for i in range(24):
        kw = random_config(rng)
        worst = parity_both_paths(kw, seed=i)
        assert max(worst.values()) <= TOL, (i, kw, worst)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_no_layers_at_all(attn):
    # transformers runs num_hidden_layers=0 (final LayerNorm of the embeddings; it returns no hidden states).
    kw = dict(
        image_size=[9, 8],
        num_frames=3,
        tubelet_size=[2, 4, 4],
        hidden_size=8,
        num_hidden_layers=0,
        num_attention_heads=2,
        intermediate_size=8,
        num_labels=3,
    )
    hf = make_hf(kw, attn=attn)
    model = HookedViViT.from_hf_model(hf)
    x = clip_pixels(hf.config)
    with torch.no_grad():
        ref = hf(x).logits
        assert model.cfg.n_layers == 0 and max_rel(model(x), ref) <= TOL
        assert max_rel(hf.vivit.embeddings(x), model.run_with_cache(x)[1]["hook_embed"] + model.W_pos) <= TOL


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_frames=1, tubelet_size=[2, 4, 4], image_size=8), "num_frames 1 is smaller than the tubelet size 2"),
        (dict(num_frames=4, tubelet_size=[2, 4, 4], image_size=[3, 8]), "height 3 is smaller than the tubelet size 4"),
        (dict(num_frames=4, tubelet_size=[2, 4, 4], image_size=[8, 2]), "width 2 is smaller than the tubelet size 4"),
        (
            dict(num_frames=4, tubelet_size=[2, 4, 4], image_size=8, hidden_size=3, num_attention_heads=4),
            r"n_heads \(4\) and d_head \(0\) must be >= 1",
        ),
        (
            dict(num_frames=4, tubelet_size=[2, 4, 4], image_size=8, hidden_act="no_such_act"),
            "unsupported activation 'no_such_act'",
        ),
    ],
)
def test_what_transformers_cannot_run_is_refused_clearly(kw, message):
    base = dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8, num_labels=2)
    config = VivitConfig(**{**base, **kw})
    with pytest.raises((ValueError, RuntimeError, ZeroDivisionError, KeyError)):
        make_hf({**base, **kw})(clip_pixels(config))  # transformers fails too, building or running
    with pytest.raises(ValueError, match=message):
        HookedViViT(HookedViViTConfig.from_hf_config(config))


def test_inputs_transformers_refuses_are_refused():
    kw = NEWLY_ACCEPTED["ragged_every_axis"]
    hf = make_hf(kw)
    model = HookedViViT.from_hf_model(hf)
    x = clip_pixels(hf.config)
    for bad, message in ((x[..., :12, :], r"13x11"), (x[..., :10], r"13x11")):
        with pytest.raises(ValueError, match="Input image size"):
            hf(bad)
        with pytest.raises(ValueError, match=message):
            model(bad)
    with pytest.raises(RuntimeError):  # 5 frames make 1 frame slot, not 2: transformers' shapes clash
        hf(x[:, :5])
    with pytest.raises(ValueError, match="7 frames"):
        model(x[:, :5])
    # transformers runs 6 frames (the same 2 slots); this library asks for num_frames exactly (README).
    with pytest.raises(ValueError, match="7 frames"):
        model(x[:, :6])


# ------------------------------------------------------------------------------------------ pixels
@pytest.fixture(scope="module")
def ragged():
    """7 frames of 13x11 px, tubelets 3x4x5: grid 2 x 3 x 2; frame 6, row 12, column 10 unseen."""
    kw = NEWLY_ACCEPTED["ragged_every_axis"]
    hf = make_hf(kw)
    model = HookedViViT.from_hf_model(hf)
    return hf, model, clip_pixels(hf.config, batch=1, seed=3)


def test_each_pixel_feeds_exactly_the_token_the_grid_names(ragged):
    """Pixel by pixel against transformers' own Conv3d: the tokens that change when one pixel
    changes are {grid.token_at(pixel)}, or none for a pixel past the last whole tubelet."""
    hf, model, x = ragged
    grid = model.cfg.grid
    assert grid.shape == (2, 3, 2) and list(grid.covered_frames) == list(range(6))
    assert (grid.covered_rows, grid.covered_cols) == (slice(0, 12), slice(0, 10))
    T, _, H, W = x.shape[1:]
    pixels = [(f, y, c) for f in range(T) for y in range(H) for c in range(W)]
    batch = x.repeat(len(pixels) + 1, 1, 1, 1, 1)
    for i, (f, y, c) in enumerate(pixels):
        batch[i + 1, f, :, y, c] += 10.0
    with torch.no_grad():
        tokens = hf.vivit.embeddings.patch_embeddings(batch)  # [N, patches, d]
    changed = (tokens[1:] - tokens[:1]).abs().amax(-1) > 1e-3
    seen_by: dict[int, set] = {}
    for i, (f, y, c) in enumerate(pixels):
        token = grid.token_at(f, y, c)
        assert (changed[i].nonzero().flatten() + 1).tolist() == ([] if token is None else [token]), (f, y, c)
        if token is not None:
            seen_by.setdefault(token, set()).add((f, y, c))
    assert sorted(seen_by) == list(range(1, grid.n_ctx))
    for token, pix in seen_by.items():  # pixel_box is exactly the set of pixels feeding the token
        frames, rows, cols = grid.pixel_box(token)
        box = {(f, y, c) for f in frames for y in range(rows.start, rows.stop) for c in range(cols.start, cols.stop)}
        assert pix == box, token
    assert [grid.frame_slot_of_frame(f) for f in range(T)] == [0, 0, 0, 1, 1, 1, None]
    with pytest.raises(IndexError, match="outside the clip"):
        grid.token_at(7, 0, 0)


def test_pixels_no_token_sees_change_nothing(ragged):
    hf, model, x = ragged
    grid = model.cfg.grid
    y = x.clone()
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)) * 5
    unseen = torch.ones_like(y, dtype=torch.bool)
    unseen[:, grid.covered_frames.start : grid.covered_frames.stop, :, grid.covered_rows, grid.covered_cols] = False
    y[unseen] += noise[unseen]
    assert int(unseen.sum()) == 1 * 3 * (7 * 13 * 11 - 6 * 12 * 10) and not torch.equal(x, y)
    names = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        (logits_x, cache_x), (logits_y, cache_y) = (
            model.run_with_cache(x, names_filter=names),
            model.run_with_cache(y, names_filter=names),
        )
        assert torch.equal(hf(x).logits, hf(y).logits)  # transformers ignores them too
    assert torch.equal(logits_x, logits_y)
    for n in names:
        assert torch.equal(cache_x[n], cache_y[n]), n


def test_pixel_box_ablation_touches_only_its_token(ragged):
    _, model, x = ragged
    grid = model.cfg.grid
    _, base = model.run_with_cache(x, names_filter="hook_embed")
    for token in range(1, grid.n_ctx):
        box = PixelBox.from_tokens(grid, [token])
        _, cache = model.run_with_cache(ablate_pixels(x, box, mode="black"), names_filter="hook_embed")
        changed = (cache["hook_embed"] - base["hook_embed"])[0].abs().amax(-1) > 0
        assert changed.nonzero().flatten().tolist() == [token]
    whole = PixelBox.from_tokens(grid, range(1, grid.n_ctx))
    assert (whole.t0, whole.t1, whole.y0, whole.y1, whole.x0, whole.x1) == (0, 6, 0, 12, 0, 10)


def test_position_groups_are_the_tokens_of_their_pixels(ragged):
    _, model, _ = ragged
    grid = model.cfg.grid
    T, (H, W) = model.cfg.num_frames, model.cfg.image_size
    for t in range(grid.n_frame_slots):
        tokens = {grid.token_at(f, y, c) for f in grid.frames_of_slot(t) for y in range(H) for c in range(W)} - {None}
        assert set(resolve_positions(model, FrameSlot(t))) == tokens
    region = Region(frame_slots=[1], rows=[2], cols=[0, 1])
    tokens = {grid.token_at(f, y, c) for f in range(T) for y in range(8, 12) for c in range(0, 10)} - {None}
    assert set(resolve_positions(model, region)) == {tok for tok in tokens if grid.coords(tok)[0] == 1}


def test_viewer_overlay_colours_each_tokens_pixels_and_nothing_else(ragged):
    _, model, x = ragged
    grid = model.cfg.grid
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 13, 11, 3), dtype=np.uint8)
    slot_map = rng.random(grid.shape).astype(np.float32)
    maps = np.broadcast_to(slot_map, (1, 1, *grid.shape))
    shown = viewer.render_frames(model, frames, maps, layer=0, head=0)
    colours = [viewer._colorize(m, False, float(slot_map.max())) for m in slot_map]  # per slot [rows, cols, 3]
    for f in range(7):
        for y in range(13):
            for c in range(11):
                token = grid.token_at(f, y, c)
                if token is None:
                    assert np.array_equal(shown[f, y, c], frames[f, y, c]), (f, y, c)
                else:
                    t, r, k = grid.coords(token)
                    expected = np.round(0.5 * frames[f, y, c].astype(float) + 0.5 * colours[t][r, k].astype(float))
                    assert np.abs(shown[f, y, c].astype(float) - expected).max() <= 1, (f, y, c)


def test_object_masks_pool_over_each_tokens_pixels(ragged):
    _, model, _ = ragged
    grid = model.cfg.grid
    mask = np.random.default_rng(1).random((7, 13, 11)) < 0.4
    shares = token_masks(model, mask)
    assert shares[0] == 0 and len(shares) == grid.n_ctx
    for token in range(1, grid.n_ctx):
        frames, rows, cols = grid.pixel_box(token)
        assert shares[token].item() == pytest.approx(mask[frames.start : frames.stop, rows, cols].mean(), abs=1e-6)


def test_config_round_trips_through_transformers():
    for name in ("hidden_37_12_heads", "head_dim_5_of_12", "list3_image_1ch_prelu"):
        hf_config = VivitConfig(**NEWLY_ACCEPTED[name])
        cfg = HookedViViTConfig.from_hf_config(hf_config)
        again = VivitConfig(**cfg.to_hf_config_dict())
        head_dim = getattr(hf_config, "head_dim", hf_config.hidden_size // hf_config.num_attention_heads)
        assert getattr(again, "head_dim", again.hidden_size // again.num_attention_heads) == head_dim == cfg.d_head
        assert HookedViViTConfig.from_hf_config(again).n_ctx == cfg.n_ctx


@pytest.mark.parametrize("act", ["prelu", "xielu"])
@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_checkpoints_of_such_configs_round_trip_through_transformers(tmp_path, layout, act):
    """Save (either layout) -> transformers reads every tensor back, the learned activation's
    included, in its dtype; transformers' own save_pretrained loads here, also with weight processing."""
    kw = {**NEWLY_ACCEPTED["list3_image_1ch_prelu"], "head_dim": 3, "image_size": [9, 10], "hidden_act": act}
    hf = make_hf(kw)
    model = HookedViViT.from_hf_model(hf)
    out = model.save_pretrained(tmp_path / "saved", layout=layout)
    reloaded = VivitForVideoClassification.from_pretrained(out)
    ours = HookedViViT.from_pretrained(out)
    assert any(".mlp.activation_fn." in k for k in reloaded.state_dict())
    if act == "xielu":  # bfloat16 in a float32 model, as in transformers, through casts too
        assert hf.vivit.layers[0].mlp.activation_fn.alpha_p.dtype == torch.bfloat16
        assert ours.float().blocks[0].mlp.act.alpha_p.dtype == torch.bfloat16 == ours.blocks[1].mlp.act.eps.dtype
    for key, value in hf.state_dict().items():
        if layout == "hub" and ".activation_fn." in key:
            # The hub layout names it as transformers < 5.9 did (intermediate.intermediate_act_fn.*);
            # transformers >= 5.9's own hub-key conversion has no rule for it, so it is read back here.
            layer, name = int(key.split(".")[2]), key.rsplit(".", 1)[1]
            assert torch.equal(getattr(ours.blocks[layer].mlp.act, name), value), key
            continue
        assert torch.equal(reloaded.state_dict()[key], value), key
    hf.save_pretrained(tmp_path / "hf")
    x = clip_pixels(hf.config)
    with torch.no_grad():
        ref = hf(x).logits
        for processing in ({}, dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True)):
            loaded = HookedViViT.from_pretrained(tmp_path / "hf", **processing)
            assert loaded.cfg.d_head == 3 and loaded.cfg.n_ctx == 1 + 1 * 2 * 2
            assert max_rel(loaded(x), ref) <= TOL, processing


def test_pixel_baseline_and_preprocessing_use_each_tokens_pixels(ragged):
    _, model, x = ragged
    grid = model.cfg.grid
    other = clip_pixels(VivitConfig(**NEWLY_ACCEPTED["ragged_every_axis"]), batch=1, seed=4)
    feats = probe_features(model, [(x, other)]).pixels  # [2 clips, slots * C * rows * cols]
    for clip, clip_pixels_ in enumerate((x, other)):
        grid_means = feats[clip].view(grid.n_frame_slots, 3, grid.n_rows, grid.n_cols)
        for token in range(1, grid.n_ctx):
            t, r, c = grid.coords(token)
            frames, rows, cols = grid.pixel_box(token)
            expected = clip_pixels_[0, frames.start : frames.stop, :, rows, cols].mean(dim=(0, 2, 3))
            torch.testing.assert_close(grid_means[t, :, r, c], expected)
    frames_u8 = np.random.default_rng(2).integers(0, 256, (7, 20, 16, 3), dtype=np.uint8)
    pixels_in = preprocess(frames_u8, config=model.cfg)
    assert pixels_in.shape == (1, 7, 3, 13, 11) and model(pixels_in).shape == (1, 3)
    one_channel = HookedViViTConfig(
        num_frames=2,
        image_size=8,
        tubelet_size=(2, 4, 4),
        d_model=8,
        d_head=4,
        n_heads=2,
        n_layers=1,
        d_mlp=8,
        n_channels=1,
        n_classes=2,
    )
    with pytest.raises(ValueError, match="this model takes 1 channels per frame; preprocess makes RGB"):
        preprocess(frames_u8, config=one_channel)
