"""Config from HF, token grid order (checked against the Conv3d embedding itself), labels."""

from __future__ import annotations

import pytest
import torch
from transformers import VivitConfig

from hooked_vivit import HookedViViTConfig, TokenGrid, format_top_k, kinetics400_labels, top_k
from tests.conftest import SMALL_CONFIGS, make_hf


def test_defaults_are_vivit_b():
    cfg = HookedViViTConfig()
    assert cfg.n_ctx == 1 + 16 * 14 * 14 == 3137
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_mlp, cfg.act_fn) == (12, 12, 768, 3072, "gelu_fast")
    assert cfg.id2label[31] == "bowling" and cfg.d_vocab == 400
    ours = HookedViViTConfig.from_hf_config(VivitConfig(num_labels=400))
    assert ours.n_ctx == cfg.n_ctx and ours.eps == 1e-6


def test_round_trip_through_hf_config_dict():
    hf = make_hf(SMALL_CONFIGS["nonsquare_2x8x8_3heads"])
    cfg = HookedViViTConfig.from_hf_config(hf.config)
    assert cfg.image_size == (32, 48) and cfg.tubelet_size == (2, 8, 8) and cfg.n_ctx == 1 + 2 * 4 * 6
    again = HookedViViTConfig.from_hf_config(VivitConfig(**cfg.to_hf_config_dict()).to_dict())
    for field in (
        "d_model",
        "n_heads",
        "n_layers",
        "d_mlp",
        "image_size",
        "tubelet_size",
        "num_frames",
        "id2label",
        "qkv_bias",
        "eps",
    ):
        assert getattr(again, field) == getattr(cfg, field), field


def test_bad_configs_are_explained():
    # What transformers cannot run either (its Conv3d, its head_dim = 0); tests/test_configs.py has the rest.
    with pytest.raises(ValueError, match="num_frames 1 is smaller than the tubelet size 2: no token would cover it"):
        HookedViViTConfig(num_frames=1)
    with pytest.raises(ValueError, match=r"n_heads \(5\) and d_head \(0\) must be >= 1"):
        HookedViViTConfig(n_heads=5, d_head=0)
    with pytest.raises(ValueError, match="expected a ViViT config"):
        HookedViViTConfig.from_hf_config({"model_type": "vit"})


def test_grid_index_coords_round_trip():
    grid = TokenGrid(3, 4, 5)
    seen = set()
    for t in range(3):
        for r in range(4):
            for c in range(5):
                i = grid.index(t, r, c)
                assert i == 1 + t * 20 + r * 5 + c
                assert grid.coords(i) == (t, r, c)
                seen.add(i)
    assert seen == set(range(1, grid.n_ctx))
    assert grid.coords(0) is None  # CLS has no place on the grid
    assert grid.label(0) == "CLS" and grid.label(grid.index(2, 1, 4)) == "t2 r1 c4"
    with pytest.raises(IndexError, match="CLS"):
        grid.pixel_box(0)
    with pytest.raises(IndexError, match="out of range"):
        grid.coords(grid.n_ctx)
    assert grid.frame_slot_of_frame(5) == 2 and list(grid.frames_of_slot(2)) == [4, 5]
    assert grid.positions(frame_slots=1, rows=[0, 3], cols=slice(0, 2)) == sorted(
        grid.index(1, r, c) for r in (0, 3) for c in (0, 1)
    )
    x = torch.arange(grid.n_ctx * 2.0).view(2, grid.n_ctx)
    cls, g = grid.unflatten(x)
    assert g.shape == (2, 3, 4, 5) and g[1, 2, 3, 4] == x[1, grid.index(2, 3, 4)]
    assert torch.equal(grid.flatten(cls, g), x)


def test_grid_matches_the_tubelet_embedding(tiny):
    """Changing the pixels of one tubelet changes exactly the token the grid names."""
    model, x, _ = tiny
    grid = model.cfg.grid
    _, base = model.run_with_cache(x, names_filter="hook_embed")
    t, r, c = 1, 2, 5
    frames, rows, cols = grid.pixel_box(grid.index(t, r, c))
    y = x.clone()
    y[:, frames.start : frames.stop, :, rows, cols] += 1.0
    _, moved = model.run_with_cache(y, names_filter="hook_embed")
    changed = (moved["hook_embed"] - base["hook_embed"]).abs().amax(dim=(0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [grid.index(t, r, c)]


def test_labels_and_top_k():
    labels = kinetics400_labels()
    assert len(labels) == 400 and labels[31] == "bowling"
    logits = torch.zeros(2, 400)
    logits[0, 31], logits[1, 5] = 5.0, 3.0
    rows = top_k(logits, dict(enumerate(labels)), k=2)
    assert rows[0][0].label == "bowling" and rows[0][0].index == 31 and rows[1][0].index == 5
    assert abs(sum(r.prob for r in top_k(logits[0], dict(enumerate(labels)), k=400)[0]) - 1) < 1e-5
    assert "bowling" in format_top_k(logits, dict(enumerate(labels)), k=3)
