"""hooked_vivit.parity and `hooked-vivit parity`: a readable report, and a broken conversion is
caught and named by layer."""

from __future__ import annotations

import json

import torch

from hooked_vivit import HookedViViT
from hooked_vivit.cli import main
from hooked_vivit.parity import compare
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["3layers_4x4x4"]


def test_report_passes_on_a_correct_conversion():
    hf = make_hf(KW)
    report = compare(HookedViViT.from_hf_model(hf), hf, pixels(KW))
    assert report.ok() and report.patterns_compared
    names = [r.name for r in report.rows]
    assert names[0].startswith("embeddings") and names[-1] == "logits"
    assert {"pattern 0", "resid_post 2"} <= set(names)
    assert report.worst().max_rel <= 1e-5
    assert "PASS" in repr(report) and "| logits |" in report.to_markdown()
    assert json.loads(report.to_json())["ok"] is True
    sdpa = compare(HookedViViT.from_hf_model(hf), hf, pixels(KW), attn="sdpa")
    assert sdpa.ok() and not sdpa.patterns_compared and "not compared" in sdpa.to_markdown()


def test_a_transposed_head_is_named_by_layer():
    hf = make_hf(KW)
    model = HookedViViT.from_hf_model(hf)
    with torch.no_grad():
        W = model.blocks[1].attn.W_V[1]
        model.blocks[1].attn.W_V[1] = W.T.reshape(W.shape)  # the classic reshape-without-permute bug
    report = compare(model, hf, pixels(KW))
    assert not report.ok()
    assert report.first_failure() == "resid_post 1"
    assert [r.name for r in report.failures()][:1] == ["resid_post 1"]
    assert "pattern 1" not in [r.name for r in report.failures()]  # V does not touch layer 1's pattern


def test_parity_command(tmp_path, capsys):
    hf = make_hf(KW)
    hf.save_pretrained(tmp_path / "ckpt")
    assert main(["parity", "--model", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "| pattern 2 |" in out
    assert main(["parity", "--model", str(tmp_path / "ckpt"), "--dtype", "bfloat16"]) == 0
    assert "tolerance 0.05 (bfloat16)" in capsys.readouterr().out
    assert main(["parity", "--model", str(tmp_path / "ckpt"), "--tol", "1e-12"]) == 1
