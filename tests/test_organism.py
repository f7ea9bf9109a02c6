"""The shipped model organism: loads offline, calls both outcomes by the action's name, matches its
transformers twin, and its training script runs (smoke configuration)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import VivitForVideoClassification

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
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9  # the goal is 0.95; the shipped model reaches 0.947 (MODEL_CARD.md)


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
    assert correct >= 2 * n - 1, f"{correct}/{2 * n} clips of fresh {domain} pairs classified as {synthetic.DOMAINS[domain]!r}"


def test_hf_twin_gives_the_same_logits(model):
    hf = VivitForVideoClassification.from_pretrained(organism.checkpoint_path()).eval()
    clip = synthetic.render_clip("skipping rope", FRESH_SEED, num_frames=model.cfg.num_frames, size=model.cfg.image_size[0])
    x = preprocess(clip.frames, config=model.cfg)
    with torch.inference_mode():
        ref, out = hf(x).logits, model(x)
    assert float((out - ref).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_preprocessing_settings_come_from_the_checkpoint(model):
    clip = synthetic.render_clip("bowling", FRESH_SEED, num_frames=model.cfg.num_frames, size=200)
    x = preprocess(clip.frames, config=model.cfg)
    assert x.shape == (1, model.cfg.num_frames, 3, *model.cfg.image_size)


def test_training_script_smoke(tmp_path):
    metrics = train(TrainConfig.smoke(), tmp_path / "smoke", progress=False)
    assert set(metrics["test_accuracy_per_class"]) == set(organism.CLASSES)
    again = HookedViViT.from_pretrained(tmp_path / "smoke")
    assert again.cfg.num_frames == TrainConfig.smoke().num_frames
    assert json.loads((tmp_path / "smoke" / "metrics.json").read_text())["train_config"]["epochs"] == 1
