"""Rendered training data for the organism, split into train / validation / test by seed."""

from __future__ import annotations

import numpy as np
import torch

from hooked_vivit import synthetic
from hooked_vivit.organism import CLASSES
from hooked_vivit.video import normalize

# Disjoint seed ranges: a clip's seed fixes every nuisance, so held-out seeds are held-out scenes.
SPLIT_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000, "probe": 3_000_000}


def clip_seed(split: str, index: int) -> int:
    return SPLIT_SEEDS[split] + index


def render_split(split: str, per_class: int, num_frames: int, size: int, classes=CLASSES, progress: bool = False, offset: int = 0):
    """uint8 clips [N, T, H, W, 3], class labels [N] and outcome names, outcomes balanced per class.
    ``offset`` shifts the clip indices (fresh training data per epoch)."""
    from tqdm.auto import tqdm

    clips, labels, outcomes = [], [], []
    jobs = [(c, i) for i in range(per_class) for c in range(len(classes))]
    for c, i in tqdm(jobs, desc=f"render {split}", disable=not progress):
        action = classes[c]
        names = synthetic.OUTCOMES.get(action, ("none",))
        clip = synthetic.render_clip(action, clip_seed(split, offset + i), outcome=names[i % len(names)], num_frames=num_frames, size=size)
        clips.append(clip.frames)
        labels.append(c)
        outcomes.append(clip.meta["outcome"])
    return np.stack(clips), np.array(labels), outcomes


def to_pixels(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, T, H, W, 3] -> pixel values [N, T, 3, H, W], ViViT-B's normalisation (no resize)."""
    return normalize(torch.as_tensor(clips))
