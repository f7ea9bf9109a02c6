"""Planted-mechanism models: tiny HookedViViTs whose weights are set by hand, so that the mechanism
is known exactly and every method of the library can be checked against it (positive controls).

Two models (``build(name)``), both 8 frames of 32x32 px, tubelet 2x8x8 (a 4x4x4 token grid, 65
tokens with CLS), 3 layers of 4 heads, d_model 32, ReLU MLPs:

- ``single_head``: head (1, 2)'s CLS query attends only to the 8 tokens of one box (frame slots
  2-3, rows 1-2, cols 2-3: a blob there appears from frame 4 on), its OV circuit carries the box's
  brightness to one residual direction at CLS, and the classifier reads that direction alone
  ("blob" vs "no blob").
- ``and_composition``: head (0, 1) gathers blob A (frame slots 0-1, rows 0-1, cols 1-2), head
  (1, 3) gathers blob B (frame slots 2-3, rows 2-3, cols 0-1), each into its own direction at CLS;
  one neuron of layer 2's MLP fires only when both are there and writes the only direction the
  classifier reads ("a and b" vs "not both"): attention gathers, the MLP composes.

Around the planted paths sit distractors that are active but carry nothing about the planted
variables: heads that average a colour texture over every patch, a head with the planted head's
exact attention map that reads the texture instead of brightness (attention alone cannot tell it
from the planted head), a head that reads a decoy blob in another box, an MLP neuron reading the
texture summary. The texture and the decoy change from clip to clip (``seed``) but never within a
minimal pair, so probes and patching see real variation that must be told apart from the signal.

Residual-stream layout. d_model = 32 holds 16 named features (``FEATURES``); feature i is the unit
direction (e_i - e_{16+i}) / sqrt(2). Every vector any weight writes is a combination of them, so
every token's residual stream has zero mean over d_model and LayerNorm (w = 1, b = 0) only divides
by the token's scale: a head reads feature f as coefficient_f / scale. Brightness is written as a
pair (lum_on = s, lum_off = 1 - s), so a token's norm is the same with and without a blob, and the
two clips of a minimal pair differ in nothing but the planted features (every other activation is
equal, hence patching any other component changes nothing). The QK circuits read position-embedding
markers with large gains, so a planted head puts all but ~1e-15 of its CLS attention on its box;
patch-token queries attend to CLS (whose value is zero), so no head writes anything at patch tokens.

``GroundTruth`` (``build(name).truth``, ``truth.to_dict()``) says which heads, MLPs, tokens, directions
and classes carry what, for tests and for a validation table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
    "region_a",  # position marker of the tokens of box A (the planted region)
    "region_b",  # position marker of box B (second planted region, or the decoy box)
    "signal_a",  # written at CLS by the head that gathers blob A
    "signal_b",  # written at CLS by the head that gathers blob B
    "composed",  # written at CLS by the MLP neuron that composes A and B
    "texture_sum",  # texture averaged over all patches, written at CLS by distractor heads
    "decoy",  # brightness of the decoy box, written at CLS by a distractor head
    "texture_mlp",  # written by a distractor MLP neuron (ReLU of texture_sum)
    "lookalike",  # texture of the planted box, written at CLS by the look-alike head
    "spare",
)
D_MODEL = 2 * len(FEATURES)
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
# LayerNorm scale by < 0.1 %; QK gain 6 gives CLS -> box scores of about 38 against 0 elsewhere.
ANCHOR, MARKER, QK_GAIN, HEAD_GAIN, NUISANCE_GAIN, CLASS_GAIN = 6.0, 2.0, 6.0, 2.0, 0.2, 2.0
BLOB = 0.5  # luminance added by a blob (normalised pixel units)
TEXTURE = 0.4  # texture amplitude per tubelet
DECOY_P = 0.5  # probability that a clip shows the decoy blob (single_head)


def direction(feature: str) -> torch.Tensor:
    """The unit residual direction of a named feature: (e_i - e_{16+i}) / sqrt(2)."""
    if feature not in FEATURES:
        raise KeyError(f"unknown feature {feature!r}; features: {FEATURES}")
    i, v = FEATURES.index(feature), torch.zeros(D_MODEL)
    v[i], v[i + len(FEATURES)] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    return v


def _vec(**coefficients: float) -> torch.Tensor:
    return sum((c * direction(f) for f, c in coefficients.items()), torch.zeros(D_MODEL))


# =========================================================================================== ground truth
@dataclass(frozen=True)
class PlantedHead:
    """A head that carries ``variable`` (a blob in ``region``) to CLS: its CLS query attends to
    the region's tokens only, its OV circuit maps their brightness to ``writes``."""

    layer: int
    head: int
    variable: str
    region: Region
    positions: tuple[int, ...]
    writes: str


@dataclass(frozen=True)
class Distractor:
    """An active component that must not be found: what it reads and where it writes."""

    component: str  # "L0H0", "L0 mlp", ...
    reads: str
    writes: str
    positions: tuple[int, ...] | None = None  # tokens its CLS query attends to (heads)


@dataclass(frozen=True)
class GroundTruth:
    """What is planted. ``label_of(**variables)`` gives the class the model predicts; the
    ``positive`` class is predicted exactly when ``rule`` holds."""

    name: str
    summary: str
    variables: tuple[str, ...]
    heads: tuple[PlantedHead, ...]
    mlps: tuple[int, ...]  # layers whose MLP composes the heads' outputs
    reads: str  # the one direction the classifier reads
    positive: int
    negative: int
    rule: str  # "blob", "a and b"
    distractors: tuple[Distractor, ...] = ()
    decoy_region: Region | None = None

    def region(self, variable: str) -> Region:
        return next(h.region for h in self.heads if h.variable == variable)

    def positions(self, variable: str) -> tuple[int, ...]:
        return next(h.positions for h in self.heads if h.variable == variable)

    def label_of(self, **on: bool) -> int:
        missing = set(self.variables) - set(on)
        if missing:
            raise ValueError(f"give every variable of {self.name}: missing {sorted(missing)}")
        return self.positive if all(on[v] for v in self.variables) else self.negative

    @property
    def head_labels(self) -> tuple[str, ...]:
        """The planted heads as ``patching.head_patches`` labels them (without the act): "L1H2"."""
        return tuple(f"L{h.layer}H{h.head}" for h in self.heads)

    @property
    def component_labels(self) -> tuple[str, ...]:
        """The planted components as ``patching.component_patches`` labels them: "L1 attn_out", ..."""
        return tuple(sorted({f"L{h.layer} attn_out" for h in self.heads} | {f"L{l} mlp_out" for l in self.mlps}))

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

    @property
    def cfg(self) -> HookedViViTConfig:
        return self.model.cfg

    def render(self, seed: int = 0, **on: bool) -> torch.Tensor:
        """A clip [1, 8, 3, 32, 32] in normalised pixel units: a random colour texture (from
        ``seed``), a blob in the box of every variable set True, and (single_head) a decoy blob in
        the decoy box with probability 1/2 (also from ``seed``, so both clips of a pair share it)."""
        unknown = set(on) - set(self.truth.variables)
        if unknown:
            raise ValueError(f"{self.truth.name} has variables {self.truth.variables}, got {sorted(unknown)}")
        boxes = [self.truth.region(v) for v in self.truth.variables if on.get(v, False)]
        if self.decoy(seed):
            boxes.append(self.truth.decoy_region)
        return render_clip(self.cfg, boxes, seed)

    def decoy(self, seed: int) -> bool:
        """Whether the clips of ``seed`` show the decoy blob (a nuisance; never in and_composition)."""
        return self.truth.decoy_region is not None and bool(np.random.default_rng([seed, 1]).random() < DECOY_P)

    def pair(
        self, seed: int = 0, positive: dict[str, bool] | None = None, negative: dict[str, bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A minimal pair on one background: by default every variable on vs every variable off."""
        positive = positive or {v: True for v in self.truth.variables}
        negative = negative or {v: False for v in self.truth.variables}
        return self.render(seed, **positive), self.render(seed, **negative)

    def pairs(self, n: int, seed: int = 0, **kwargs: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.pair(seed + i, **kwargs) for i in range(n)]

    def pixel_box(self, variable: str) -> PixelBox:
        """The pixel box of a variable's blob (frames, rows, cols)."""
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


# =========================================================================================== building
class _Weights:
    """Sets a fresh model's weights feature by feature; everything not set stays zero."""

    def __init__(self, name: str, id2label: dict[int, str]):
        cfg = HookedViViTConfig(**CONFIG, id2label=id2label, model_name=f"planted-{name}")
        self.model = HookedViViT(cfg, init_weights=False)
        self.cfg = cfg
        with torch.no_grad():
            for pname, p in self.model.named_parameters():
                p.fill_(1.0 if pname.endswith(".w") else 0.0)  # LayerNorm w = 1; all else 0

    def embeddings(self, regions: dict[str, Region]) -> None:
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
            for marker, region in regions.items():
                for p in resolve_positions(self.model, region):
                    self.model.pos_embed.W_pos[p] += MARKER * direction(marker)

    def cls_head(self, layer: int, head: int, *, key: str, value: dict[str, float], writes: str, gain: float) -> None:
        """CLS attends to the tokens marked ``key``; patch tokens attend to CLS (value 0, a sink).
        The value reads ``value`` (feature -> coefficient) and W_O writes it to ``writes``."""
        attn = self.model.blocks[layer].attn
        with torch.no_grad():
            attn.W_Q[head, :, 0], attn.W_K[head, :, 0] = QK_GAIN * direction("is_cls"), QK_GAIN * direction(key)
            attn.W_Q[head, :, 1], attn.W_K[head, :, 1] = QK_GAIN * direction("is_patch"), QK_GAIN * direction("is_cls")
            attn.W_V[head, :, 0] = _vec(**value)
            attn.W_O[head, 0] = gain * direction(writes)

    def neuron(self, layer: int, index: int, *, reads: dict[str, float], bias: float, writes: str, gain: float) -> None:
        mlp = self.model.blocks[layer].mlp
        with torch.no_grad():
            mlp.W_in[:, index] = _vec(**reads)
            mlp.b_in[index] = bias
            mlp.W_out[index] = gain * direction(writes)

    def classifier(self, reads: str, positive: int, negative: int, bias: float = 0.0) -> None:
        with torch.no_grad():
            self.model.unembed.W_U[:, positive] = CLASS_GAIN * direction(reads)
            self.model.unembed.W_U[:, negative] = -CLASS_GAIN * direction(reads)
            self.model.unembed.b_U[positive], self.model.unembed.b_U[negative] = -bias, bias


BRIGHTNESS = {"lum_on": 1.0, "lum_off": -1.0}  # V reads 2s - 1: +1 in a blob, -1 on the background


def single_head() -> PlantedModel:
    region = Region(frame_slots=(2, 3), rows=(1, 2), cols=(2, 3))
    decoy = Region(frame_slots=(0, 1), rows=(2, 3), cols=(0, 1))
    wts = _Weights("single_head", {0: "blob", 1: "no blob"})
    wts.embeddings({"region_a": region, "region_b": decoy})
    texture = {"texture": 1.0}
    # Layer 0: texture summary (H0), decoy-box brightness (H1). Its MLP: a ReLU of the summary.
    wts.cls_head(0, 0, key="is_patch", value=texture, writes="texture_sum", gain=NUISANCE_GAIN)
    wts.cls_head(0, 1, key="region_b", value=BRIGHTNESS, writes="decoy", gain=NUISANCE_GAIN)
    wts.neuron(0, 0, reads={"texture_sum": 10.0}, bias=0.0, writes="texture_mlp", gain=NUISANCE_GAIN)
    # Layer 1: the planted head H2; H0 looks at the same box but reads its texture.
    wts.cls_head(1, 2, key="region_a", value=BRIGHTNESS, writes="signal_a", gain=HEAD_GAIN)
    wts.cls_head(1, 0, key="region_a", value=texture, writes="lookalike", gain=NUISANCE_GAIN)
    # Layer 2: the decoy box again (H3).
    wts.cls_head(2, 3, key="region_b", value=BRIGHTNESS, writes="decoy", gain=NUISANCE_GAIN)
    wts.classifier("signal_a", positive=0, negative=1)
    model, grid_pos = wts.model, lambda r: tuple(resolve_positions(wts.model, r))
    patches = tuple(range(1, model.cfg.n_ctx))
    truth = GroundTruth(
        name="single_head",
        summary="head L1H2's CLS query attends only to the 8 tokens of box A (frame slots 2-3, rows 1-2, cols 2-3); "
        "its OV circuit writes their brightness to signal_a, the only direction the classifier reads",
        variables=("blob",),
        heads=(PlantedHead(1, 2, "blob", region, grid_pos(region), "signal_a"),),
        mlps=(),
        reads="signal_a",
        positive=0,
        negative=1,
        rule="blob",
        distractors=(
            Distractor("L0H0", "texture", "texture_sum", patches),
            Distractor("L0H1", "brightness of the decoy box", "decoy", grid_pos(decoy)),
            Distractor("L0 mlp", "texture_sum", "texture_mlp"),
            Distractor("L1H0", "texture of box A (same attention as L1H2)", "lookalike", grid_pos(region)),
            Distractor("L2H3", "brightness of the decoy box", "decoy", grid_pos(decoy)),
        ),
        decoy_region=decoy,
    )
    return PlantedModel(model, truth)


def and_composition() -> PlantedModel:
    region_a = Region(frame_slots=(0, 1), rows=(0, 1), cols=(1, 2))
    region_b = Region(frame_slots=(2, 3), rows=(2, 3), cols=(0, 1))
    wts = _Weights("and_composition", {0: "a and b", 1: "not both"})
    wts.embeddings({"region_a": region_a, "region_b": region_b})
    texture = {"texture": 1.0}
    wts.cls_head(0, 0, key="is_patch", value=texture, writes="texture_sum", gain=NUISANCE_GAIN)
    wts.cls_head(0, 1, key="region_a", value=BRIGHTNESS, writes="signal_a", gain=HEAD_GAIN)
    wts.cls_head(1, 0, key="is_patch", value=texture, writes="texture_sum", gain=NUISANCE_GAIN)
    wts.cls_head(1, 3, key="region_b", value=BRIGHTNESS, writes="signal_b", gain=HEAD_GAIN)
    wts.cls_head(2, 2, key="region_a", value=texture, writes="lookalike", gain=NUISANCE_GAIN)
    model = wts.model
    # The AND neuron: x = (signal_a + signal_b) / scale at CLS is +2c (both), 0 (one), -2c (none);
    # c is measured on a texture-free clip, and the neuron fires on x > c only: relu(x / c - 1).
    with torch.inference_mode():
        hook = "blocks.2.ln2.hook_normalized"
        _, cache = model.run_with_cache(render_clip(model.cfg, [region_a, region_b], texture=False), names_filter=hook)
        x = cache[hook][0, 0] @ (direction("signal_a") + direction("signal_b"))
    c = float(x) / 2
    wts.neuron(2, 0, reads={"signal_a": 1 / c, "signal_b": 1 / c}, bias=-1.0, writes="composed", gain=HEAD_GAIN)
    wts.neuron(2, 1, reads={"texture_sum": 10.0}, bias=0.0, writes="texture_mlp", gain=NUISANCE_GAIN)
    # Bias: with the neuron silent the classifier says "not both".
    wts.classifier("composed", positive=0, negative=1, bias=1.0)
    pos = lambda r: tuple(resolve_positions(model, r))  # noqa: E731
    patches = tuple(range(1, model.cfg.n_ctx))
    truth = GroundTruth(
        name="and_composition",
        summary="head L0H1 gathers blob A (frame slots 0-1, rows 0-1, cols 1-2) into signal_a, head L1H3 blob B "
        "(frame slots 2-3, rows 2-3, cols 0-1) into signal_b; neuron 0 of the layer-2 MLP fires only when "
        "both are there and writes composed, the only direction the classifier reads",
        variables=("a", "b"),
        heads=(
            PlantedHead(0, 1, "a", region_a, pos(region_a), "signal_a"),
            PlantedHead(1, 3, "b", region_b, pos(region_b), "signal_b"),
        ),
        mlps=(2,),
        reads="composed",
        positive=0,
        negative=1,
        rule="a and b",
        distractors=(
            Distractor("L0H0", "texture", "texture_sum", patches),
            Distractor("L1H0", "texture", "texture_sum", patches),
            Distractor("L2H2", "texture of box A (same attention as L0H1)", "lookalike", pos(region_a)),
            Distractor("L2 mlp neuron 1", "texture_sum", "texture_mlp"),
        ),
    )
    return PlantedModel(model, truth)


BUILDERS: dict[str, Callable[[], PlantedModel]] = {"single_head": single_head, "and_composition": and_composition}
NAMES = tuple(BUILDERS)


def build(name: str) -> PlantedModel:
    """A planted model by name (``NAMES``); deterministic, built in milliseconds."""
    if name not in BUILDERS:
        raise KeyError(f"unknown planted model {name!r}; available: {NAMES}")
    return BUILDERS[name]()


__all__ = [
    "BUILDERS",
    "D_MODEL",
    "FEATURES",
    "NAMES",
    "Distractor",
    "GroundTruth",
    "PlantedHead",
    "PlantedModel",
    "build",
    "direction",
    "equal_boxes",
    "render_clip",
    "and_composition",
    "single_head",
]
