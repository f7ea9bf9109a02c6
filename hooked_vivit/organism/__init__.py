"""The model organisms: small ViViTs trained on the rendered clips of hooked_vivit.synthetic.

They ship inside the package as HF-format checkpoints, so every analysis runs offline on models
that mean something:

- ``"actions"`` (the default, ``organism.load()``): 6 action classes. Within-class outcomes (strike /
  gutter, in / miss, make / miss) were never labels: like ViViT-B's "bowling", it must call a strike
  and a gutter ball the same thing.
- ``"outcomes"`` (``organism.load("outcomes")``): the ground-truth organism, 9 classes where the
  outcome IS the label (bowling strike / gutter, golf in / miss, basketball make / miss, and the three
  actions without an outcome), so a method that looks for the outcome has something known to find.

    from hooked_vivit import HookedViViT, organism
    model = HookedViViT.from_pretrained(organism.checkpoint_path())           # the action organism
    gt = organism.load("outcomes")                                             # the ground-truth organism
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hooked_vivit.synthetic import ACTIONS, DOMAINS, OUTCOMES

# The action organism's classes are the renderer's actions, in the renderer's order.
CLASSES = ACTIONS

# Each organism: its checkpoint folder inside the package and its training task (train.py --task).
ORGANISMS = {"actions": "checkpoint", "outcomes": "checkpoints/outcomes"}
DEFAULT = "actions"


def task_classes(task: str) -> tuple[tuple[str, str, str | None], ...]:
    """The classes a task trains on: (label, rendered action, outcome or None). An outcome of None
    means the class holds every outcome of its action, balanced (the action organism)."""
    if task == "actions":
        return tuple((a, a, None) for a in ACTIONS)
    if task == "outcomes":
        with_outcome = tuple(
            (f"{domain} {o}", action, o) for domain, action in DOMAINS.items() for o in OUTCOMES[action]
        )
        return with_outcome + tuple((a, a, None) for a in ACTIONS if a not in OUTCOMES)
    raise ValueError(f"unknown task {task!r}; known: ['actions', 'outcomes']")


def resolve(name: str | None = None) -> str | None:
    """The organism a name means ("actions", "outcomes" or None for the default), or None when the name
    is not an organism's (a checkpoint directory or hub id). The one place names resolve."""
    if name is None:
        return DEFAULT
    return name if name in ORGANISMS else None


def model_source(name_or_path: str | Path | None):
    """What a ``--model`` argument loads: an organism's checkpoint directory when it names one (see
    ``resolve``; None or "" = the default organism), else the argument itself (a directory or hub id)."""
    key = resolve(str(name_or_path) if name_or_path else None)
    return checkpoint_path(key) if key is not None else name_or_path


def checkpoint_path(name: str | None = None) -> Path:
    """The shipped checkpoint directory (config.json, model.safetensors, MODEL_CARD.md) of organism ``name``
    (default: the action organism)."""
    key = resolve(name)
    if key is None:
        raise ValueError(f"unknown organism {name!r}; known: {sorted(ORGANISMS)} (default {DEFAULT!r})")
    path = Path(str(resources.files("hooked_vivit.organism").joinpath(ORGANISMS[key])))
    if not (path / "model.safetensors").exists():
        task = "" if key == DEFAULT else f" --task {key}"
        raise FileNotFoundError(
            f"the {key!r} organism checkpoint is missing from {path}; train it with `python -m hooked_vivit.organism.train{task}`"
        )
    return path


def load(name: str | None = None, **kwargs):
    """HookedViViT.from_pretrained(checkpoint_path(name), **kwargs)."""
    from hooked_vivit.model import HookedViViT

    return HookedViViT.from_pretrained(checkpoint_path(name), **kwargs)
