"""Planted-mechanism models: tiny HookedViViTs whose weights are set by hand, so that the mechanism
is known exactly and every method of the library can be checked against it (positive controls), and
a null model whose decision does not depend on what its pairs change (a negative control).

Every model (``build(name, level=...)``) has 8 frames of 32x32 px, tubelet 2x8x8 (a 4x4x4 token grid,
65 tokens with CLS), 3 layers of 4 heads, d_model 40, ReLU MLPs:

- ``single_head``: head (1, 2)'s CLS query attends to the 8 tokens of one box (frame slots 2-3, rows
  1-2, cols 2-3: a blob there appears from frame 4 on), its OV circuit carries the box's brightness to
  one residual direction at CLS, and the classifier reads that direction alone ("blob" vs "no blob").
- ``and_composition``: head (0, 1) gathers blob A (frame slots 0-1, rows 0-1, cols 1-2), head (1, 3)
  blob B (frame slots 2-3, rows 2-3, cols 0-1), each into its own direction at CLS; one neuron of
  layer 2's MLP fires only when both are there and writes the only direction the classifier reads
  ("a and b" vs "not both"): attention gathers, the MLP composes.
- ``temporal``: motion decides. A blob sits in box P (rows 1-2, cols 0-1) for frame slots 0-1 and in
  box Q (rows 1-2, cols 2-3) for slots 2-3 ("rightward"), or in Q first and P second ("leftward"). Both
  clips hold the same blob pixels summed over time (their time-pooled images are equal). Head (1, 2)
  attends to P-early and Q-late (its keys are position markers that carry the frame slot), so its
  value is +1 for rightward and -1 for leftward. Head (1, 0) attends to P and Q in every slot (where,
  not when): it sees both clips alike.
- ``spread``: evidence summed along a trajectory. Head (1, 2) attends uniformly to 8 scattered tokens
  (two per frame slot, no two adjacent in a box); a blob on every one of them is "trail", none is "no
  trail". No box of fewer than all 64 tokens holds the set: region methods must find a set
  (``truth.positions("trail")``, ``pixel_mask("trail")``), and zeroing one tubelet moves the decision
  by an eighth of its range.
- ``redundant``: heads (0, 1) and (1, 2) both gather box A into the same direction; layer 2's MLP
  reads it through a saturating pair of neurons, relu(u - 0.1) - relu(u - 0.4) with u = 0 (none), 1/2
  (one head carries the blob), 1 (both): one head alone gives the whole readout, so noising or
  ablating one head alone changes nothing, and denoising either alone restores all of it.
- ``null``: the pair changes the blob of box A, which the model sees (head (1, 2) gathers it exactly
  as in ``single_head``, and every distractor below responds to it), but the classifier reads the
  decoy box (gathered by head (0, 1)), which is fixed within a pair and varies from pair to pair
  (probability 1/2 per seed). No component carries the pair's difference to the decision: the two
  clips of a pair get the same logits (to float rounding) and the truth has no heads or MLPs. Its
  levels scale the distractors only (its heads stay sharp: a leaky head's output has a different norm
  in the two clips, which would reach the logits through the final LayerNorm).

Distractors (every model, every level but 0 in size): components off the decision path that read the
changed pixels, so the two clips of a minimal pair differ in more than the planted features:

- a mirror head: attends to the planted tokens (always sharply) and writes their brightness to
  ``mirror``, which nothing reads;
- a reacting MLP pair: two neurons at CLS, relu(+f) writing ``mirror_on`` and relu(-f) writing
  ``mirror_off``, f a feature that carries the blob to CLS;
- a cancelled head: the planted head's attention map (same sharpness), writing brightness times g
  to a direction the decision reads and to ``echo`` (direct attribution gives it g / H of the planted
  head's share); two neurons of the same layer's MLP read ``echo`` and
  write the exact negative (calibrated on a texture-free clip; its residue is ~1e-5 of the planted
  signal at CLS), so its output never reaches the decision - but direct attribution credits it, and
  patching the cancelling neurons alone moves the logits (denoised into the negative run they add the
  head's output twice; in and_composition only noising shows it: denoised, the AND neuron stays
  below its threshold). Patched alone, the cancelled head itself moves the logit difference by under
  1 %: its part along the planted direction then opposes the planted head's, the CLS norm changes, and
  the cancelling neurons read echo through a changed LayerNorm scale;
- a backup (self-repair; single_head, temporal, spread at the sharp levels 0-1): four neurons of
  layer 2's MLP compare the cancelled head's echo with the planted head's part of signal_a. They are
  silent on every clip and when the planted head is patched from the other clip, and write R = g / H
  of its signal when it is ablated (zero or mean): ablation underestimates the planted head (at the
  default level, zero-ablating L1H2 leaves 26 % of the logit difference instead of ~0);
- the nuisance of the earlier version: heads averaging a colour texture over every patch, a
  look-alike head with the planted head's attention reading texture, decoy-box heads, an MLP neuron
  of the texture summary. The texture and the decoy change from clip to clip (``seed``) but never
  within a minimal pair.

The confound (``build(name, confound=True)`` and ``pair(seed, confound=True)``; off by default, and
without it the shipped models and pairs are unchanged). A minimal pair changes pixels only inside the
planted region, so no other place differs as much and a matched null (``causal.statistics.
matched_boxes``: boxes of the region's size and share of the pair's pixel difference) has nothing to
match. With the confound the two clips also differ in a blob in a box clear of the planted and decoy
tokens (``CONFOUNDS``, ``confound_mask()``), on in the positive clip for even seeds and in the negative
one for odd (``confound_on_positive``). A distractor head of layer 2 (L2H0; redundant L2H1) attends to
its tokens sharply and writes their brightness (+-g) to a feature nothing reads; its tokens carry a
large negative coefficient on the planted position markers, so the blurred heads give them almost no
weight. The decision ignores it: the logit difference moves by under 1e-6 of itself at levels 0-2
(float32 rounding; in float64 1e-9 at levels 0-1, the rounding of the float32 pixels), 1e-4 at level 3
and 2e-3 at level 4 (what the blurred heads still leak onto it), and the label is the rule on every clip. The region of interest stays the planted pixels (``pixel_mask``).
Shares of the pair's pixel difference: planted 1/2, confound 1/2 (single_head, null, redundant: a
2x2-token box in box A's frames; and_composition: a 2x2-token square in all 8 frames, as many pixels
as A and B together; spread: two tokens per frame slot, like the trail); temporal 2/3 and 1/3 (the
bottom row: rows 1-2 hold the motion in every column, so every box of the region's size lies mostly
inside it and matched_boxes finds none for temporal, confound or not). The null's confound is another
box, not its decoy (which decides its label and is fixed within a pair).

Which components respond within a pair is pinned down by ``component_changes`` (the L2 norm of the
difference of each attn_out / mlp_out at CLS between the pair's clips). ``level`` (``LEVELS``) is a
difficulty ladder: the distractors' gain relative to the planted heads' and the planted heads' QK gain
(attention sharpness). At level k at least ``MIN_DISTRACTORS`` non-planted components change by at
least ``LEVELS[k].ratio`` times the largest planted component's change (tests/test_planted.py); the
ratio grows from 0.04 (level 0) to 1 (level 4: the planted component changes no more than two
distractors). ``DEFAULT_LEVEL`` (1) is what ``build(name)`` ships. At sharpness 1 a planted
head puts all but ~1e-15 of its CLS attention on its tokens; below 1 it leaks attention to every
other token (whose brightness, the background's -1 or the decoy's +1, shifts its value in both clips
alike), and the classifier's bias is set at the midpoint of the two classes' readouts on texture-free
clips, so the decision is still the rule's (``label_of``) on every clip.

Residual-stream layout. d_model = 40 holds 20 named features (``FEATURES``); feature i is the unit
direction (e_i - e_{20+i}) / sqrt(2). Every vector any weight writes is a combination of them, so every
token's residual stream has zero mean over d_model and LayerNorm (w = 1, b = 0) only divides by the
token's scale: a head reads feature f as coefficient_f / scale. Brightness is written as a pair
(lum_on = s, lum_off = 1 - s) and every head reading it writes +-g, so at sharpness 1 a token's norm is
the same with and without a blob and LayerNorm scales are equal across a pair's clips. Patch-token
queries attend to CLS (whose value is zero), so no head writes anything at patch tokens.

``GroundTruth`` (``build(name).truth``, ``truth.to_dict()``) says which heads, MLPs, tokens, directions
and classes carry what, for tests and for a validation table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from hooked_vivit.causal.ablation import PixelBox
from hooked_vivit.config import HookedViViTConfig
from hooked_vivit.model import HookedViViT
from hooked_vivit.positions import Region, resolve_positions

FEATURES = (
    "anchor",  # a large constant at every token: keeps LayerNorm scales nearly constant
    "is_cls",  # position marker of CLS (cls_token)
    "is_patch",  # marker of every patch token (tubelet bias)
    "lum_on",  # brightness s of a tubelet: 1 inside a blob, 0 on the background
    "lum_off",  # 1 - s (keeps the token's norm the same with and without a blob)
    "texture",  # mean (G - B) / 2 of a tubelet: a nuisance colour texture
    "region_a",  # position marker of the planted tokens (box A, the motion set, the trail)
    "region_b",  # position marker of box B (second planted region, the decoy box, or P and Q at every slot)
    "signal_a",  # written at CLS by the head that gathers blob A
    "signal_b",  # written at CLS by the head that gathers blob B
    "composed",  # written at CLS by the MLP neurons that compose (AND) or saturate (redundant)
    "texture_sum",  # texture averaged over all patches, written at CLS by distractor heads
    "decoy",  # brightness of the decoy box, written at CLS by a distractor head (null: the decision)
    "texture_mlp",  # written by a distractor MLP neuron (ReLU of texture_sum)
    "lookalike",  # texture of the planted box, written at CLS by the look-alike head
    "mirror",  # brightness of the planted tokens, written by the mirror head; nothing reads it
    "mirror_on",  # written by the reacting MLP neuron relu(+f)
    "mirror_off",  # written by the reacting MLP neuron relu(-f)
    "echo",  # the cancelled head's private direction, read by the neurons that cancel it
    "spare",  # temporal: a marker that keeps every token of P and Q at one norm
)
N_FEATURES = len(FEATURES)
D_MODEL = 2 * N_FEATURES
CONFIG = dict(
    d_model=D_MODEL,
    d_head=8,
    n_heads=4,
    n_layers=3,
    d_mlp=8,
    num_frames=8,
    image_size=32,
    tubelet_size=(2, 8, 8),
    n_classes=2,
    act_fn="relu",
)

# Magnitudes (residual-stream coefficients). Anchor >> everything else, so the nuisance moves a
# LayerNorm scale by < 0.1 %; QK gain 6 gives CLS -> box scores of about 30 against 0 elsewhere.
ANCHOR, MARKER, QK_GAIN, HEAD_GAIN, NUISANCE_GAIN, CLASS_GAIN = 6.0, 2.0, 6.0, 2.0, 0.2, 2.0
BLOB = 0.5  # luminance added by a blob (normalised pixel units)
TEXTURE = 0.4  # texture amplitude per tubelet
DECOY_P = 0.5  # probability that a clip shows the decoy blob (single_head, null)
MIN_DISTRACTORS = 2  # non-planted components the ladder's property counts
BACKUP_MARGIN = 0.05  # the backup neurons' kinks sit this far from d = 0 (no gradient at the silent state)
CONFOUND_MARKER = 6.0  # the confound box's position marker (its reader's key)
CONFOUND_SHIELD = 20.0  # minus this on the planted position markers at the confound's tokens


@dataclass(frozen=True)
class Level:
    """One rung of the difficulty ladder."""

    distractor: float  # distractor gain as a fraction of HEAD_GAIN
    sharpness: float  # the planted heads' (and the cancelled head's) QK gain as a fraction of QK_GAIN
    ratio: float  # guaranteed: >= MIN_DISTRACTORS non-planted components change by >= ratio x the planted one


LEVELS = (
    Level(distractor=0.05, sharpness=1.0, ratio=0.04),
    Level(distractor=0.3, sharpness=1.0, ratio=0.2),
    Level(distractor=0.5, sharpness=0.1, ratio=0.4),
    Level(distractor=0.8, sharpness=0.07, ratio=0.65),
    Level(distractor=1.2, sharpness=0.05, ratio=1.0),
)
DEFAULT_LEVEL = 1


@dataclass(frozen=True)
class Confound:
    """A model's confound (``build(name, confound=True)``): a blob in ``region`` (a box clear of the
    planted and decoy tokens) whose tokens carry the position marker ``marker``; head (``layer``,
    ``head``) attends to them sharply and writes their brightness (+-g) to ``writes``, a feature that
    model has no other use for and nothing reads."""

    region: Region
    marker: str
    writes: str
    layer: int
    head: int


_CORNER = Confound(Region((2, 3), (0, 1), (0, 1)), "spare", "composed", 2, 0)  # box A's frames, top-left
CONFOUNDS = {
    "single_head": _CORNER,
    "null": _CORNER,
    # both planted boxes' frames (as many pixels as A and B together, the same square in every frame)
    "and_composition": Confound(Region((0, 1, 2, 3), (2, 3), (2, 3)), "spare", "decoy", 2, 0),
    # the bottom row in every frame slot (16 tokens, a clip's blob); "spare" already marks half of P and Q
    "temporal": Confound(Region((0, 1, 2, 3), (3,), (0, 1, 2, 3)), "decoy", "composed", 2, 0),
    # two tokens per frame slot like the trail, none of them on it
    "spread": Confound(Region((0, 1, 2, 3), (1, 2), (2,)), "spare", "decoy", 2, 0),
    "redundant": Confound(Region((2, 3), (0, 1), (0, 1)), "spare", "decoy", 2, 1),
}


def direction(feature: str) -> torch.Tensor:
    """The unit residual direction of a named feature: (e_i - e_{N+i}) / sqrt(2)."""
    if feature not in FEATURES:
        raise KeyError(f"unknown feature {feature!r}; features: {FEATURES}")
    i, v = FEATURES.index(feature), torch.zeros(D_MODEL)
    v[i], v[i + N_FEATURES] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    return v


def _vec(**coefficients: float) -> torch.Tensor:
    return sum((c * direction(f) for f, c in coefficients.items()), torch.zeros(D_MODEL))


# =========================================================================================== ground truth
@dataclass(frozen=True)
class PlantedHead:
    """A head that carries ``variable`` to CLS: its CLS query attends to ``positions`` only (a box,
    ``region``, where there is one; None for a set that is not a box), its OV circuit maps their
    brightness to ``writes``."""

    layer: int
    head: int
    variable: str
    region: Region | None
    positions: tuple[int, ...]
    writes: str


@dataclass(frozen=True)
class Distractor:
    """An active component that must not be found: what it reads and where it writes."""

    component: str  # "L0H0", "L0 mlp", ...
    reads: str
    writes: str
    positions: tuple[int, ...] | None = None  # tokens its CLS query attends to (heads)
    responds: bool = False  # whether its CLS output differs between the clips of a minimal pair


@dataclass(frozen=True)
class GroundTruth:
    """What is planted. ``label_of(**variables)`` gives the class the model predicts; the
    ``positive`` class is predicted exactly when ``rule`` holds. ``variables`` are what a minimal pair
    changes; ``context`` variables are fixed within a pair (drawn from its seed) and the rule may read
    them (the null's decoy); ``decided_by`` are the variables the rule reads."""

    name: str
    summary: str
    variables: tuple[str, ...]
    heads: tuple[PlantedHead, ...]
    mlps: tuple[int, ...]  # layers whose MLP composes the heads' outputs
    reads: str  # the one direction the classifier reads
    positive: int
    negative: int
    rule: str  # "blob", "a and b", "rightward", "trail", "decoy"
    changed: dict[str, tuple[int, ...]]  # variable -> the patch tokens whose pixels it changes
    distractors: tuple[Distractor, ...] = ()
    decoy_region: Region | None = None
    context: tuple[str, ...] = ()
    decided_by: tuple[str, ...] | None = None
    level: int = DEFAULT_LEVEL
    confound_region: Region | None = None  # build(..., confound=True): the confound box (not a variable)

    def region(self, variable: str) -> Region | None:
        """The box of a variable's planted head (None where its tokens are not a box or no head carries it)."""
        return next((h.region for h in self.heads if h.variable == variable), None)

    def positions(self, variable: str) -> tuple[int, ...]:
        """The patch tokens whose pixels the variable changes (the set a region method must find)."""
        if variable not in self.changed:
            raise KeyError(f"{self.name} has variables {self.variables}, got {variable!r}")
        return self.changed[variable]

    def label_of(self, **on: bool) -> int:
        missing = set(self.variables) | set(self.context)
        missing -= set(on)
        if missing:
            raise ValueError(f"give every variable of {self.name}: missing {sorted(missing)}")
        decided = self.decided_by if self.decided_by is not None else self.variables
        return self.positive if all(on[v] for v in decided) else self.negative

    @property
    def head_labels(self) -> tuple[str, ...]:
        """The planted heads as ``patching.head_patches`` labels them (without the act): "L1H2"."""
        return tuple(f"L{h.layer}H{h.head}" for h in self.heads)

    @property
    def component_labels(self) -> tuple[str, ...]:
        """The planted components as ``patching.component_patches`` labels them: "L1 attn_out", ..."""
        labels = {f"L{h.layer} attn_out" for h in self.heads} | {f"L{l} mlp_out" for l in self.mlps}
        return tuple(sorted(labels))

    @property
    def carrying_layers(self) -> dict[str, int]:
        """Variable -> the layer after which CLS carries it (resid_post of that layer)."""
        return {h.variable: h.layer for h in self.heads}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# =========================================================================================== model + inputs
@dataclass
class PlantedModel:
    model: HookedViViT
    truth: GroundTruth
    # variable -> (token boxes with a blob when it is True, ... when it is False)
    blobs: dict[str, tuple[tuple[Region, ...], tuple[Region, ...]]] = field(default_factory=dict)
    confound: Region | None = None  # the confound box (build(..., confound=True)), else None

    @property
    def cfg(self) -> HookedViViTConfig:
        return self.model.cfg

    def render(self, seed: int = 0, *, texture: bool = True, confound: bool = False, **on: bool) -> torch.Tensor:
        """A clip [1, 8, 3, 32, 32] in normalised pixel units: a random colour texture (from
        ``seed``), the blobs of every variable (``blobs``: its boxes when True, others when False),
        (single_head, null) a decoy blob in the decoy box with probability 1/2 (also from ``seed``, so
        both clips of a pair share it), and with ``confound`` the confound blob (a model built with
        ``confound=True`` only). Variables not given are False."""
        unknown = set(on) - set(self.truth.variables)
        if unknown:
            raise ValueError(f"{self.truth.name} has variables {self.truth.variables}, got {sorted(unknown)}")
        boxes = [r for v in self.truth.variables for r in self.blobs[v][0 if on.get(v, False) else 1]]
        if self.decoy(seed):
            boxes.append(self.truth.decoy_region)
        if confound:
            boxes.append(self._confound_region())
        return render_clip(self.cfg, boxes, seed, texture=texture)

    def _confound_region(self) -> Region:
        if self.confound is None:
            raise ValueError(
                f"this {self.truth.name} was built without a confound (nothing would read it): "
                f"build({self.truth.name!r}, confound=True)"
            )
        return self.confound

    @staticmethod
    def confound_on_positive(seed: int) -> bool:
        """Which clip of ``pair(seed, confound=True)`` shows the confound blob: the positive one for even
        seeds, the negative one for odd seeds (over consecutive seeds it is independent of the variables)."""
        return seed % 2 == 0

    def confound_mask(self) -> np.ndarray:
        """bool [T, H, W]: the confound box's pixels (the same for every pair; where a pair with
        ``confound=True`` differs besides ``pixel_mask``)."""
        region = self._confound_region()
        return (render_clip(self.cfg, [region], texture=False) != render_clip(self.cfg, [], texture=False))[
            0, :, 0
        ].numpy()

    def confound_positions(self) -> tuple[int, ...]:
        """The patch tokens of the confound box."""
        return _tokens(self.cfg, [self._confound_region()])

    def decoy(self, seed: int) -> bool:
        """Whether the clips of ``seed`` show the decoy blob (a nuisance; the null's decision)."""
        return self.truth.decoy_region is not None and bool(np.random.default_rng([seed, 1]).random() < DECOY_P)

    def label(self, seed: int = 0, **on: bool) -> int:
        """The class ``render(seed, **on)`` must get: ``label_of`` with the seed's context filled in."""
        context = {"decoy": self.decoy(seed)} if "decoy" in self.truth.context else {}
        return self.truth.label_of(**{v: on.get(v, False) for v in self.truth.variables}, **context)

    def pair(
        self,
        seed: int = 0,
        positive: dict[str, bool] | None = None,
        negative: dict[str, bool] | None = None,
        *,
        confound: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A minimal pair on one background: by default every variable on vs every variable off. With
        ``confound`` the clips also differ in the confound blob (on in the positive clip for even seeds,
        in the negative one for odd: ``confound_on_positive``), which the decision ignores."""
        positive = positive or {v: True for v in self.truth.variables}
        negative = negative or {v: False for v in self.truth.variables}
        c = self.confound_on_positive(seed)
        return self.render(seed, confound=confound and c, **positive), self.render(
            seed, confound=confound and not c, **negative
        )

    def pairs(self, n: int, seed: int = 0, **kwargs: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.pair(seed + i, **kwargs) for i in range(n)]

    def pixel_mask(self, variable: str) -> np.ndarray:
        """bool [T, H, W]: the pixels whose value the variable changes (its blobs when True or False)."""
        if variable not in self.truth.variables:
            raise KeyError(f"{self.truth.name} has variables {self.truth.variables}, got {variable!r}")
        on = render_clip(self.cfg, self.blobs[variable][0], texture=False)[0, :, 0]
        off = render_clip(self.cfg, self.blobs[variable][1], texture=False)[0, :, 0]
        return (on != off).numpy()

    def pixel_box(self, variable: str) -> PixelBox:
        """The pixel box (frames, rows, cols) around a variable's changed pixels; for a set that is not
        a box (spread) it covers more than the set: use ``pixel_mask`` for the set."""
        return PixelBox.from_tokens(self.cfg.grid, self.truth.positions(variable))


def render_clip(
    cfg: HookedViViTConfig, blobs: Sequence[Region], seed: int = 0, *, texture: bool = True
) -> torch.Tensor:
    """[1, T, 3, H, W] normalised pixels: R = lum, G = lum + n, B = lum - n, where lum = BLOB inside
    the pixel box of every token region in ``blobs`` (0 elsewhere) and n is a colour texture drawn
    from ``seed`` (one level per tubelet, in [-TEXTURE, TEXTURE], plus pixel noise). A blob changes
    brightness only, the texture colour only."""
    grid = cfg.grid
    T, (H, W) = cfg.num_frames, cfg.image_size
    rng = np.random.default_rng(seed)
    t, h, w = cfg.tubelet_size
    per_token = rng.uniform(-TEXTURE, TEXTURE, size=grid.shape)
    n = np.repeat(np.repeat(np.repeat(per_token, t, 0), h, 1), w, 2) + rng.normal(0, 0.05, size=(T, H, W))
    if not texture:
        n[:] = 0.0
    lum = np.zeros((T, H, W))
    for region in blobs:
        box = PixelBox.from_tokens(grid, resolve_positions(cfg, region))
        lum[box.t0 : box.t1, box.y0 : box.y1, box.x0 : box.x1] = BLOB
    return torch.from_numpy(np.stack([lum, lum + n, lum - n], axis=1)).float()[None]


def equal_boxes(grid: Any, region: Region) -> list[Region]:
    """Every box of the token grid with the same extent as ``region`` (which is among them)."""

    def extent(sel, n):
        if sel is None:
            return n
        sel = [sel] if isinstance(sel, int) else list(sel)
        if sel != list(range(sel[0], sel[0] + len(sel))):
            raise ValueError(f"region {region} is not a box of consecutive indices")
        return len(sel)

    dt, dr, dc = (extent(s, n) for s, n in zip((region.frame_slots, region.rows, region.cols), grid.shape))
    return [
        Region(tuple(range(t, t + dt)), tuple(range(r, r + dr)), tuple(range(c, c + dc)))
        for t in range(grid.n_frame_slots - dt + 1)
        for r in range(grid.n_rows - dr + 1)
        for c in range(grid.n_cols - dc + 1)
    ]


def component_changes(pm: PlantedModel, seed: int = 0, **pair_kwargs: Any) -> dict[str, float]:
    """ "L{l} attn_out" / "L{l} mlp_out" -> the L2 norm of the difference of that component's output
    at CLS between the two clips of ``pm.pair(seed)``."""
    pos, neg = pm.pair(seed, **pair_kwargs)
    names = lambda n: n.endswith(("hook_attn_out", "hook_mlp_out"))  # noqa: E731
    with torch.inference_mode():
        _, cp = pm.model.run_with_cache(pos, names_filter=names)
        _, cn = pm.model.run_with_cache(neg, names_filter=names)
    return {
        f"L{l} {kind}": float((cp[f"blocks.{l}.hook_{kind}"][0, 0] - cn[f"blocks.{l}.hook_{kind}"][0, 0]).norm())
        for l in range(pm.cfg.n_layers)
        for kind in ("attn_out", "mlp_out")
    }


def distractor_ratios(pm: PlantedModel, seed: int = 0) -> dict[str, float]:
    """Non-planted component -> its within-pair change (``component_changes``) over the largest planted
    component's change; for the null (no planted component) the changes themselves."""
    changes = component_changes(pm, seed)
    planted = set(pm.truth.component_labels)
    scale = max((changes[c] for c in planted), default=1.0)
    return {c: v / scale for c, v in changes.items() if c not in planted}


# =========================================================================================== building
def _level(level: int) -> Level:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(LEVELS):
        raise ValueError(f"level must be an integer in 0..{len(LEVELS) - 1}, got {level!r}")
    return LEVELS[level]


def _tokens(cfg: HookedViViTConfig, regions: Sequence[Region]) -> tuple[int, ...]:
    return tuple(sorted({p for r in regions for p in resolve_positions(cfg, r)}))


class _Weights:
    """Sets a fresh model's weights feature by feature; everything not set stays zero."""

    def __init__(self, name: str, id2label: dict[int, str], level: int, confound: bool = False):
        suffix = "-confound" if confound else ""
        cfg = HookedViViTConfig(**CONFIG, id2label=id2label, model_name=f"planted-{name}{suffix}")
        self.model = HookedViViT(cfg, init_weights=False)
        self.cfg = cfg
        self.level, self.lv = level, _level(level)
        self.confound = CONFOUNDS[name] if confound else None
        self.distractors: list[Distractor] = []
        with torch.no_grad():
            for pname, p in self.model.named_parameters():
                p.fill_(1.0 if pname.endswith(".w") else 0.0)  # LayerNorm w = 1; all else 0

    @property
    def g(self) -> float:
        """The distractors' gain at this level."""
        return self.lv.distractor * HEAD_GAIN

    def embeddings(self, markers: dict[str, Sequence[int]]) -> None:
        """Tubelet embedding (brightness pair, texture) and position markers on the given tokens."""
        emb, t, h, w = self.model.embed, *self.cfg.tubelet_size
        n = t * h * w
        with torch.no_grad():
            emb.cls_token.copy_(_vec(anchor=ANCHOR, is_cls=MARKER))
            emb.b_E.copy_(_vec(anchor=ANCHOR, is_patch=MARKER, lum_off=1.0))
            # Luminance (R + G + B) / 3 averaged over the tubelet, in units of a blob: s.
            lum = (direction("lum_on") - direction("lum_off")) / (3 * BLOB * n)
            emb.W_E.copy_(lum[:, None, None, None, None].expand_as(emb.W_E))
            emb.W_E[:, 1] += (direction("texture") / (2 * n))[:, None, None, None]
            emb.W_E[:, 2] -= (direction("texture") / (2 * n))[:, None, None, None]
            for marker, tokens in markers.items():
                for p in tokens:
                    self.model.pos_embed.W_pos[p] += MARKER * direction(marker)
        if self.confound is not None:  # first, so that every calibration below includes the reader
            c = self.confound
            tokens = _tokens(self.cfg, [c.region])
            if c.marker in markers or set(tokens) & {p for ts in markers.values() for p in ts}:
                raise RuntimeError(f"confound {c} collides with the model's markers")
            # Its own marker (large: the shield makes these tokens' LayerNorm scale ~3x), and the shield: a
            # large negative coefficient on the planted position markers, which every planted or blurred
            # head keys on, so that even the blurred heads (sharpness < 1) give its tokens almost no weight.
            shield = _vec(**{f: -CONFOUND_SHIELD for f in ("region_a", "region_b") if f in markers})
            with torch.no_grad():
                for p in tokens:
                    self.model.pos_embed.W_pos[p] += CONFOUND_MARKER * direction(c.marker) + shield
            self.cls_head(c.layer, c.head, key=c.marker, value=BRIGHTNESS, writes=c.writes, gain=self.g)
            # Scale its output to +-g at CLS (the shield's LayerNorm scale shrinks what it reads).
            off = self.coord(render_clip(self.cfg, [], texture=False), f"blocks.{c.layer}.hook_resid_mid", c.writes)
            with torch.no_grad():
                self.model.blocks[c.layer].attn.W_O[c.head] *= self.g / abs(off)
            self.distractors.append(
                Distractor(
                    f"L{c.layer}H{c.head}",
                    "brightness of the confound box (differs within a pair only with confound=True)",
                    c.writes,
                    tokens,
                )
            )

    def with_confound(self, *blob_sets: Sequence[Region]) -> list[torch.Tensor]:
        """Texture-free calibration clips: each set of blobs, and (a model with a confound) each again
        with the confound blob."""
        extra: list[list[Region]] = [[]] + ([[self.confound.region]] if self.confound is not None else [])
        return [render_clip(self.cfg, [*blobs, *e], texture=False) for blobs in blob_sets for e in extra]

    def planted_model(self, truth: GroundTruth, blobs: dict) -> PlantedModel:
        region = self.confound.region if self.confound is not None else None
        if region is not None:
            truth = replace(truth, confound_region=region)
        return PlantedModel(self.model, truth, blobs, confound=region)

    def cls_head(
        self,
        layer: int,
        head: int,
        *,
        key: str,
        value: dict[str, float],
        writes: str | dict[str, float],
        gain: float,
        sharpness: float = 1.0,
    ) -> None:
        """CLS attends to the tokens marked ``key`` (QK gain x ``sharpness``); patch tokens attend to
        CLS (value 0, a sink). The value reads ``value`` (feature -> coefficient) and W_O writes it to
        ``writes`` (a feature, or a unit combination of features)."""
        attn = self.model.blocks[layer].attn
        if bool(attn.W_O[head].any()):
            raise RuntimeError(f"head L{layer}H{head} is already set")
        out = direction(writes) if isinstance(writes, str) else _vec(**writes) / float(_vec(**writes).norm())
        with torch.no_grad():
            attn.W_Q[head, :, 0] = QK_GAIN * direction("is_cls")
            attn.W_K[head, :, 0] = QK_GAIN * sharpness * direction(key)
            attn.W_Q[head, :, 1], attn.W_K[head, :, 1] = QK_GAIN * direction("is_patch"), QK_GAIN * direction("is_cls")
            attn.W_V[head, :, 0] = _vec(**value)
            attn.W_O[head, 0] = gain * out

    def neuron(
        self,
        layer: int,
        index: int,
        *,
        reads: dict[str, float],
        bias: float,
        writes: str | dict[str, float],
        gain: float,
    ) -> None:
        mlp = self.model.blocks[layer].mlp
        out = direction(writes) if isinstance(writes, str) else _vec(**writes)
        with torch.no_grad():
            mlp.W_in[:, index] = _vec(**reads)
            mlp.b_in[index] = bias
            mlp.W_out[index] = gain * out

    def classifier(self, reads: str, positive: int, negative: int, bias: float = 0.0) -> None:
        with torch.no_grad():
            self.model.unembed.W_U[:, positive] = CLASS_GAIN * direction(reads)
            self.model.unembed.W_U[:, negative] = -CLASS_GAIN * direction(reads)
            self.model.unembed.b_U[positive], self.model.unembed.b_U[negative] = -bias, bias

    # ------------------------------------------------------------------ measurements for calibration
    def coord(self, clip: torch.Tensor, hook: str, feature: str) -> float:
        """The coefficient of ``feature`` at CLS at ``hook`` on ``clip`` (the model as built so far)."""
        with torch.inference_mode():
            _, cache = self.model.run_with_cache(clip, names_filter=hook)
        return float(cache[hook][0, 0] @ direction(feature))

    def centre_classifier(self, reads: str, positive: int, negative: int, pos: list, neg: list) -> None:
        """Where the planted heads leak attention (sharpness < 1): the classifier's bias at the midpoint
        between the lowest positive and the highest negative readout on the given clips."""
        hook = "ln_final.hook_normalized"
        lo = min(self.coord(x, hook, reads) for x in pos)
        hi = max(self.coord(x, hook, reads) for x in neg)
        if not lo > hi:
            raise RuntimeError(f"planted readout does not separate the classes: {lo} <= {hi}")
        self.classifier(reads, positive, negative, bias=CLASS_GAIN * (lo + hi) / 2)

    # ------------------------------------------------------------------ distractors
    def mirror_head(self, layer: int, head: int, key: str, tokens: Sequence[int]) -> None:
        """A head that attends (always sharply) to the planted tokens and writes their brightness to
        ``mirror``, which nothing reads."""
        self.cls_head(layer, head, key=key, value=BRIGHTNESS, writes="mirror", gain=self.g)
        self.distractors.append(
            Distractor(f"L{layer}H{head}", f"brightness of the {key} tokens", "mirror", tuple(tokens), True)
        )

    def reacting_pair(self, layer: int, first: int, reads: str, clip: torch.Tensor) -> None:
        """Two neurons at CLS: relu(+f) writes mirror_on, relu(-f) mirror_off (f: ``reads`` normalised,
        1 on ``clip``); the output's change within a pair is sqrt(2) x gain."""
        a = self.coord(clip, f"blocks.{layer}.ln2.hook_normalized", reads)
        gain = self.g * math.sqrt(2)
        self.neuron(layer, first, reads={reads: 1 / a}, bias=0.0, writes="mirror_on", gain=gain)
        self.neuron(layer, first + 1, reads={reads: -1 / a}, bias=0.0, writes="mirror_off", gain=gain)
        self.distractors.append(
            Distractor(f"L{layer} mlp neurons {first}-{first + 1}", reads, "mirror_on / mirror_off", None, True)
        )

    def cancelled_head(
        self,
        layer: int,
        head: int,
        first: int,
        key: str,
        tokens: Sequence[int],
        target: str,
        clip: torch.Tensor,
        sign: float = 1.0,
    ) -> None:
        """A head with the planted head's attention map (same sharpness) writing brightness to
        ``sign`` x ``target`` + echo, and two neurons of the same layer's MLP that write its exact
        negative (calibrated on ``clip``): relu(+-echo) x -+sigma (sign target + echo), sigma = raw /
        normalised echo."""
        self.cls_head(
            layer,
            head,
            key=key,
            value=BRIGHTNESS,
            writes={target: sign, "echo": 1.0},
            gain=self.g * math.sqrt(2),  # g along the target, as much along echo
            sharpness=self.lv.sharpness,
        )
        if self.g == 0:
            return
        raw = self.coord(clip, f"blocks.{layer}.hook_resid_mid", "echo")
        normed = self.coord(clip, f"blocks.{layer}.ln2.hook_normalized", "echo")
        sigma = raw / normed
        writes = target if sign > 0 else f"-{target}"
        back = {target: sign, "echo": 1.0}
        self.neuron(layer, first, reads={"echo": 1.0}, bias=0.0, writes=back, gain=-sigma)
        self.neuron(layer, first + 1, reads={"echo": -1.0}, bias=0.0, writes=back, gain=sigma)
        self.distractors += [
            Distractor(f"L{layer}H{head}", f"brightness of the {key} tokens", f"{writes} + echo", tuple(tokens), True),
            Distractor(
                f"L{layer} mlp neurons {first}-{first + 1}",
                "echo",
                f"-({writes} + echo): cancels L{layer}H{head}",
                None,
                True,
            ),
        ]

    def backup(self, layer: int, first: int, planted: str, clip: torch.Tensor) -> None:
        """Self-repair: four neurons of ``layer``'s MLP (after the cancelled head of that layer, whose
        echo carries the planted tokens' brightness on its own) read d = m - s, m = echo and s = the
        planted head's part of signal_a (signal_a - echo), each in units of its value on ``clip``, and
        write R x f(d) times the planted head's signal_a along signal_a, f(d) = relu(d - e) - relu(-d - e)
        - (2 - e) relu(d - 1) + (2 - e) relu(-d - 1), e = BACKUP_MARGIN. On every clip d = 0 (both read the
        same tokens alike): silent. With the planted head ablated (s = 0, d = +-1) they write +-(1 - e) R x
        its signal: the backup takes over. With its output patched from the other clip (d = +-2) f = 0:
        denoising and noising see no repair.
        R = the level's distractor gain / HEAD_GAIN. Only at sharpness 1: a leaky planted head's value is
        not +-1 (background tokens add -1 in both clips), and as it nears 0 on a blob clip the ablated
        and the patched states coincide, so no readout can repair the one and not the other."""
        if self.lv.sharpness != 1.0:
            return
        hook, mid = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_resid_mid"
        e0, sa0 = self.coord(clip, hook, "echo"), self.coord(clip, hook, planted)
        p_raw = self.coord(clip, mid, planted) - self.coord(clip, mid, "echo")  # the planted head's signal_a
        reads = {"echo": 1 / e0 + 1 / (sa0 - e0), planted: -1 / (sa0 - e0)}  # d
        minus = {f: -c for f, c in reads.items()}
        repair = self.lv.distractor
        m = BACKUP_MARGIN  # the first pair's kinks just off d = 0: silent, and without gradient, on every clip
        pairs = ((reads, -m, 1), (minus, -m, -1), (reads, -1, m - 2), (minus, -1, 2 - m))
        for i, (r, bias, gain) in enumerate(pairs):
            self.neuron(layer, first + i, reads=r, bias=bias, writes=planted, gain=gain * repair * p_raw)
        self.distractors.append(
            Distractor(
                f"L{layer} mlp neurons {first}-{first + 3}",
                "echo - the planted head's signal_a (0 unless the planted head is ablated)",
                f"{planted}: backup (self-repair, {repair:g} of the planted head's signal)",
            )
        )

    def texture_heads(self, heads: Sequence[tuple[int, int]], patches: Sequence[int]) -> None:
        for layer, head in heads:
            self.cls_head(layer, head, key="is_patch", value=TEXTURE_V, writes="texture_sum", gain=NUISANCE_GAIN)
            self.distractors.append(Distractor(f"L{layer}H{head}", "texture", "texture_sum", tuple(patches)))


BRIGHTNESS = {"lum_on": 1.0, "lum_off": -1.0}  # V reads 2s - 1: +1 in a blob, -1 on the background
TEXTURE_V = {"texture": 1.0}


def single_head(level: int = DEFAULT_LEVEL, confound: bool = False) -> PlantedModel:
    return _single("single_head", level, confound)


def null(level: int = DEFAULT_LEVEL, confound: bool = False) -> PlantedModel:
    return _single("null", level, confound)


def _single(name: str, level: int, confound: bool = False) -> PlantedModel:
    """single_head, and the null built like it (the classifier reads the decoy instead of signal_a)."""
    region = Region(frame_slots=(2, 3), rows=(1, 2), cols=(2, 3))
    decoy = Region(frame_slots=(0, 1), rows=(2, 3), cols=(0, 1))
    is_null = name == "null"
    labels = {0: "decoy", 1: "no decoy"} if is_null else {0: "blob", 1: "no blob"}
    wts = _Weights(name, labels, level, confound)
    if is_null:  # no planted head to blur; leaky heads would make the CLS norm (so the logits' scale) differ
        wts.lv = Level(wts.lv.distractor, 1.0, wts.lv.ratio)
    cfg, lv = wts.cfg, wts.lv
    box, decoy_tokens = _tokens(cfg, [region]), _tokens(cfg, [decoy])
    wts.embeddings({"region_a": box, "region_b": decoy_tokens})
    patches = tuple(range(1, cfg.n_ctx))
    on = render_clip(cfg, [region], texture=False)
    # Layer 0: texture summary (H0), decoy-box brightness (H1: the null's decision), the mirror head (H2).
    wts.texture_heads([(0, 0)], patches)
    wts.cls_head(0, 1, key="region_b", value=BRIGHTNESS, writes="decoy", gain=HEAD_GAIN if is_null else NUISANCE_GAIN)
    if not is_null:
        wts.distractors.append(Distractor("L0H1", "brightness of the decoy box", "decoy", decoy_tokens))
    wts.mirror_head(0, 2, "region_a", box)
    # Layer 0's MLP: a ReLU of the texture summary (neuron 0), the reacting pair on mirror (1, 2).
    wts.neuron(0, 0, reads={"texture_sum": 10.0}, bias=0.0, writes="texture_mlp", gain=NUISANCE_GAIN)
    wts.distractors.append(Distractor("L0 mlp neuron 0", "texture_sum", "texture_mlp"))
    if wts.g:
        wts.reacting_pair(0, 1, "mirror", on)
    # Layer 1: the planted head H2 (the null: the same head, which the classifier ignores); H0 looks
    # at the same box but reads its texture.
    wts.cls_head(1, 2, key="region_a", value=BRIGHTNESS, writes="signal_a", gain=HEAD_GAIN, sharpness=lv.sharpness)
    wts.cls_head(1, 0, key="region_a", value=TEXTURE_V, writes="lookalike", gain=NUISANCE_GAIN, sharpness=lv.sharpness)
    wts.distractors.append(Distractor("L1H0", "texture of box A (same attention as L1H2)", "lookalike", box))
    if is_null:
        wts.distractors.append(Distractor("L1H2", "brightness of box A", "signal_a (ignored)", box, True))
    # Layer 2: the decoy box again (H3); the cancelled head (H1) and its cancelling neurons (0, 1).
    wts.cls_head(2, 3, key="region_b", value=BRIGHTNESS, writes="decoy", gain=NUISANCE_GAIN)
    wts.distractors.append(Distractor("L2H3", "brightness of the decoy box", "decoy", decoy_tokens))
    wts.cancelled_head(2, 1, 0, "region_a", box, "signal_a", on)
    if not is_null:
        wts.backup(2, 2, "signal_a", on)
    reads = "decoy" if is_null else "signal_a"
    wts.classifier(reads, positive=0, negative=1)
    if lv.sharpness < 1 and not is_null:
        pos, neg = wts.with_confound([region], [region, decoy]), wts.with_confound([], [decoy])
        wts.centre_classifier(reads, 0, 1, pos, neg)
    if is_null:
        truth = GroundTruth(
            name="null",
            summary="the pair changes the blob of box A (frame slots 2-3, rows 1-2, cols 2-3), which head L1H2 "
            "gathers and every distractor responds to; the classifier reads only the decoy box (frame slots 0-1, "
            "rows 2-3, cols 0-1, gathered by L0H1), the same in both clips of a pair: nothing carries the pair's "
            "difference to the decision",
            variables=("blob",),
            heads=(),
            mlps=(),
            reads="decoy",
            positive=0,
            negative=1,
            rule="decoy",
            changed={"blob": box},
            distractors=tuple(wts.distractors),
            decoy_region=decoy,
            context=("decoy",),
            decided_by=("decoy",),
            level=level,
        )
    else:
        truth = GroundTruth(
            name="single_head",
            summary="head L1H2's CLS query attends only to the 8 tokens of box A (frame slots 2-3, rows 1-2, "
            "cols 2-3); its OV circuit writes their brightness to signal_a, the only direction the classifier "
            "reads",
            variables=("blob",),
            heads=(PlantedHead(1, 2, "blob", region, box, "signal_a"),),
            mlps=(),
            reads="signal_a",
            positive=0,
            negative=1,
            rule="blob",
            changed={"blob": box},
            distractors=tuple(wts.distractors),
            decoy_region=decoy,
            level=level,
        )
    return wts.planted_model(truth, {"blob": ((region,), ())})


def and_composition(level: int = DEFAULT_LEVEL, confound: bool = False) -> PlantedModel:
    region_a = Region(frame_slots=(0, 1), rows=(0, 1), cols=(1, 2))
    region_b = Region(frame_slots=(2, 3), rows=(2, 3), cols=(0, 1))
    wts = _Weights("and_composition", {0: "a and b", 1: "not both"}, level, confound)
    cfg, lv = wts.cfg, wts.lv
    box_a, box_b = _tokens(cfg, [region_a]), _tokens(cfg, [region_b])
    wts.embeddings({"region_a": box_a, "region_b": box_b})
    patches = tuple(range(1, cfg.n_ctx))
    clip = lambda *r: render_clip(cfg, list(r), texture=False)  # noqa: E731
    both = clip(region_a, region_b)
    wts.texture_heads([(0, 0), (1, 0)], patches)
    wts.cls_head(0, 1, key="region_a", value=BRIGHTNESS, writes="signal_a", gain=HEAD_GAIN, sharpness=lv.sharpness)
    wts.cls_head(1, 3, key="region_b", value=BRIGHTNESS, writes="signal_b", gain=HEAD_GAIN, sharpness=lv.sharpness)
    wts.cls_head(2, 2, key="region_a", value=TEXTURE_V, writes="lookalike", gain=NUISANCE_GAIN, sharpness=lv.sharpness)
    wts.distractors.append(Distractor("L2H2", "texture of box A (same attention as L0H1)", "lookalike", box_a))
    # Distractors: the cancelled head L0H2 (into -signal_a, against L0H1 in layer 0's output; cancelled
    # by layer 0's MLP), the reacting pair on signal_b in layer 1's MLP, the mirror head L2H1 on box B.
    wts.cancelled_head(0, 2, 0, "region_a", box_a, "signal_a", both, sign=-1.0)
    if wts.g:
        wts.reacting_pair(1, 0, "signal_b", both)
    wts.mirror_head(2, 1, "region_b", box_b)
    # The AND neuron: x = (signal_a + signal_b) / scale at CLS, measured on texture-free clips with
    # both blobs, one, or none; the neuron fires above the midpoint t between "one" and "both" only:
    # relu((x - t) / (x_both - t)) (at sharpness 1: x = +2c, 0, -2c, and the neuron is relu(x / c - 1)).
    hook = "blocks.2.ln2.hook_normalized"

    def x(c):
        return wts.coord(c, hook, "signal_a") + wts.coord(c, hook, "signal_b")

    x_both = min(x(c) for c in wts.with_confound([region_a, region_b]))
    x_one = max(x(c) for c in wts.with_confound([region_a], [region_b]))
    t = (x_both + x_one) / 2
    span = x_both - t
    wts.neuron(
        2, 0, reads={"signal_a": 1 / span, "signal_b": 1 / span}, bias=-t / span, writes="composed", gain=HEAD_GAIN
    )
    wts.neuron(2, 1, reads={"texture_sum": 10.0}, bias=0.0, writes="texture_mlp", gain=NUISANCE_GAIN)
    wts.distractors.append(Distractor("L2 mlp neuron 1", "texture_sum", "texture_mlp"))
    # Bias: with the neuron silent the classifier says "not both".
    wts.classifier("composed", positive=0, negative=1, bias=1.0)
    truth = GroundTruth(
        name="and_composition",
        summary="head L0H1 gathers blob A (frame slots 0-1, rows 0-1, cols 1-2) into signal_a, head L1H3 blob B "
        "(frame slots 2-3, rows 2-3, cols 0-1) into signal_b; neuron 0 of the layer-2 MLP fires only when "
        "both are there and writes composed, the only direction the classifier reads",
        variables=("a", "b"),
        heads=(
            PlantedHead(0, 1, "a", region_a, box_a, "signal_a"),
            PlantedHead(1, 3, "b", region_b, box_b, "signal_b"),
        ),
        mlps=(2,),
        reads="composed",
        positive=0,
        negative=1,
        rule="a and b",
        changed={"a": box_a, "b": box_b},
        distractors=tuple(wts.distractors),
        level=level,
    )
    return wts.planted_model(truth, {"a": ((region_a,), ()), "b": ((region_b,), ())})


def _one_head(
    name: str,
    level: int,
    variable: str,
    on_boxes: Sequence[Region],
    off_boxes: Sequence[Region],
    attended: tuple[int, ...],
    labels: dict[int, str],
    summary: str,
    extra_markers: dict[str, Sequence[int]] | None = None,
    extra: Callable[[_Weights], None] | None = None,
    confound: bool = False,
) -> PlantedModel:
    """A single planted head L1H2 attending to ``attended`` (temporal, spread), with single_head's
    distractors: texture head L0H0, mirror head L0H2 + reacting pair in layer 0's MLP, the cancelled
    head L2H1 + its neurons in layer 2's MLP."""
    wts = _Weights(name, labels, level, confound)
    cfg, lv = wts.cfg, wts.lv
    wts.embeddings({"region_a": attended, **(extra_markers or {})})
    patches = tuple(range(1, cfg.n_ctx))
    on = render_clip(cfg, list(on_boxes), texture=False)
    wts.texture_heads([(0, 0)], patches)
    wts.mirror_head(0, 2, "region_a", attended)
    if wts.g:
        wts.reacting_pair(0, 0, "mirror", on)
    wts.cls_head(1, 2, key="region_a", value=BRIGHTNESS, writes="signal_a", gain=HEAD_GAIN, sharpness=lv.sharpness)
    if extra is not None:
        extra(wts)
    wts.cancelled_head(2, 1, 0, "region_a", attended, "signal_a", on)
    wts.backup(2, 2, "signal_a", on)
    wts.classifier("signal_a", positive=0, negative=1)
    if lv.sharpness < 1:
        wts.centre_classifier("signal_a", 0, 1, wts.with_confound(on_boxes), wts.with_confound(off_boxes))
    mask_on, mask_off = (render_clip(cfg, list(b), texture=False)[0, :, 0] for b in (on_boxes, off_boxes))
    changed = _mask_tokens(cfg, (mask_on != mask_off).numpy())
    truth = GroundTruth(
        name=name,
        summary=summary,
        variables=(variable,),
        heads=(PlantedHead(1, 2, variable, None, tuple(attended), "signal_a"),),
        mlps=(),
        reads="signal_a",
        positive=0,
        negative=1,
        rule=variable,
        changed={variable: changed},
        distractors=tuple(wts.distractors),
        level=level,
    )
    return wts.planted_model(truth, {variable: (tuple(on_boxes), tuple(off_boxes))})


def _mask_tokens(cfg: HookedViViTConfig, mask: np.ndarray) -> tuple[int, ...]:
    """The patch tokens whose tubelet holds a pixel of ``mask`` [T, H, W]."""
    grid, (t, h, w) = cfg.grid, cfg.tubelet_size
    S, R, C = grid.shape
    per = mask.reshape(S, t, R, h, C, w).any(axis=(1, 3, 5))
    return tuple(sorted(grid.index(*map(int, i)) for i in np.argwhere(per)))


def temporal(level: int = DEFAULT_LEVEL, confound: bool = False) -> PlantedModel:
    p_early, q_late = Region((0, 1), (1, 2), (0, 1)), Region((2, 3), (1, 2), (2, 3))
    q_early, p_late = Region((0, 1), (1, 2), (2, 3)), Region((2, 3), (1, 2), (0, 1))
    cfg = HookedViViTConfig(**CONFIG)
    attended = _tokens(cfg, [p_early, q_late])
    everywhere = _tokens(cfg, [p_early, q_late, q_early, p_late])

    def where_not_when(wts: _Weights) -> None:
        # L1H0 attends to P and Q in every frame slot: the same half-lit set in both clips.
        wts.cls_head(1, 0, key="region_b", value=BRIGHTNESS, writes="lookalike", gain=NUISANCE_GAIN)
        wts.distractors.append(
            Distractor("L1H0", "brightness of P and Q at every frame slot (where, not when)", "lookalike", everywhere)
        )

    return _one_head(
        "temporal",
        level,
        "rightward",
        (p_early, q_late),
        (q_early, p_late),
        attended,
        {0: "rightward", 1: "leftward"},
        "a blob in box P (rows 1-2, cols 0-1) then box Q (rows 1-2, cols 2-3) is rightward, Q then P leftward; "
        "head L1H2 attends to P in frame slots 0-1 and Q in slots 2-3 and writes their brightness to signal_a, "
        "the only direction the classifier reads; both clips hold the same blob pixels summed over time",
        # "spare" on the other half keeps every token of the set at one norm, so L1H0 attends to all alike
        extra_markers={"region_b": everywhere, "spare": _tokens(cfg, [q_early, p_late])},
        extra=where_not_when,
        confound=confound,
    )


TRAIL = ((0, 0, 0), (0, 2, 3), (1, 1, 1), (1, 3, 2), (2, 0, 2), (2, 2, 0), (3, 1, 3), (3, 3, 1))


def spread(level: int = DEFAULT_LEVEL, confound: bool = False) -> PlantedModel:
    boxes = tuple(Region((t,), (r,), (c,)) for t, r, c in TRAIL)
    cfg = HookedViViTConfig(**CONFIG)
    return _one_head(
        "spread",
        level,
        "trail",
        boxes,
        (),
        _tokens(cfg, boxes),
        {0: "trail", 1: "no trail"},
        "head L1H2 attends uniformly to 8 scattered tokens (two per frame slot, frame slot / row / col "
        f"{list(TRAIL)}) and writes their mean brightness to signal_a, the only direction the classifier reads; "
        "a blob on every one of them is 'trail'",
        confound=confound,
    )


def redundant(level: int = DEFAULT_LEVEL, confound: bool = False) -> PlantedModel:
    region = Region(frame_slots=(2, 3), rows=(1, 2), cols=(2, 3))
    wts = _Weights("redundant", {0: "blob", 1: "no blob"}, level, confound)
    cfg, lv = wts.cfg, wts.lv
    box = _tokens(cfg, [region])
    wts.embeddings({"region_a": box})
    patches = tuple(range(1, cfg.n_ctx))
    on, off = render_clip(cfg, [region], texture=False), render_clip(cfg, [], texture=False)
    wts.texture_heads([(0, 0)], patches)
    for layer, head in ((0, 1), (1, 2)):
        wts.cls_head(
            layer, head, key="region_a", value=BRIGHTNESS, writes="signal_a", gain=HEAD_GAIN, sharpness=lv.sharpness
        )
    # Distractors: reacting pair on signal_a (layer 0's MLP), the cancelled head L1H1 into composed
    # (cancelled by layer 1's MLP), the mirror head L2H0.
    if wts.g:
        wts.reacting_pair(0, 0, "signal_a", on)
    wts.cancelled_head(1, 1, 0, "region_a", box, "composed", on)
    wts.mirror_head(2, 0, "region_a", box)
    # The saturating readout: u = (x - x_none) / (x_both - x_none) of x = signal_a at layer 2's MLP
    # input (0 none, 1/2 one head, 1 both); relu(u - 0.1) - relu(u - 0.4) = 0, 0.3, 0.3.
    hook = "blocks.2.ln2.hook_normalized"
    x_on, x_off = wts.coord(on, hook, "signal_a"), wts.coord(off, hook, "signal_a")
    span = x_on - x_off
    for i, kink in enumerate((0.1, 0.4)):
        wts.neuron(
            2,
            i,
            reads={"signal_a": 1 / span},
            bias=-x_off / span - kink,
            writes="composed",
            gain=(1 if i == 0 else -1) * HEAD_GAIN / 0.3,
        )
    wts.classifier("composed", positive=0, negative=1)
    wts.centre_classifier("composed", 0, 1, wts.with_confound([region]), wts.with_confound([]))
    truth = GroundTruth(
        name="redundant",
        summary="heads L0H1 and L1H2 both gather box A (frame slots 2-3, rows 1-2, cols 2-3) into signal_a; two "
        "neurons of layer 2's MLP read it saturating (either head alone gives the whole readout) and write "
        "composed, the only direction the classifier reads",
        variables=("blob",),
        heads=(PlantedHead(0, 1, "blob", region, box, "signal_a"), PlantedHead(1, 2, "blob", region, box, "signal_a")),
        mlps=(2,),
        reads="composed",
        positive=0,
        negative=1,
        rule="blob",
        changed={"blob": box},
        distractors=tuple(wts.distractors),
        level=level,
    )
    return wts.planted_model(truth, {"blob": ((region,), ())})


BUILDERS: dict[str, Callable[..., PlantedModel]] = {
    "single_head": single_head,
    "and_composition": and_composition,
    "temporal": temporal,
    "spread": spread,
    "redundant": redundant,
    "null": null,
}
NAMES = tuple(BUILDERS)


def build(name: str, level: int = DEFAULT_LEVEL, *, confound: bool = False) -> PlantedModel:
    """A planted model by name (``NAMES``) at a difficulty ``level`` (``LEVELS``); deterministic, built
    in milliseconds. ``confound=True`` adds the confound's reader (``CONFOUNDS``; module docstring), for
    ``pairs(..., confound=True)``; without it the model is the shipped one, unchanged."""
    if name not in BUILDERS:
        raise KeyError(f"unknown planted model {name!r}; available: {NAMES}")
    _level(level)
    return BUILDERS[name](level, confound=bool(confound))


def variable_combinations(truth: GroundTruth) -> list[dict[str, bool]]:
    """Every assignment of the variables a pair changes."""
    return [dict(zip(truth.variables, v)) for v in itertools.product([False, True], repeat=len(truth.variables))]


__all__ = [
    "BUILDERS",
    "CONFOUNDS",
    "DEFAULT_LEVEL",
    "D_MODEL",
    "FEATURES",
    "LEVELS",
    "MIN_DISTRACTORS",
    "NAMES",
    "Confound",
    "Distractor",
    "GroundTruth",
    "Level",
    "PlantedHead",
    "PlantedModel",
    "and_composition",
    "build",
    "component_changes",
    "direction",
    "distractor_ratios",
    "equal_boxes",
    "null",
    "redundant",
    "render_clip",
    "single_head",
    "spread",
    "temporal",
    "variable_combinations",
]
