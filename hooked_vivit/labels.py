"""Class names: Kinetics-400 shipped with the package (index 31 = "bowling") and top-k helpers."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import torch


@lru_cache(maxsize=1)
def kinetics400_labels() -> tuple[str, ...]:
    text = resources.files("hooked_vivit").joinpath("data/kinetics400_labels.txt").read_text()
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(labels) == 400, f"kinetics400_labels.txt has {len(labels)} names, expected 400"
    return labels


def default_id2label(n_classes: int) -> dict[int, str]:
    """Kinetics-400 names for a 400-class head, LABEL_k otherwise."""
    if n_classes == 400:
        return dict(enumerate(kinetics400_labels()))
    return {k: f"LABEL_{k}" for k in range(n_classes)}


class TopK(NamedTuple):
    index: int
    label: str
    logit: float
    prob: float


def top_k(logits: torch.Tensor, id2label: Mapping[int, str], k: int = 5) -> list[list[TopK]]:
    """Top-k classes per batch row, with names. ``logits``: [n_classes] or [batch, n_classes]."""
    logits = logits.detach().float()
    if logits.ndim == 1:
        logits = logits[None]
    probs = logits.softmax(-1)
    vals, idx = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return [
        [
            TopK(int(i), id2label.get(int(i), f"LABEL_{int(i)}"), float(v), float(probs[b, i]))
            for v, i in zip(vals[b], idx[b])
        ]
        for b in range(logits.shape[0])
    ]


def format_top_k(logits: torch.Tensor, id2label: Mapping[int, str], k: int = 5) -> str:
    """A readable table of the top-k classes of each batch row."""
    lines = []
    for b, rows in enumerate(top_k(logits, id2label, k)):
        if len(lines):
            lines.append("")
        lines.append(f"clip {b}:  {'class':>5}  {'name':<32} {'logit':>9} {'prob':>7}")
        for r in rows:
            lines.append(f"         {r.index:>5}  {r.label:<32} {r.logit:>9.4f} {r.prob:>7.2%}")
    return "\n".join(lines)
