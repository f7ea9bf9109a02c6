"""Maps, static renderings (PNG grid, GIF, MP4) and the ipywidgets viewer built headless."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hooked_vivit import HookedViViT, synthetic, viewer
from hooked_vivit.video import load_video, preprocess
from tests.conftest import make_hf

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
def setup():
    model = HookedViViT.from_hf_model(make_hf(SQUARE, seed=5))
    frames = synthetic.render_clip("bowling", 1, num_frames=8, size=32).frames
    return model, frames, preprocess(frames, config=model.cfg)


def test_maps_and_overlay(setup):
    model, frames, x = setup
    att = viewer.token_maps(model, x)
    assert att.shape == (2, 2, 4, 4, 4)
    _, cache = model.run_with_cache(x)
    for l in range(2):  # the grid holds all CLS attention except what CLS pays itself
        np.testing.assert_allclose(att[l].sum(axis=(1, 2, 3)), 1 - cache["pattern", l][0, :, 0, 0].numpy(), atol=1e-5)
        # token by token, the CLS row of the full pattern (the map comes from attention_rows)
        np.testing.assert_allclose(att[l].reshape(2, -1), cache["pattern", l][0, :, 0, 1:].numpy(), atol=1e-6, rtol=0)
    dla = viewer.token_maps(model, x, "attribution", class_index=3)
    assert dla.shape == att.shape and np.abs(dla).sum() > 0
    img = viewer.overlay(frames[0], att[1, 0, 0])
    assert img.shape == frames[0].shape and img.dtype == np.uint8 and not np.array_equal(img, frames[0])
    hot = np.zeros((4, 4), np.float32)
    hot[1, 2] = 1.0
    lit = viewer.overlay(np.zeros((32, 32, 3), np.uint8), hot)
    assert lit[8:16, 16:24].mean() > lit[:8, :8].mean() + 50  # the map lands on its token's pixels


def test_static_renderings(setup, tmp_path):
    model, frames, x = setup
    maps = viewer.token_maps(model, x)
    png = viewer.save_grid_png(model, frames, maps, tmp_path / "grid.png")
    w, h = Image.open(png).size
    assert h == 2 * 2 * 34 and w == 4 * 34
    gif = viewer.save_animation(model, frames, maps, tmp_path / "att.gif", head=1)
    assert Image.open(gif).n_frames == 8
    mp4 = viewer.save_animation(model, frames, maps, tmp_path / "att.mp4")
    assert load_video(mp4, 8).shape == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="expected 8 frames"):
        viewer.save_grid_png(model, frames[:4], maps, tmp_path / "x.png")


def test_widget_builds_headless(setup):
    pytest.importorskip("ipywidgets")
    model, frames, x = setup
    box = viewer.interactive(model, x, frames)
    frame_slider, layer_slider, head_slider = box.children[0].children
    image = box.children[2]

    def shown() -> np.ndarray:  # the widget's PNG, decoded
        return np.asarray(Image.open(io.BytesIO(image.value)).convert("RGB"))

    def expected(kind: str, layer: int, head: int | None, frame: int) -> np.ndarray:
        # The static renderer's frame for the same state (the widget shows it 8x larger: 256 // 32).
        maps = viewer.token_maps(model, x, kind)
        still = viewer.render_frames(model, frames, maps, layer, head, signed=kind == "attribution")[frame]
        return np.repeat(np.repeat(still, 8, axis=0), 8, axis=1)

    first = shown()
    np.testing.assert_array_equal(first, expected("cls_attention", 1, None, 0))  # defaults: last layer, heads summed
    frame_slider.value = 7  # observers redraw
    np.testing.assert_array_equal(shown(), expected("cls_attention", 1, None, 7))
    box.children[1].value = "attribution"
    head_slider.value = 0
    layer_slider.value = 0
    np.testing.assert_array_equal(shown(), expected("attribution", 0, 0, 7))
    assert not np.array_equal(shown(), first)
