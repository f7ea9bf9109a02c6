"""Reading, writing, sampling and preprocessing video, against transformers' VivitImageProcessor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers import VivitImageProcessor

from hooked_vivit import video
from hooked_vivit.synthetic import render_clip

STEP = 2 / 127.5  # one uint8 step after VivitImageProcessor's rescale + normalise


def _hf(frames: np.ndarray, crop: int, shortest: int) -> torch.Tensor:
    proc = VivitImageProcessor(size={"shortest_edge": shortest}, crop_size={"height": crop, "width": crop})
    return proc(list(frames), return_tensors="pt").pixel_values


@pytest.mark.parametrize("shape", [(360, 640), (240, 320), (300, 200), (224, 224), (480, 270), (150, 170)])
@pytest.mark.parametrize("crop,shortest", [(224, 224), (224, 256), (64, 64)])
def test_preprocess_equals_vivit_image_processor_random(shape, crop, shortest):
    frames = np.random.default_rng(sum(shape)).integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    ours = video.preprocess(frames, crop_size=crop, shortest_edge=shortest)
    ref = _hf(frames, crop, shortest)
    assert ours.shape == ref.shape == (1, 3, 3, crop, crop) and ours.dtype == torch.float32
    diff = (ours - ref).abs()
    assert diff.max() <= STEP and diff.mean() <= 0.25 * STEP, (float(diff.max()), float(diff.mean()))


def test_preprocess_equals_processor_on_rendered_frames():
    frames = render_clip("bowling", 5, num_frames=8, size=200).frames
    frames = np.concatenate([frames, frames[:, :, :60]], axis=2)  # non-square 200x260
    ours, ref = video.preprocess(frames, crop_size=160, shortest_edge=180), _hf(frames, 160, 180)
    diff = (ours - ref).abs()
    assert diff.max() <= STEP and diff.mean() <= 0.25 * STEP
    assert float(ref.min()) >= -3.0 and float(ref.max()) <= 1.0  # [-3, 1]: the processor rescales and normalises


def test_preprocess_sizes_from_config_and_unnormalize():
    from hooked_vivit import HookedViViTConfig

    cfg = HookedViViTConfig(
        num_frames=4,
        image_size=(48, 64),
        tubelet_size=(2, 16, 16),
        d_model=32,
        n_heads=2,
        d_head=16,
        n_layers=1,
        d_mlp=64,
        n_classes=3,
    )
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    x = video.preprocess(frames, config=cfg)
    assert x.shape == (1, 4, 3, 48, 64)
    np.testing.assert_array_equal(video.unnormalize(x), frames)  # no resize, no crop: exact inverse


def test_stack_videos():
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 256, (4, 90, 120, 3), dtype=np.uint8) for _ in range(3)]
    batch = video.stack_videos(clips, crop_size=64)
    assert batch.shape == (3, 4, 3, 64, 64)
    torch.testing.assert_close(batch[1:2], video.preprocess(clips[1], crop_size=64))
    with pytest.raises(ValueError, match="different frame counts"):
        video.stack_videos([clips[0], clips[1][:2]], crop_size=64)


def test_preprocess_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        video.preprocess(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \[T, H, W, 3\]"):
        video.preprocess(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="smaller than the 224x224 crop"):
        video.preprocess(np.zeros((1, 64, 64, 3), np.uint8), crop_size=224, shortest_edge=200)


def test_sample_indices():
    np.testing.assert_array_equal(video.sample_indices(100, 5), [0, 25, 50, 74, 99])
    np.testing.assert_array_equal(
        video.sample_indices(100, 4, sampling="strided", frame_sample_rate=4, start_index=10), [10, 14, 18, 22]
    )
    with pytest.warns(UserWarning, match="fewer than the 6 asked"):
        np.testing.assert_array_equal(video.sample_indices(4, 6), [0, 1, 2, 3, 3, 3])
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(video.sample_indices(4, 6, pad="loop"), [0, 1, 2, 3, 0, 1])
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(
            video.sample_indices(10, 4, sampling="strided", frame_sample_rate=3, start_index=5), [5, 8, 8, 8]
        )
    with pytest.raises(ValueError, match="past the end"):
        video.sample_indices(10, 4, sampling="strided", start_index=10)


def test_write_read_round_trip(tmp_path):
    clip = render_clip("golf", 2, num_frames=12, size=96).frames
    path = video.write_video(clip, tmp_path / "clip.mp4", fps=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary left
    assert video.count_frames(path) == 12
    back = video.load_video(path, 12)
    assert back.shape == clip.shape and back.dtype == np.uint8
    err = np.abs(back.astype(int) - clip.astype(int))
    assert err.mean() < 4 and np.percentile(err, 99) < 40  # mp4v is lossy, but close
    # Sampling reads the right frames: uniform 4 of 12 = frames 0, 4, 7, 11.
    four = video.load_video(path, 4)
    np.testing.assert_array_equal(four, back[[0, 4, 7, 11]])
    strided = video.load_video(path, 3, sampling="strided", frame_sample_rate=2, start_index=1)
    np.testing.assert_array_equal(strided, back[[1, 3, 5]])


def test_short_clip_is_padded_with_a_warning(tmp_path):
    clip = render_clip("bowling", 1, num_frames=8, size=64).frames[:5]
    path = video.write_video(clip, tmp_path / "short.mp4")
    with pytest.warns(UserWarning, match="clip has 5 frames, fewer than the 8 asked"):
        out = video.load_video(path, 8)
    np.testing.assert_array_equal(out[5:], np.repeat(out[4:5], 3, axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        looped = video.load_video(path, 8, pad="loop")
    np.testing.assert_array_equal(looped[5:], looped[:3])


def test_bad_files_name_file_and_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4: no such video file"):
        video.load_video(tmp_path / "nope.mp4", 8)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(video.VideoReadError, match="empty.mp4: the file is empty"):
        video.load_video(tmp_path / "empty.mp4", 8)
    (tmp_path / "text.mp4").write_text("this is not a video")
    with pytest.raises(video.VideoReadError, match="text.mp4: OpenCV cannot open it"):
        video.load_video(tmp_path / "text.mp4", 8)
    good = video.write_video(render_clip("bowling", 1, num_frames=8, size=64).frames, tmp_path / "good.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good.read_bytes()[:200])  # truncated: header, no frames
    with pytest.raises(video.VideoReadError, match="broken.mp4"):
        video.load_video(broken, 8)
    with pytest.raises(video.VideoReadError, match="is a directory"):
        video.load_video(tmp_path, 8)


def test_grayscale_and_alpha_frames_become_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = video._to_rgb(gray)
    assert rgb.shape == (3, 4, 3) and (rgb == gray[..., None]).all()
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 7  # blue 10, red 200, alpha 7
    out = video._to_rgb(bgra)
    assert out.shape == (3, 4, 3) and out[0, 0].tolist() == [200, 0, 10]
