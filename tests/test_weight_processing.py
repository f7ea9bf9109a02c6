"""fold_ln, center_writing_weights and fold_value_biases leave the model's function unchanged."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedViViT
from tests.conftest import SMALL_CONFIGS, make_hf, max_rel, pixels


@pytest.mark.parametrize("config", ["nonsquare_2x8x8_3heads", "nobias_1layer_5heads"])
@pytest.mark.parametrize(
    "processing",
    [
        dict(fold_ln=True),
        dict(center_writing_weights=True),
        dict(fold_value_biases=True),
        dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True),
    ],
    ids=["fold_ln", "center", "fold_vb", "all"],
)
def test_processing_keeps_logits(config, processing):
    kw = SMALL_CONFIGS[config]
    hf = make_hf(kw)
    x = pixels(kw)
    plain = HookedViViT.from_hf_model(hf)
    processed = HookedViViT.from_hf_model(hf, **processing)
    with torch.no_grad():
        ref, out = plain(x), processed(x)
    assert max_rel(out, ref) <= 1e-5
    _, c_plain = plain.run_with_cache(x)
    _, c_proc = processed.run_with_cache(x)
    # Patterns are unchanged by all three (fold_ln shifts scores by a per-query constant at most).
    assert max_rel(c_proc["pattern", 0], c_plain["pattern", 0]) <= 1e-5
    if processing.get("fold_ln"):
        assert processed.cfg.normalization_type == "LNPre" and processed.blocks[0].ln1.w is None
    if processing.get("center_writing_weights"):
        assert c_proc["resid_post", 0].mean(-1).abs().max() < 1e-5
        assert c_plain["resid_post", 0].mean(-1).abs().max() > 1e-3
    if processing.get("fold_value_biases"):
        assert processed.b_V.abs().max() == 0


def test_processed_model_saves_and_reloads(tmp_path):
    kw = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]
    hf = make_hf(kw)
    model = HookedViViT.from_hf_model(hf, fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    x = pixels(kw)
    for layout in ("transformers", "hooked"):
        path = model.save_pretrained(tmp_path / layout)
        again = HookedViViT.from_pretrained(path)
        assert again.cfg.folded_ln and again.cfg.normalization_type == "LNPre"
        torch.testing.assert_close(again(x), model(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="already processed"):
        HookedViViT.from_pretrained(tmp_path / "hooked", fold_ln=True)
