"""Procedural clips: deterministic, identical before the divergence frame, different after,
masks on the drawn objects, and varied across seeds."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from hooked_vivit import synthetic, video
from hooked_vivit.cli import main

DOMAINS = ["bowling", "golf", "basketball"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_bytes(domain):
    a = synthetic.render_pair(domain, 7, num_frames=16, size=64)
    b = synthetic.render_pair(domain, 7, num_frames=16, size=64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2]["divergence_frame"] == b[2]["divergence_frame"]


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_identical_before_divergence_and_different_after(domain, seed):
    pos, neg, meta = synthetic.render_pair(domain, seed)
    d = meta["divergence_frame"]
    assert pos.shape == neg.shape == (32, 224, 224, 3) and pos.dtype == np.uint8
    assert 4 <= d < 24, d
    assert np.array_equal(pos[:d], neg[:d])
    assert not np.array_equal(pos[d], neg[d])
    assert all(not np.array_equal(pos[t], neg[t]) for t in range(d, 32 - 2))


@pytest.mark.parametrize("domain", DOMAINS)
def test_pixels_that_differ_lie_on_the_objects(domain):
    pos, neg, meta = synthetic.render_pair(domain, 11)
    d = meta["divergence_frame"]
    objects = np.zeros(pos.shape[:3], bool)
    for masks in meta["masks"].values():
        for m in masks.values():
            objects |= m
    kernel = np.ones((7, 7), np.uint8)  # anti-aliased edges, shadows and rims just outside a mask
    near = np.stack([cv2.dilate(f.astype(np.uint8), kernel) > 0 for f in objects])
    differ = (np.abs(pos.astype(int) - neg.astype(int)).max(-1) > 8)[d:]
    assert differ.sum() > 20
    assert (differ & near[d:]).sum() / differ.sum() > 0.8


@pytest.mark.parametrize("domain", DOMAINS)
def test_masks_line_up_with_drawn_objects(domain):
    """Where a mask says 'ball', the picture differs from the frame where the ball is elsewhere."""
    clip = synthetic.render_clip(domain, 5)
    ball = clip.masks["ball"]
    visible = [t for t in range(len(ball)) if ball[t].sum() > 20]
    assert len(visible) >= 8
    t1, t2 = visible[2], visible[len(visible) // 2]
    only_t1 = ball[t1] & ~ball[t2]
    eroded = cv2.erode(only_t1.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert eroded.sum() > 20  # the ball moved by more than its anti-aliased rim: there is an interior to check
    # Inside the ball at t1 (and not at t2) the pixels change between the two frames.
    change = np.abs(clip.frames[t1].astype(int) - clip.frames[t2].astype(int)).max(-1)
    assert (change[eroded] > 10).mean() > 0.9
    ys, xs = np.nonzero(ball[t1])
    ys2, xs2 = np.nonzero(ball[t2])
    assert abs(ys.mean() - ys2.mean()) + abs(xs.mean() - xs2.mean()) > 3  # the ball moves


@pytest.mark.parametrize("action", synthetic.ACTIONS)
def test_every_action_renders_and_varies_with_the_seed(action):
    clips = [synthetic.render_clip(action, s, num_frames=16, size=64) for s in range(4)]
    for c in clips:
        assert c.frames.shape == (16, 64, 64, 3) and c.frames.dtype == np.uint8
        assert c.meta["action"] == action
        assert np.abs(np.diff(c.frames.astype(int), axis=0)).mean() > 0.2  # something moves
    means = np.array([c.frames.reshape(-1, 3).mean(0) for c in clips])
    assert np.ptp(means, axis=0).max() > 10  # colours / lighting differ between seeds
    assert not np.array_equal(clips[0].frames, clips[1].frames)


def test_outcomes_balance_and_validation():
    drawn = [synthetic.render_clip("bowling", s, num_frames=8, size=32).meta["outcome"] for s in range(40)]
    assert 10 <= drawn.count("strike") <= 30
    with pytest.raises(ValueError, match="has outcomes"):
        synthetic.render_clip("bowling", 0, outcome="spare")
    with pytest.raises(ValueError, match="unknown action"):
        synthetic.render_clip("curling", 0)
    with pytest.raises(ValueError, match="no outcome to contrast"):
        synthetic.render_pair("skipping rope", 0)


def test_pair_round_trips_through_mp4(tmp_path):
    pos, neg, meta = synthetic.render_pair("golf", 3, num_frames=16, size=96)
    video.write_video(pos, tmp_path / "p.mp4")
    back = video.load_video(tmp_path / "p.mp4", 16)
    assert np.abs(back.astype(int) - pos.astype(int)).mean() < 4


def test_render_command_writes_a_whole_directory(tmp_path, capsys):
    out = tmp_path / "pair"
    assert (
        main(["render", "--domain", "bowling", "--seed", "3", "--frames", "16", "--size", "96", "--out", str(out)]) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [".hooked-vivit-manifest.json", "frames.png", "meta.json", "negative.mp4", "positive.mp4"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["outcomes"] == {"positive": "strike", "negative": "gutter"} and meta["seed"] == 3
    assert video.load_video(out / "positive.mp4", 16).shape == (16, 96, 96, 3)
    assert main(["render", "--domain", "bowling", "--seed", "3", "--out", str(out)]) == 2  # exists
    assert "earlier output of hooked-vivit render" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair"]


# Regression oracle for the renderers: sha256 (first 16 hex digits) of frames, masks and meta of every
# action / outcome, seeds 0, 1, 4,000,000 at 16 frames of 64 px and seed 7 at 32 frames of 224 px.
# Produced by the renderers as they were before their shared frame loop moved into Stage.render
# (commit f3072cb, OpenCV 5.0.0, NumPy 2.4.6): the refactor had to reproduce them bit for bit. A change
# here changes every clip the organism was trained, tested and probed on; regenerate only on purpose.
RENDER_DIGESTS = {
    ("bowling", "strike"): ("33e5c774ee45d037", "6d0062a88878aa08", "177084864af59c17", "2a52b3bec4dded52"),
    ("bowling", "gutter"): ("fb7e768bd5881f7c", "50b4b15baf0f4e3c", "9d619f700567b944", "3eda85b6423a7ec8"),
    ("golf putting", "in"): ("b170361c7004c586", "42763742d33e298d", "3fc3dc2488c5ffac", "fa9ce75b3e258809"),
    ("golf putting", "miss"): ("dae5647f93ab5d84", "251265e6af864774", "0e5f9876c954d7cf", "c603b9ff510ff487"),
    ("juggling balls", "none"): ("3bc1500b0c4b2b96", "91238d3f1bdb521f", "50ed6e762c6c5f18", "6e41dfe48647f3ff"),
    ("shooting basketball", "make"): ("1c9b9bc652c8f745", "1512d6f84ce84393", "00e0dfc29766a126", "2192be278175ebd4"),
    ("shooting basketball", "miss"): ("0ee4cf47269ef1c6", "fa3f7ca36a157e85", "09a9648acd1fb963", "8621f86a1d0c90b4"),
    ("swinging pendulum", "none"): ("a7cae08456bceff0", "e145573e1b6da094", "bd92117b6826554a", "a4ffd9646fdcd123"),
    ("skipping rope", "none"): ("70908808db757155", "93071f685c6b555e", "779ea557fe636257", "90bb2b778b86164c"),
}
DIGEST_CASES = ((0, 16, 64), (1, 16, 64), (4_000_000, 16, 64), (7, 32, 224))  # (seed, num_frames, size)


def _clip_digest(clip: synthetic.Clip) -> str:
    h = hashlib.sha256(clip.frames.tobytes())
    for name in sorted(clip.masks):
        h.update(name.encode())
        h.update(clip.masks[name].tobytes())
    h.update(json.dumps(clip.meta, sort_keys=True, default=int).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("action,outcome", list(RENDER_DIGESTS))
def test_renders_are_bit_identical_to_the_reference(action, outcome):
    assert set(RENDER_DIGESTS) == {(a, o) for a in synthetic.ACTIONS for o in synthetic.OUTCOMES.get(a, ("none",))}
    got = tuple(
        _clip_digest(synthetic.render_clip(action, s, outcome=outcome, num_frames=T, size=S))
        for s, T, S in DIGEST_CASES
    )
    assert got == RENDER_DIGESTS[(action, outcome)], (
        f"{action}/{outcome}: renders changed (OpenCV {cv2.__version__}, NumPy {np.__version__})"
    )
