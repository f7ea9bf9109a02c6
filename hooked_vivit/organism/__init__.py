"""The model organism: a small ViViT trained on the rendered action clips of hooked_vivit.synthetic.

It ships inside the package as an HF-format checkpoint, so every analysis runs offline on a model
that means something. Within-class outcomes (strike / gutter, in / miss, make / miss) were never
labels: like ViViT-B's "bowling", the organism must call a strike and a gutter ball the same thing.

    from hooked_vivit import HookedViViT, organism
    model = HookedViViT.from_pretrained(organism.checkpoint_path())
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CLASSES = ("bowling", "golf putting", "juggling balls", "shooting basketball", "swinging pendulum", "skipping rope")


def checkpoint_path() -> Path:
    """The shipped checkpoint directory (config.json, model.safetensors, MODEL_CARD.md)."""
    path = Path(str(resources.files("hooked_vivit.organism").joinpath("checkpoint")))
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"the organism checkpoint is missing from {path}; train it with `python -m hooked_vivit.organism.train`"
        )
    return path


def load(**kwargs):
    """HookedViViT.from_pretrained(checkpoint_path(), **kwargs)."""
    from hooked_vivit.model import HookedViViT

    return HookedViViT.from_pretrained(checkpoint_path(), **kwargs)
