"""Issue 32, item 10: real collections come in many sizes. A pair whose clips differ in size is analysed
(``analyze`` and ``study --pairs`` alike) at the model's input size, with the native sizes reported and a
warning that it is not a minimal pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hooked_vivit import HookedViViT, synthetic
from hooked_vivit.analysis import pipeline
from hooked_vivit.analysis.pair_study import study_pairs
from hooked_vivit.cli import main
from hooked_vivit.video import load_video, model_view, preprocess, write_video
from tests.conftest import make_hf

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    image_size=32,
    num_frames=8,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=6,
)
# Two aspect ratios of real footage (2.35:1 and 16:9), at sizes a 32-pixel model can take.
WIDE, HD = (94, 40), (64, 36)


def resized(frames: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(f, wh, interpolation=cv2.INTER_AREA) for f in frames])


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A checkpoint, and three rendered pairs written as mp4 files: pair 0 in two sizes, pairs 1-2 in one."""
    root = tmp_path_factory.mktemp("real")
    ckpt = HookedViViT.from_hf_model(make_hf(TINY, seed=11)).save_pretrained(root / "model")
    rows = []
    for i in range(3):
        pos, neg, _ = synthetic.render_pair("golf", 900 + i, num_frames=8, size=48)
        sizes = (WIDE, HD) if i == 0 else (HD, HD)
        for role, frames, wh in (("positive", pos, sizes[0]), ("negative", neg, sizes[1])):
            write_video(resized(frames, wh), root / f"p{i}_{role}.mp4")
            rows.append({"path": f"p{i}_{role}.mp4", "pair": f"p{i}", "role": role})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, ckpt


def test_model_view_is_what_preprocess_feeds_the_model_and_is_its_own_view():
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 94, 3), dtype=np.uint8)
    view = model_view(frames, crop_size=32)
    assert view.shape == (3, 32, 32, 3) and view.dtype == np.uint8
    assert np.array_equal(model_view(view, crop_size=32), view)
    # Exact: the pixels of the view are the pixels of the native clip.
    assert torch.equal(preprocess(view, crop_size=32), preprocess(frames, crop_size=32))


def test_size_mismatch_warning_names_both_sizes_and_is_none_for_equal_sizes():
    said = pipeline.size_mismatch_warning(("a", "b"), [(640, 272), (1280, 720)])
    assert "a is 640x272" in said and "b is 1280x720" in said and "not a minimal pair" in said
    assert pipeline.size_mismatch_warning(("a", "b"), [(640, 272), (640, 272)]) is None


def test_analyze_runs_on_clips_of_two_sizes_and_reports_them(clips, tmp_path):
    root, ckpt = clips
    clean, corrupted = root / "p0_positive.mp4", root / "p0_negative.mp4"
    out = tmp_path / "report"
    argv = ["analyze", "--model", str(ckpt), "--clean", str(clean), "--corrupted", str(corrupted)]
    # The command as a user runs it: the warning is one line on stderr.
    proc = subprocess.run(
        [sys.executable, "-m", "hooked_vivit.cli", *argv, "--probe-pairs", "0", "--out", str(out), "--quiet"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warned == [
        "hooked-vivit analyze: warning: " + pipeline.size_mismatch_warning(("p0_positive", "p0_negative"), [WIDE, HD])
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["pair"]["native_sizes"] == [list(WIDE), list(HD)]
    assert results["pair"]["model_view"] == [32, 32]
    assert results["pair"]["size_warning"] == pipeline.size_mismatch_warning(("p0_positive", "p0_negative"), [WIDE, HD])
    html = (out / "report.html").read_text()
    assert "Not a minimal pair:" in html and "p0_positive 94x40, p0_negative 64x36 pixels" in html
    assert "centre-cropped to 32x32" in html
    # The logits reported are those of the native clips, preprocessed each on its own.
    model = HookedViViT.from_pretrained(ckpt)
    with torch.no_grad():
        logits = model(torch.cat([preprocess(load_video(p, 8), config=model) for p in (clean, corrupted)]))
    for row, role in zip(logits, ("positive", "negative")):
        assert results["prediction"][role]["class"] == int(row.argmax())
        # Same pixels, float32 forwards batched differently: a few ulps of a 2-layer model's logit.
        assert results["prediction"][role]["logit"] == pytest.approx(float(row.max()), rel=64 * torch.finfo().eps)


def test_analyze_of_one_size_pair_says_its_size_and_warns_nothing(clips, tmp_path):
    root, ckpt = clips
    argv = ["analyze", "--model", str(ckpt), "--clean", str(root / "p1_positive.mp4")]
    argv += ["--corrupted", str(root / "p1_negative.mp4"), "--probe-pairs", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning at all
        assert main([*argv, "--out", str(tmp_path / "r"), "--quiet"]) == 0
    pair = json.loads((tmp_path / "r" / "results.json").read_text())["pair"]
    assert pair["native_sizes"] == [list(HD), list(HD)] and pair["size_warning"] is None
    assert "Not a minimal pair" not in (tmp_path / "r" / "report.html").read_text()


def test_study_over_pairs_measures_the_mismatched_pair_and_names_it(clips, tmp_path):
    root, ckpt = clips
    out = tmp_path / "study"
    warning = pipeline.size_mismatch_warning(("p0_positive.mp4", "p0_negative.mp4"), [WIDE, HD])
    with pytest.warns(UserWarning) as said:
        # What `study --pairs` runs, decoding in this process: forked DataLoader workers can hang in a threaded pytest.
        study_pairs(str(ckpt), root / "pairs.jsonl", out, workers=0, progress=False)
    assert [str(w.message) for w in said if "native size" in str(w.message)] == [f"pair p0: {warning}"]
    st = json.loads((out / "results.json").read_text())["studies"][0]
    assert st["pairs"] == 3 and st["pair_ids"] == ["p0", "p1", "p2"]
    assert st["native_sizes"] == [[list(WIDE), list(HD)], [list(HD), list(HD)], [list(HD), list(HD)]]
    assert st["size_warnings"] == [{"pair": "p0", "native_sizes": [list(WIDE), list(HD)], "warning": warning}]
    assert "1 of 3 pairs are not minimal pairs" in (out / "report.html").read_text()
