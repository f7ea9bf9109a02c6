"""What ``hooked-vivit sae train`` leaves behind: file modes, what each dead-feature count counts,
and a training progress bar that moves while it trains (issue 32's SAE items).

SAELens 6 needs TransformerLens 3.x: these tests run in the [sae] environment and skip elsewhere."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import tqdm.std

pytest.importorskip("sae_lens")

from hooked_vivit.sae.activations import ActivationSource  # noqa: E402
from hooked_vivit.sae.train import train_sae  # noqa: E402
from tests.test_sae import HOOK, RandomClips  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small ``sae train`` run on the organism, written under umask 027 (so 0640 is the umask's
    mode and 0600 is not)."""
    from hooked_vivit.sae import commands

    out = tmp_path_factory.mktemp("sae") / "out"
    old = os.umask(0o027)
    try:
        result = commands.train(
            model_name="actions",
            hook="blocks.2.hook_resid_post",
            clips=4,
            eval_clips=3,
            out=out,
            d_sae=16,
            k=4,
            epochs=1,
            batch_size=128,
        )
    finally:
        os.umask(old)
    return out, result


def test_every_written_file_gets_the_umask_mode(trained):
    out, _ = trained
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "provenance.json", "evaluation.json"} <= set(modes)
    assert modes["sae_weights.safetensors"] == modes["cfg.json"] == 0o640, modes  # safetensors alone wrote 0600
    assert set(modes.values()) == {0o640}, modes


def test_each_dead_feature_count_says_what_it_counts(trained):
    """cfg.json's num_dead_features (SAELens: the last training batches) and evaluation.json's dead
    (the held-out evaluation tokens) are different counts; each file names its own."""
    out, result = trained
    cfg = json.loads((out / "cfg.json").read_text())["metadata"]
    ev = json.loads((out / "evaluation.json").read_text())
    training = json.loads((out / "provenance.json").read_text())["training"]
    # evaluation.json: features active on none of its tokens, and it says how many tokens.
    assert ev["dead"] == sum(f == 0 for f in ev["per_feature"]["frequency"])
    assert f"none of these {ev['tokens']} evaluation tokens" in ev["dead_definition"]
    assert "num_dead_features" in ev["dead_definition"]
    # cfg.json (and provenance.json beside it): SAELens's count over the last training batches.
    assert cfg["num_dead_features"] == training["saelens_dead_features"]
    assert cfg["num_dead_features_definition"] == training["saelens_dead_features_definition"]
    batches, tokens = map(
        int, re.search(r"last (\d+) training batches \((\d+) tokens", cfg["num_dead_features_definition"]).groups()
    )
    assert tokens == batches * training["batch_size"] and batches <= training["steps"]
    assert "evaluation.json" in cfg["num_dead_features_definition"]
    assert "evaluation.json" in cfg["l0_definition"] and cfg["l0"] == training["saelens_final_l0"]
    assert result["evaluation"]["dead_definition"] == ev["dead_definition"]


def test_training_progress_bar_advances_every_step(tiny, monkeypatch):
    """SAELens moves its bar once per 100 steps: a 12-step run sat at 0 % until it ended. Now every
    step moves it by its batch."""
    model, _, _ = tiny
    seen = []
    update = tqdm.std.tqdm.update

    def recording(self, n=1):
        out = update(self, n)
        seen.append((id(self), self.total, self.n))
        return out

    monkeypatch.setattr(tqdm.std.tqdm, "update", recording)
    src = ActivationSource(model, HOOK, RandomClips(model.cfg, 12), batch_size=128, buffer_tokens=512)
    _, run = train_sae(src, architecture="topk", d_sae=16, k=4, epochs=1)
    bars = {bar for bar, total, _ in seen if total == run["samples"]}
    assert len(bars) == 1 and run["steps"] > 1
    positions = [n for bar, _, n in seen if bar in bars]
    assert positions == [128 * (i + 1) for i in range(run["steps"])]  # one update per step, each its batch
