"""Rendered training data for the organism, split into train / validation / test by seed."""

from __future__ import annotations

import numpy as np
import torch

from hooked_vivit import synthetic
from hooked_vivit.organism import CLASSES
from hooked_vivit.video import normalize

# Disjoint seed ranges: a clip's seed fixes every nuisance, so held-out seeds are held-out scenes.
SPLIT_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000, "probe": 3_000_000}
HELD_OUT_FILE = "held_out.json"  # evaluate.py's larger held-out test (test seeds past HELD_OUT_OFFSET)
HELD_OUT_OFFSET = 1_000  # its first clip index in the test split: past the card's test set and the tests' fresh clips
# Reserved for analysis (analyze, study, their probes): no shipped organism was trained, validated,
# tested or probed on any seed in [start, stop). render_pair(domain, seed) renders the same scene as
# render_clip(action, seed), so a training seed would analyse a training clip.
ANALYSIS_SEEDS = {"pair": 4_000_000, "probe": 5_000_000, "study": 6_000_000}
ANALYSIS_RANGE = (4_000_000, 7_000_000)
SEED_RANGES_FILE = "seed_ranges.json"


def used_seed_ranges(metrics: dict, probes: dict | None = None, held_out: dict | None = None) -> list[dict]:
    """Every seed range a checkpoint was trained, validated, tested or probed on, derived from its
    metrics.json (each fine-tuning stage's config, see train.py), probes.json and held_out.json
    (evaluate.py): [{"use", "first", "last"}] with inclusive ends."""
    from hooked_vivit import synthetic

    stages, m = [], metrics
    while m:
        stages.insert(0, m)
        m = m.get("previous_stage")
    out = []
    for i, stage in enumerate(stages):
        tc = stage["train_config"]
        n = tc["train_per_class"]
        if tc.get("fresh_data"):
            first = tc["data_offset"] if tc.get("data_offset") is not None else (11 if tc.get("init_from") else 0)
            blocks = [(epoch + first) * n for epoch in range(tc["epochs"])]
        else:
            blocks = [0]
        for b in blocks:
            out.append(
                {"use": f"train (stage {i + 1})", "first": clip_seed("train", b), "last": clip_seed("train", b + n - 1)}
            )
        out.append(
            {
                "use": f"val (stage {i + 1})",
                "first": clip_seed("val", 0),
                "last": clip_seed("val", tc["val_per_class"] - 1),
            }
        )
        out.append(
            {
                "use": f"test (stage {i + 1})",
                "first": clip_seed("test", 0),
                "last": clip_seed("test", tc["test_per_class"] - 1),
            }
        )
    for domain, res in (probes or {}).items():
        seed0 = SPLIT_SEEDS["probe"] + 10_000 * list(synthetic.DOMAINS).index(domain)
        out.append({"use": f"probe ({domain})", "first": seed0, "last": seed0 + res["pairs"] - 1})
    if held_out:
        out.append(
            {"use": "held-out test (evaluate.py)", "first": held_out["first_seed"], "last": held_out["last_seed"]}
        )
    return out


def recorded_seed_ranges(checkpoint=None) -> dict:
    """The checkpoint's seed_ranges.json: {"used": [...], "analysis": {...}} (see used_seed_ranges)."""
    import json
    from pathlib import Path

    from hooked_vivit.organism import checkpoint_path

    return json.loads((Path(checkpoint or checkpoint_path()) / SEED_RANGES_FILE).read_text())


def write_seed_ranges(checkpoint) -> dict:
    """Record used_seed_ranges of a checkpoint (from its metrics.json, probes.json and held_out.json) and the
    analysis range."""
    import json
    from pathlib import Path

    path = Path(checkpoint)
    metrics = json.loads((path / "metrics.json").read_text())
    probes = json.loads((path / "probes.json").read_text()) if (path / "probes.json").exists() else None
    held_out = json.loads((path / HELD_OUT_FILE).read_text()) if (path / HELD_OUT_FILE).exists() else None
    data = {
        "used": used_seed_ranges(metrics, probes, held_out),
        "analysis": {"first": ANALYSIS_RANGE[0], "last": ANALYSIS_RANGE[1] - 1, **ANALYSIS_SEEDS},
        "note": "inclusive seed ranges; a clip's seed fixes its scene in every action",
    }
    (path / SEED_RANGES_FILE).write_text(json.dumps(data, indent=1) + "\n")
    return data


def seed_use(seed: int, ranges: list[dict]) -> str | None:
    """What a seed was used for (the first recorded range holding it), or None if unused."""
    return next((r["use"] for r in ranges if r["first"] <= seed <= r["last"]), None)


def clip_seed(split: str, index: int) -> int:
    return SPLIT_SEEDS[split] + index


def render_split(
    split: str, per_class: int, num_frames: int, size: int, classes=CLASSES, progress: bool = False, offset: int = 0
):
    """uint8 clips [N, T, H, W, 3], class labels [N] and outcome names, outcomes balanced per class.
    ``classes``: action names or ``organism.task_classes(task)``.
    ``offset`` shifts the clip indices (fresh training data per epoch)."""
    from tqdm.auto import tqdm

    clips, labels, outcomes = [], [], []
    # A class is an action name (its outcomes alternate) or a task class (label, action, outcome or None),
    # see organism.task_classes. Both outcome classes of an action share seeds: index i is a minimal pair.
    classes = [(c, c, None) if isinstance(c, str) else tuple(c) for c in classes]
    jobs = [(c, i) for i in range(per_class) for c in range(len(classes))]
    for c, i in tqdm(jobs, desc=f"render {split}", disable=not progress):
        _, action, outcome = classes[c]
        names = (outcome,) if outcome else synthetic.OUTCOMES.get(action, ("none",))
        clip = synthetic.render_clip(
            action, clip_seed(split, offset + i), outcome=names[i % len(names)], num_frames=num_frames, size=size
        )
        clips.append(clip.frames)
        labels.append(c)
        outcomes.append(clip.meta["outcome"])
    return np.stack(clips), np.array(labels), outcomes


def to_pixels(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, T, H, W, 3] -> pixel values [N, T, 3, H, W], ViViT-B's normalisation (no resize)."""
    return normalize(torch.as_tensor(clips))
