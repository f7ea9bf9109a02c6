"""Issue 32: Ctrl-C stops a command with one line (no traceback), exit 130, and leaves no partial output;
extract keeps its finished shards for the same command to continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hooked_vivit import HookedViViT
from hooked_vivit.analysis import pipeline
from hooked_vivit.cli import main
from hooked_vivit.video import write_video
from tests.conftest import make_hf

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    image_size=32,
    num_frames=4,
    tubelet_size=[2, 8, 8],
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_labels=3,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    ckpt = HookedViViT.from_hf_model(make_hf(TINY, seed=2)).save_pretrained(root / "model")
    rng = np.random.default_rng(1)
    for i in range(4):
        write_video(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), root / "clips" / f"c{i}.mp4")
    return root, ckpt


def test_ctrl_c_in_analyze_is_one_line_exit_130_and_writes_nothing(setup, tmp_path, capsys, monkeypatch):
    root, ckpt = setup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "analyze_pair", interrupted)
    out = tmp_path / "report"
    argv = ["analyze", "--model", str(ckpt), "--clean", str(root / "clips" / "c0.mp4")]
    assert main([*argv, "--corrupted", str(root / "clips" / "c1.mp4"), "--out", str(out), "--quiet"]) == 130
    assert capsys.readouterr().err == f"hooked-vivit analyze: interrupted (Ctrl-C); --out {out} was not written\n"
    assert sorted(os.listdir(tmp_path)) == []  # no output, no partial folder, no lock


def test_sigint_during_extract_keeps_the_finished_shards_and_the_same_command_continues(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "acts"
    argv = [sys.executable, "-m", "hooked_vivit.cli", "extract", "--model", str(ckpt), "--videos", str(root / "clips")]
    argv += [
        "--hooks",
        "blocks.0.hook_resid_post",
        "--shard-clips",
        "1",
        "--workers",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # SIGINT (what Ctrl-C sends) right after the second shard is written.
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env={**env, "HOOKED_VIVIT_TEST_KILL": "after:2:0:SIGINT"},
        capture_output=True,
        text=True,
        timeout=300,
        # a suite started in the background by a non-interactive shell inherits SIGINT ignored, and Python
        # then installs no KeyboardInterrupt handler: give the child the default a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    resume = tmp_path / ".acts.resume"
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == (
        f"hooked-vivit extract: interrupted (Ctrl-C); --out {out} was not written (finished shards stay in {resume}: "
        "rerun the same command to continue)\n"
    )
    assert not out.exists() and sorted(p.name for p in resume.iterdir() if p.suffix == ".safetensors") == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == [
        f"shard-0000{i}.safetensors" for i in range(4)
    ]
    assert not resume.exists()
