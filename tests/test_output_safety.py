"""Issue 32: --overwrite never deletes a command's input (extract's and study's clips).
Every test here failed on the code before the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from hooked_vivit import HookedViViT
from hooked_vivit.cli import main
from tests.conftest import make_hf

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    image_size=32,
    num_frames=4,
    tubelet_size=[2, 8, 8],
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_labels=3,
)
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return HookedViViT.from_hf_model(make_hf(TINY, seed=5)).save_pretrained(tmp_path_factory.mktemp("m") / "model")


def render(out, *extra) -> int:
    return main(["render", "--domain", "bowling", "--frames", "8", "--size", "32", "--out", str(out), *extra])


def extract(ckpt, videos, out, *extra) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(
            ["extract", "--model", str(ckpt), "--videos", str(videos), "--hooks", HOOK, "--workers", "0", "--quiet"]
            + ["--out", str(out), *extra]
        )
    finally:
        torch.set_num_threads(threads)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ============================================================================ 2-3. inputs of extract and study
def test_extract_overwrite_never_deletes_its_input_clips(tmp_path, capsys, ckpt):
    rr = tmp_path / "rr"
    assert render(rr) == 0
    clips = contents(rr)
    videos = tmp_path / "m.csv"
    videos.write_text("path\nrr/positive.mp4\nrr/negative.mp4\n")
    assert extract(ckpt, videos, rr, "--overwrite") == 2
    err = one_line_error(capsys)
    assert "holds the input" in err and "positive.mp4" in err
    assert contents(rr) == clips
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "rr"]  # no lock, no resume folder


def test_study_overwrite_never_deletes_its_input_clips(tmp_path, capsys, ckpt):
    rr = tmp_path / "rr"
    assert render(rr) == 0
    clips = contents(rr)
    pairs = tmp_path / "m.jsonl"
    rows = [
        {"path": f"rr/{role}.mp4", "pair": f"p{i}", "role": role} for i in range(3) for role in ("positive", "negative")
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["study", "--model", str(ckpt), "--pairs", str(pairs), "--out", str(rr), "--overwrite", "--quiet"]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "holds the input" in err and "positive.mp4" in err
    assert contents(rr) == clips
