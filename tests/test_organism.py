"""The shipped model organism: loads offline, calls both outcomes by the action's name, matches its
transformers twin, and its training script runs (smoke configuration)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import VivitForVideoClassification, VivitImageProcessor

from hooked_vivit import HookedViViT, organism, synthetic
from hooked_vivit.organism.train import TrainConfig, train
from hooked_vivit.video import preprocess

FRESH_SEED = 9_000_000  # never used by any training, validation, test or probe split


@pytest.fixture(scope="module")
def model():
    return organism.load()


def test_checkpoint_is_complete_and_small(model):
    path = organism.checkpoint_path()
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "metrics.json"} <= {p.name for p in path.iterdir()}
    assert (path / "model.safetensors").stat().st_size <= 10e6
    assert model.cfg.id2label[0] == "bowling" and model.cfg.n_classes == len(organism.CLASSES)


def test_accuracy_on_fresh_held_out_clips(model):
    """Recomputed, not read from metrics.json: 8 fresh clips per class (outcomes alternating), scenes
    no split ever saw. MODEL_CARD.md reports 94.7 % on the test split; at least 90 % here."""
    per_class, correct, total = 8, 0, 0
    for c, action in enumerate(organism.CLASSES):
        outcomes = synthetic.OUTCOMES.get(action, ("none",))
        clips = [
            synthetic.render_clip(
                action,
                FRESH_SEED + 100 + i,
                outcome=outcomes[i % len(outcomes)],
                num_frames=model.cfg.num_frames,
                size=model.cfg.image_size[0],
            ).frames
            for i in range(per_class)
        ]
        x = torch.cat([preprocess(f, config=model.cfg) for f in clips])
        with torch.inference_mode():
            predicted = model(x).argmax(-1)
        assert model.cfg.id2label[c] == action
        correct += int((predicted == c).sum())
        total += per_class
    assert correct / total >= 0.9, f"{correct}/{total} fresh clips classified correctly"


@pytest.mark.parametrize("domain", ["bowling", "golf", "basketball"])
def test_fresh_pairs_are_both_called_by_the_action(model, domain):
    cfg = model.cfg
    target = cfg.label2id[synthetic.DOMAINS[domain]]
    correct = 0
    n = 6
    for i in range(n):
        pos, neg, _ = synthetic.render_pair(domain, FRESH_SEED + i, num_frames=cfg.num_frames, size=cfg.image_size[0])
        x = torch.cat([preprocess(pos, config=cfg), preprocess(neg, config=cfg)])
        with torch.inference_mode():
            correct += int((model(x).argmax(-1) == target).sum())
    assert correct >= 2 * n - 1, (
        f"{correct}/{2 * n} clips of fresh {domain} pairs classified as {synthetic.DOMAINS[domain]!r}"
    )


def test_hf_twin_gives_the_same_logits(model):
    hf = VivitForVideoClassification.from_pretrained(organism.checkpoint_path()).eval()
    clip = synthetic.render_clip(
        "skipping rope", FRESH_SEED, num_frames=model.cfg.num_frames, size=model.cfg.image_size[0]
    )
    x = preprocess(clip.frames, config=model.cfg)
    with torch.inference_mode():
        ref, out = hf(x).logits, model(x)
    assert float((out - ref).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_preprocessing_settings_come_from_the_checkpoint(model):
    """A 200 px clip preprocessed for the organism equals transformers' VivitImageProcessor at the
    checkpoint's 96 px with ViViT-B's normalisation (what MODEL_CARD.md says it was trained with)."""
    clip = synthetic.render_clip("bowling", FRESH_SEED, num_frames=model.cfg.num_frames, size=200)
    x = preprocess(clip.frames, config=model.cfg)
    size = model.cfg.image_size[0]
    assert tuple(model.cfg.image_size) == (96, 96) and x.shape == (1, model.cfg.num_frames, 3, 96, 96)
    ref = VivitImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})(
        list(clip.frames), return_tensors="pt"
    ).pixel_values
    diff = (x - ref).abs()
    step = 2 / 127.5  # one uint8 step after the processor's rescale and normalisation
    assert float(diff.max()) <= step and float(diff.mean()) <= 0.25 * step


def test_training_script_smoke(tmp_path):
    metrics = train(TrainConfig.smoke(), tmp_path / "smoke", progress=False)
    assert set(metrics["test_accuracy_per_class"]) == set(organism.CLASSES)
    again = HookedViViT.from_pretrained(tmp_path / "smoke")
    assert again.cfg.num_frames == TrainConfig.smoke().num_frames
    assert json.loads((tmp_path / "smoke" / "metrics.json").read_text())["train_config"]["epochs"] == 1


def test_an_evaluated_checkpoint_is_all_the_librarys_own_and_may_be_overwritten(tmp_path):
    """Every file evaluate adds (probes, card, seed ranges) joins the manifest with its hash, so a later
    training run into the same --out replaces the whole output (issue 32: seed_ranges.json was not recorded)."""
    from hooked_vivit.organism import evaluate
    from hooked_vivit.output_dir import MANIFEST

    out = tmp_path / "smoke"
    train(TrainConfig.smoke(), out, progress=False)
    assert evaluate.main(["--checkpoint", str(out), "--pairs", "5", "--held-out-per-class", "0"]) == 0
    listed = set(json.loads((out / MANIFEST).read_text())["files"])
    assert (
        {p.name for p in out.iterdir()} - {MANIFEST} == listed >= {"seed_ranges.json", "probes.json", "MODEL_CARD.md"}
    )
    train(TrainConfig.smoke(), out, progress=False)  # save_pretrained(overwrite=True) inside
    assert not (out / "seed_ranges.json").exists()
