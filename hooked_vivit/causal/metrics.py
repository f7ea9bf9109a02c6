"""Patching metrics (after Zhang & Nanda 2024, "Towards best practices of activation patching").

The scoring protocol (``metric_rows``), shared by the patching engine and attribution patching: a metric
returns one value per batch row (``Tensor[batch]``), so a batched sweep scores each patched variant
separately; ``logits`` are [batch, n_classes].

- A metric that reads activations declares them in ``.hooks`` (a tuple of hook names) and is called
  ``metric(logits, activations)``, where ``activations[name]`` is that hook's value ([batch, ...]);
  the engine collects exactly those hooks. Subclass ``Metric`` or wrap a function with
  ``ActivationMetric(fn, hooks=(...))``.
- Any other callable is a logit metric, called ``metric(logits)`` (TransformerLens's convention), so
  logit metrics work unchanged with TL's ``generic_activation_patch`` (wrap a ``Metric`` with
  ``.mean_over_batch``).

Signal recovery on an activation a (the reference paper's measure):

    recovery      = <a_patched - a_corrupt, a_clean - a_corrupt> / ||a_clean - a_corrupt||^2   (kind "projection")
    norm_ratio    = ||a_patched - a_corrupt|| / ||a_clean - a_corrupt||                       (kind "norm_ratio")
    norm_recovery = 1 - ||a_patched - a_clean|| / ||a_corrupt - a_clean||                    (kind "norm")

All three are 0 for the unpatched corrupted run and 1 for the clean run. ``recovery`` is the projection
of the patch's effect on the clean-minus-corrupt direction and can exceed 1 (overshoot);
``norm_ratio`` is how far the patch moved the activation, in any direction, relative to the clean
run's distance: it is unbounded above, and a value above 1 does NOT show the patch is sufficient
(a patch that moves the activation away from the clean run scores above 1 too);
``norm_recovery`` is at most 1 and falls below 0 when the patch moves away from the clean run.
Read at CLS (positions=0) or over the flattened all-token activation (positions=None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float

Logits = Float[torch.Tensor, "batch n_classes"]
Activations = Mapping[str, torch.Tensor]


class Metric:
    """Base: ``hooks`` lists the activations the metric reads (none for logit metrics)."""

    hooks: tuple[str, ...] = ()

    def __call__(self, logits: Logits, activations: Activations | None = None) -> Float[torch.Tensor, " batch"]:
        raise NotImplementedError

    def mean_over_batch(self, logits: Logits) -> torch.Tensor:
        """Scalar version, for TransformerLens's patching functions (reduce="scalar")."""
        return self(logits).mean()


@dataclass
class ActivationMetric(Metric):
    """A plain function ``fn(logits, activations) -> Tensor[batch]`` as a metric that reads ``hooks``."""

    fn: Callable[[Logits, Activations], torch.Tensor]
    hooks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.hooks, str):
            self.hooks = (self.hooks,)
        self.hooks = tuple(self.hooks)

    def __call__(self, logits, activations=None):
        return self.fn(logits, activations)


def metric_hooks(metric: Callable) -> tuple[str, ...]:
    """The hooks a metric reads (its ``.hooks``; none for a logit metric)."""
    return tuple(getattr(metric, "hooks", ()))


def metric_rows(metric: Callable, logits: torch.Tensor, activations: Activations) -> torch.Tensor:
    """Score a batch under the protocol above: ``metric(logits, activations)`` for a metric with
    ``.hooks`` (a ``Metric``), ``metric(logits)`` for any other callable; [batch] values."""
    out = metric(logits, activations) if hasattr(metric, "hooks") else metric(logits)
    return torch.as_tensor(out)


def _index(c, logits: torch.Tensor) -> torch.Tensor:
    idx = torch.as_tensor(c, device=logits.device)
    return idx.expand(logits.shape[0]) if idx.ndim == 0 else idx


@dataclass
class ClassLogit(Metric):
    """The logit of class ``c``: an index or a class name, or one per batch row. Names need the
    model's labels: ``ClassLogit("bowling", labels=model)`` (a model, its config, or an id2label dict)."""

    c: int | str | Sequence[int | str]
    labels: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = (
            [self.c]
            if isinstance(self.c, str)
            else [c for c in self.c if isinstance(c, str)]
            if isinstance(self.c, (list, tuple))
            else []
        )
        if not names:
            return
        if self.labels is None:
            raise ValueError(
                f"ClassLogit({self.c!r}): a class name needs the model's labels, e.g. ClassLogit({self.c!r}, labels=model) "
                "(or pass the class index)"
            )
        id2label = getattr(getattr(self.labels, "cfg", self.labels), "id2label", self.labels)
        label2id = {str(v): int(k) for k, v in dict(id2label).items()}

        def index(c):
            if not isinstance(c, str):
                return c
            if c not in label2id:
                import difflib

                close = difflib.get_close_matches(c, list(label2id), n=3)
                raise ValueError(
                    f"unknown class name {c!r}"
                    + (f"; nearest: {close}" if close else f"; the labels are {sorted(label2id)[:10]}...")
                )
            return label2id[c]

        self.c = index(self.c) if isinstance(self.c, str) else [index(c) for c in self.c]

    def __call__(self, logits, activations=None):
        return logits.gather(-1, _index(self.c, logits)[:, None])[:, 0]


@dataclass
class LogitDiff(Metric):
    """logit[c] - logit[other]."""

    c: int | Sequence[int]
    other: int | Sequence[int]

    def __call__(self, logits, activations=None):
        return ClassLogit(self.c)(logits) - ClassLogit(self.other)(logits)


# LogitDiffRecovery is undefined when the pair's logit-difference gap is at most this share of the
# largest |logit| of the two runs: about 80 float32 epsilons. The planted null model's pairs, whose
# logits are equal but for rounding, reach 7; a random tiny ViViT's smallest real gap on rendered
# pairs is 2e-4 of its largest logit.
MIN_RELATIVE_GAP = 1e-5


@dataclass
class LogitDiffRecovery(Metric):
    """Normalised logit-difference recovery (Zhang & Nanda 2024; Heimersheim & Nanda 2024):

        (m(patched) - m(corrupt)) / (m(clean) - m(corrupt)),   m = logit[c] - logit[other]

    0 for the unpatched corrupted run, 1 for the clean run; can exceed 1 or fall below 0. ``clean_logits``
    and ``corrupt_logits`` are the two unpatched runs' logits ([1, n_classes] or [n_classes]); reads only
    the logits, so a sweep that already runs the patches scores it from their logits at no extra forward."""

    c: int
    other: int
    clean_logits: torch.Tensor
    corrupt_logits: torch.Tensor

    def __post_init__(self) -> None:
        if int(self.c) == int(self.other):
            raise ValueError(f"LogitDiffRecovery: the two outcome classes must differ, got {self.c} twice")
        diff = LogitDiff(self.c, self.other)
        row = lambda l: l.detach().reshape(1, -1).double()  # noqa: E731
        self._clean = float(diff(row(self.clean_logits))[0])
        self._corrupt = float(diff(row(self.corrupt_logits))[0])
        self._scale = self._clean - self._corrupt
        # A pair whose outcome logit difference moves by no more than float rounding does not change the
        # outcome: dividing by that gap would turn rounding noise into "recovery" (the planted null model).
        floor = MIN_RELATIVE_GAP * max(
            float(row(self.clean_logits).abs().max()), float(row(self.corrupt_logits).abs().max())
        )
        if abs(self._scale) <= floor:
            raise ValueError(
                f"the clean and corrupted runs have the same logit difference (class {self.c} - class {self.other}) "
                f"to within {floor:.2g} (|gap| = {abs(self._scale):.2g}, at most {MIN_RELATIVE_GAP:g} of the largest "
                "|logit|, a gap float rounding can produce): nothing to recover"
            )

    @property
    def clean_value(self) -> float:
        """m(clean): the positive-minus-negative logit difference of the clean run."""
        return self._clean

    @property
    def corrupt_value(self) -> float:
        return self._corrupt

    def __call__(self, logits, activations=None):
        m = LogitDiff(self.c, self.other)(logits.double())
        return ((m - self._corrupt) / self._scale).float()


@dataclass
class LogProb(Metric):
    """log softmax(logits)[c]."""

    c: int | Sequence[int]

    def __call__(self, logits, activations=None):
        return ClassLogit(self.c)(logits.float().log_softmax(-1))


@dataclass
class KLToClean(Metric):
    """KL(clean || patched) over classes; 0 when the patched run predicts as the clean run."""

    clean_logits: Logits

    def __call__(self, logits, activations=None):
        clean = self.clean_logits.to(logits.device).float().log_softmax(-1).expand(logits.shape[0], -1)
        return F.kl_div(logits.float().log_softmax(-1), clean, log_target=True, reduction="none").sum(-1)


def _select(act: torch.Tensor, positions: Sequence[int] | int | str | None) -> torch.Tensor:
    """[batch, pos, ...] -> the chosen positions, flattened per row: [batch, features];
    ``"pooled"``: the mean over every token (what a mean-pooling model's final norm reads)."""
    if isinstance(positions, str):
        if positions != "pooled":
            raise ValueError(
                f"positions must be token indices, None (all tokens) or 'pooled' (the token mean), got {positions!r}"
            )
        return act.mean(1).flatten(1).float()
    if positions is not None:
        act = act[:, [positions] if isinstance(positions, int) else list(positions)]
    return act.flatten(1).float()


RECOVERY_KINDS = ("projection", "norm_ratio", "norm")


@dataclass
class SignalRecovery(Metric):
    """Share of the clean-minus-corrupt difference of an activation that a patch restores.

    ``hook`` names the activation (e.g. ``blocks.11.hook_resid_post``); ``positions`` the tokens
    it is read at (0 = CLS; None = all tokens; "pooled" = their mean, a mean-pooling model's readout). ``clean`` and ``corrupt`` are that activation on
    the two unpatched runs ([1, pos, ...] or [pos, ...]). ``kind``: "projection", "norm_ratio" or
    "norm" (norm_recovery); see the module docstring for the formulas.
    """

    hook: str
    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: Sequence[int] | int | str | None = 0
    kind: str = "projection"
    hooks: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        if self.kind not in RECOVERY_KINDS:
            raise ValueError(f"kind must be one of {RECOVERY_KINDS}, got {self.kind!r}")
        if self.clean.shape != self.corrupt.shape:
            raise ValueError(
                f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} activations differ in shape"
            )
        self.hooks = (self.hook,)
        # [1, pos, ...] from a batch-1 cache, or [pos, ...] without the batch dim.
        self._clean = _select(self.clean if self.clean.shape[0] == 1 else self.clean[None], self.positions)
        self._corrupt = _select(self.corrupt if self.corrupt.shape[0] == 1 else self.corrupt[None], self.positions)
        self._delta = self._clean - self._corrupt
        self._scale = self._delta.pow(2).sum()
        if self._scale == 0:
            raise ValueError(f"clean and corrupt {self.hook} are identical at these positions: nothing to recover")

    def __call__(self, logits, activations=None):
        if activations is None or self.hook not in activations:
            raise ValueError(
                f"SignalRecovery needs the activation {self.hook!r}; run it through hooked_vivit.causal.patching"
            )
        a = _select(activations[self.hook], self.positions).to(self._delta.device)
        if self.kind == "projection":
            return ((a - self._corrupt) * self._delta).sum(-1) / self._scale
        if self.kind == "norm_ratio":
            return (a - self._corrupt).norm(dim=-1) / self._delta.norm()
        return 1 - (a - self._clean).norm(dim=-1) / self._delta.norm()


def recovery(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> float:
    """The projection recovery of one activation, for quick use on cached tensors."""
    delta = (clean - corrupt).flatten().double()
    return float(((patched - corrupt).flatten().double() @ delta) / (delta @ delta))


def norm_recovery(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> float:
    return float(1 - (patched - clean).double().norm() / (corrupt - clean).double().norm())


def norm_ratio(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> float:
    """||patched - corrupt|| / ||clean - corrupt||: unbounded; above 1 is not sufficiency."""
    return float((patched - corrupt).double().norm() / (clean - corrupt).double().norm())
