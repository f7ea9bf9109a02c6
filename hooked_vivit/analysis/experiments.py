"""The reference paper's experiments, one function each, returning small dataclasses whose
``to_json()`` is their part of results.json (figures are drawn from that in hooked_vivit.analysis.report).

positive = the clip with the outcome of interest (strike), negative = its minimal-pair twin
(gutter). "clean" is the positive run, "corrupted" the negative run, as in the paper's denoising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int

from hooked_vivit.causal import patching, statistics
from hooked_vivit.causal.ablation import (
    PixelBox,
    ablate_pixel_mask,
    ablate_pixels,
    token_pixel_mask,
    topk_table,
)
from hooked_vivit.causal.logit_attribution import (  # noqa: F401  (part of this module's API)
    POOLER_DLA_HOOKS,
    POOLER_OUTPUT,
    class_direction,
    cls_row_and_values,
    is_attentive,
    layer_readout,
    layer_readout_name,
    readout,
    readout_attention,
    readout_hook,
    readout_layers,
    readout_name,
    readout_positions,
    readout_row,
    token_dla,
    uses_pattern_rows,
)
from hooked_vivit.causal.metrics import LogitDiffRecovery, SignalRecovery
from hooked_vivit.causal.probes import (
    CrossValidatedProbe,
    NestedProbe,
    cross_validated_probe,
    nested_cross_validated_probe,
)
from hooked_vivit.labels import top_k

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def _names(n_layers: int, kinds: Sequence[str] = KINDS) -> list[str]:
    return [f"blocks.{l}.hook_{k}" for k in kinds for l in range(n_layers)]


# ------------------------------------------------------------------------------ shared runs
# analyze and study run each clip of a pair once, caching only what the experiments read; every
# experiment takes those runs (``runs=`` / ``run=``) and, without them, makes its own.
@dataclass
class ClipRun:
    """One unpatched run of one clip: logits [1, n_classes] and the cached activations (batch 1)."""

    logits: torch.Tensor
    cache: dict[str, torch.Tensor]


@dataclass
class PairRuns:
    """The clean (positive) and corrupted (negative) run of a pair."""

    clean: ClipRun
    corrupted: ClipRun


def _last(model: HookedVideoTransformer) -> str:
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def delta_hooks(model: HookedVideoTransformer) -> list[str]:
    """(a), and the probes' resid_pre of every layer and last resid_post (and V-JEPA 2's pooled vector)."""
    return _names(model.cfg.n_layers) + ([POOLER_OUTPUT] if is_attentive(model) else [])


def component_kinds(model: HookedVideoTransformer) -> tuple[str, ...]:
    """The block outputs that write to the residual stream, in forward order: attn_out and mlp_out,
    and TimeSformer's temporal attention (hook_temporal_attn_out) before them."""
    temporal = "blocks.0.hook_temporal_attn_out" in model.hook_dict
    return ("temporal_attn_out", "attn_out", "mlp_out") if temporal else ("attn_out", "mlp_out")


def recovery_hooks(model: HookedVideoTransformer) -> list[str]:
    """(b): the clean components, the corrupted residual stream each patched batch starts from, the last
    resid_post (and the readout, where it is not the last resid_post: V-JEPA 2's pooled vector)."""
    L = model.cfg.n_layers
    return list(dict.fromkeys(_names(L, (*component_kinds(model), "resid_pre")) + [_last(model), readout_hook(model)]))


def dla_hooks(model: HookedVideoTransformer) -> list[str]:
    """(c), (d) and the outcome signal: v, the readout's attention row of every layer (the CLS query row,
    computed beside the fused attention; every row under mean pooling or TimeSformer's per-frame
    attention), the final LayerNorm's scale, the last resid_post."""
    L = model.cfg.n_layers
    if is_attentive(model):  # V-JEPA 2: the pooler's cross-attention (pooler_token_dla), no encoder pattern
        return [*POOLER_DLA_HOOKS, POOLER_OUTPUT, _last(model)]
    rows = "hook_pattern_rows" if uses_pattern_rows(model) else "hook_pattern"
    return (
        [f"blocks.{l}.attn.hook_v" for l in range(L)]
        + [f"blocks.{l}.attn.{rows}" for l in range(L)]
        + ["ln_final.hook_scale", _last(model)]
    )


def analysis_hooks(model: HookedVideoTransformer) -> list[str]:
    """Every hook analyze and study read from the unpatched runs."""
    return list(dict.fromkeys(delta_hooks(model) + recovery_hooks(model) + dla_hooks(model)))


def run_clip(model: HookedVideoTransformer, pixel_values: torch.Tensor, names: Sequence[str]) -> ClipRun:
    """One plain (fused-attention) forward of the first clip of ``pixel_values``, caching ``names``.

    A ``blocks.{l}.attn.hook_pattern_rows`` name gets the CLS query's row, [1, heads, 1, n_ctx],
    computed after the run from the cached CLS query and keys with the arithmetic of
    ``hook_pattern_rows`` (fp32 softmax of q·kᵀ / sqrt(d_head)), so equal to the CLS row of
    ``hook_pattern``. Hooking ``hook_pattern_rows`` itself would recompute the CLS row of z from
    those rows during the run, and the other experiments would then read a residual stream that
    differs (by rounding) from a plain forward's."""
    names = list(dict.fromkeys(names))
    row_layers = [int(n.split(".")[1]) for n in names if n.endswith("hook_pattern_rows")]
    cache: dict[str, torch.Tensor] = {}
    queries: dict[int, torch.Tensor] = {}

    def keep(act, hook):
        cache[hook.name] = act.detach()

    def keep_cls_query(act, hook):
        queries[int(hook.name.split(".")[1])] = act[:, :1].detach().clone()  # [1, 1, heads, d_head]

    keys = {f"blocks.{l}.attn.hook_k" for l in row_layers}
    hooks = [(n, keep) for n in dict.fromkeys([n for n in names if not n.endswith("hook_pattern_rows")] + sorted(keys))]
    hooks += [(f"blocks.{l}.attn.hook_q", keep_cls_query) for l in row_layers]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        logits = model(pixel_values[:1])
        for l in row_layers:
            attn = model.blocks[l].attn
            k = (
                cache[f"blocks.{l}.attn.hook_k"]
                if f"blocks.{l}.attn.hook_k" in names
                else cache.pop(f"blocks.{l}.attn.hook_k")
            )
            cache[f"blocks.{l}.attn.hook_pattern_rows"] = attn.row_pattern(
                queries[l].transpose(1, 2), k.transpose(1, 2)
            )
    return ClipRun(logits, cache)


def pair_runs(
    model: HookedVideoTransformer, positive: torch.Tensor, negative: torch.Tensor, names: Sequence[str] | None = None
) -> PairRuns:
    """The two unpatched runs of a pair (one forward per clip), caching ``names`` (default: analysis_hooks)."""
    names = analysis_hooks(model) if names is None else names
    return PairRuns(run_clip(model, positive, names), run_clip(model, negative, names))


# ---------------------------------------------------------------------------------------- (a)
@dataclass(frozen=True)
class ActivationDeltas:
    """(a) of one pair: ||a(positive) - a(negative)|| per layer for each kind of KINDS."""

    layers: list[int]
    readout: str  # where the classifier reads: "CLS", "first token" or "token mean" (readout_name)
    # kind -> per layer, L2 norm of the difference at the readout / mean over tokens of the per-token norms
    # (residual-stream units; 0 = the two clips agree there)
    at_readout: dict[str, list[float]]
    token_mean: dict[str, list[float]]
    # V-JEPA 2 only: {"readout", "hook", "norm"} of the pooled vector's difference (the classifier's input)
    readout_vector: dict | None = None

    def to_json(self) -> dict:
        """results.json's "deltas" (the readout's numbers under "cls", whatever the readout)."""
        out = {"layers": self.layers, "readout": self.readout, "cls": self.at_readout, "tokens": self.token_mean}
        return out if self.readout_vector is None else {**out, "readout_vector": self.readout_vector}


def activation_deltas(
    model: HookedVideoTransformer, positive: torch.Tensor, negative: torch.Tensor, *, runs: PairRuns | None = None
) -> ActivationDeltas:
    """L2 norm of (positive - negative) per layer, for resid_pre/post, attn_out and mlp_out: at the
    readout ("cls": the CLS token, or the token mean; see layer_readout_name), and averaged over all
    tokens (the mean of per-token norms). V-JEPA 2, whose attentive pooler reads every token of the
    last layer only: "cls" is the token mean per layer, and ``readout_vector`` the norm of the pooled
    vector's own difference (what the classifier reads)."""
    L = model.cfg.n_layers
    runs = runs or pair_runs(model, positive, negative, delta_hooks(model))
    cp, cn = runs.clean.cache, runs.corrupted.cache
    at_readout, token_mean = {}, {}
    for kind in KINDS:
        deltas = torch.stack(
            [(cp[f"blocks.{l}.hook_{kind}"] - cn[f"blocks.{l}.hook_{kind}"])[0].float() for l in range(L)]
        )
        norms = deltas.norm(dim=-1)  # [L, n_ctx]
        at_readout[kind] = layer_readout(deltas, model).norm(dim=-1).tolist()
        token_mean[kind] = norms.mean(1).tolist()
    readout_vector = None
    if is_attentive(model):
        diff = (cp[POOLER_OUTPUT] - cn[POOLER_OUTPUT])[0, 0].float()
        readout_vector = {"readout": readout_name(model), "hook": POOLER_OUTPUT, "norm": float(diff.norm())}
    return ActivationDeltas(list(range(L)), layer_readout_name(model), at_readout, token_mean, readout_vector)


# ---------------------------------------------------------------------------------------- (b)
# name -> (positions the last resid_post is read at, SignalRecovery kind); formulas in hooked_vivit.causal.metrics.
RECOVERY_VARIANTS = {
    "cls_projection": (0, "projection"),
    "token_projection": (None, "projection"),
    "norm_ratio_cls": (0, "norm_ratio"),
    "norm_ratio_tokens": (None, "norm_ratio"),
    "norm_recovery": (0, "norm"),
}
# The normalised logit-difference recovery (hooked_vivit.causal.metrics.LogitDiffRecovery): read from the logits of
# the same patched runs, so it costs no forward; present where the model has a logit per outcome.
LOGIT_DIFF_RECOVERY = "logit_diff"
# The headline where the model has no logit per outcome (the representation variant; also the earlier constant).
HEADLINE_RECOVERY = "cls_projection"
HEADLINE_REASON = (
    "the headline is cls_projection: the classifier reads only the CLS token, and a projection counts only movement "
    "toward the positive run (1 = restored, above 1 = overshoot along the same direction), so it is the one variant "
    "that measures restoring what the classifier reads; norm ratios count movement in any direction, so a norm ratio "
    "above 100 % does not show that a component is sufficient (the patched run can move away from the clean one)"
)
LOGIT_DIFF_REASON = (
    "the headline is logit_diff, the normalised logit-difference recovery (m(patched) - m(corrupted)) / (m(clean) - "
    "m(corrupted)) with m = logit(positive outcome) - logit(negative outcome), the measure of the activation-patching "
    "literature (Zhang & Nanda 2024; Heimersheim & Nanda 2024): it asks whether a component restores the model's "
    "outcome decision, which the representation variants do not (a component can restore the CLS difference without "
    "the decision, e.g. a head whose output an MLP must compose with another's: cls_projection ranks the planted AND "
    "composition's MLP last, logit_diff gives it 100 % and each head 0 %)"
)
NO_OUTCOME_LOGITS = (
    "this model has no logit per outcome (no --outcome-classes, and its labels do not name the pair's outcomes), so "
    "whether a component restores the outcome decision (logit-difference recovery) cannot be asked; what remains "
    "answerable is which components restore the last layer's representation difference (cls_projection, the headline "
    "here, and the other representation variants), not whether that difference is used for the outcome"
)
# The question each recovery variant answers (the report labels every variant with it).
RECOVERY_QUESTIONS = {
    LOGIT_DIFF_RECOVERY: "does patching this component restore the model's outcome decision "
    "(positive-minus-negative outcome logit difference)?",
    "cls_projection": "how much of the last layer's difference at the readout, along the clean-minus-corrupted "
    "direction, does this component restore (the representation the classifier reads)?",
    "token_projection": "how much of the last layer's difference over every token, along the clean-minus-corrupted "
    "direction, does this component restore?",
    "norm_ratio_cls": "how far does this component move the readout, in any direction (movement, not restoration)?",
    "norm_ratio_tokens": "how far does this component move every token, in any direction (movement, not restoration)?",
    "norm_recovery": "how much closer to the clean readout does this component bring the run (at most 1)?",
}


def headline_for(has_outcome_logits: bool) -> tuple[str, str]:
    """The headline recovery variant of a run and why: logit_diff where the model has a logit per outcome,
    else cls_projection (with what remains answerable)."""
    if has_outcome_logits:
        return LOGIT_DIFF_RECOVERY, LOGIT_DIFF_REASON
    return HEADLINE_RECOVERY, HEADLINE_REASON + "; " + NO_OUTCOME_LOGITS


def outcome_class_pair(model: HookedVideoTransformer, classes: Sequence[int | str] | None) -> tuple[int, int] | None:
    """(positive, negative) outcome class indices from indices or class names (None stays None)."""
    if classes is None:
        return None
    if len(classes) != 2:
        raise ValueError(f"outcome classes: give two classes (positive, negative), got {list(classes)!r}")
    label2id = {str(k): int(v) for k, v in (model.cfg.label2id or {}).items()}
    n = model.cfg.n_classes
    out = []
    for c in classes:
        if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
            if c not in label2id:
                import difflib

                close = difflib.get_close_matches(c, list(label2id), n=3)
                raise ValueError(
                    f"outcome class {c!r} is not one of the model's labels"
                    + (f"; nearest: {close}" if close else f"; the labels are {sorted(label2id)[:12]}")
                )
            c = label2id[c]
        c = int(c)
        if not 0 <= c < n:
            raise ValueError(f"outcome class {c} is out of range for a model with {n} classes")
        out.append(c)
    if out[0] == out[1]:
        raise ValueError(f"outcome classes: the positive and negative class must differ, got {out[0]} twice")
    return out[0], out[1]


def recovery_variants(
    patched: torch.Tensor,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    hook: str = "activation",
    *,
    readout: int | str = 0,
) -> dict[str, list[float]]:
    """Every RECOVERY_VARIANTS value of each row of ``patched`` [n, pos, d] (clean, corrupt [1, pos, d]);
    the "cls" variants (position 0) are read at ``readout`` (0, or "pooled" for a mean-pooling model)."""
    out = {}
    for name, (positions, kind) in RECOVERY_VARIANTS.items():
        positions = readout if positions == 0 else positions
        metric = SignalRecovery(hook, clean, corrupt, positions=positions, kind=kind)
        out[name] = metric(None, {hook: patched}).tolist()
    return out


class RecoveryVariants:
    """A patching metric giving, per patched run, every RECOVERY_VARIANTS value and then projection
    and norm_recovery read at ``positions`` ([rows, len(columns)]): one sweep measures them all.
    ``readout="pooler"`` (V-JEPA 2; also allowed as ``positions``): read at the pooler's output
    instead (POOLER_OUTPUT, its one position), whose clean and corrupt values are ``pooled``.
    ``logit_diff`` (a LogitDiffRecovery): a first column "logit_diff", read from the patched runs' logits."""

    def __init__(
        self,
        hook: str,
        clean: torch.Tensor,
        corrupt: torch.Tensor,
        positions: Any = 0,
        readout: int | str = 0,
        pooled: tuple[torch.Tensor, torch.Tensor] | None = None,
        logit_diff: LogitDiffRecovery | None = None,
    ):
        def recovery(p: Any, kind: str) -> SignalRecovery:
            if isinstance(p, str) and p == "pooler":
                if pooled is None:
                    raise ValueError(f"reading the pooler's output needs pooled=(clean, corrupt) {POOLER_OUTPUT}")
                return SignalRecovery(POOLER_OUTPUT, *pooled, positions=0, kind=kind)
            return SignalRecovery(hook, clean, corrupt, positions=p, kind=kind)

        self.columns = [*RECOVERY_VARIANTS, "projection", "norm"]
        # the "cls" variants (position 0) are read at the readout (0, "pooled" for a mean-pooling model, "pooler")
        self.metrics = [recovery(readout if p == 0 else p, k) for p, k in RECOVERY_VARIANTS.values()]
        self.metrics += [recovery(positions, k) for k in ("projection", "norm")]
        if logit_diff is not None:
            self.columns.insert(0, LOGIT_DIFF_RECOVERY)
            self.metrics.insert(0, logit_diff)
        self.hooks = tuple(dict.fromkeys(h for m in self.metrics for h in m.hooks))

    def __call__(self, logits: Any, activations: dict) -> torch.Tensor:
        return torch.stack([m(logits, activations) for m in self.metrics], -1)


def component_recovery(
    model: HookedVideoTransformer,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    positions: Any = None,
    runs: PairRuns | None = None,
    outcome_classes: Sequence[int | str] | None = None,
    heads: bool = False,
) -> dict:
    """Denoising, one component at a time (each layer's attention block and MLP block output, all
    tokens, positive into negative run; TimeSformer's temporal attention output too, key
    "temporal_attn"), measured on the last layer's resid_post in every variant of
    RECOVERY_VARIANTS side by side ("variants"; formulas in hooked_vivit.causal.metrics). "projection" and
    "norm" keep the earlier keys: projection and norm_recovery read at ``positions`` (0 = CLS; by
    default the readout, see readout_positions). The "cls" variants are read at the readout; V-JEPA 2's
    is the pooler's output, recomputed by the patched run (its pooler runs on the patched last layer).
    The batched engine (hooked_vivit.causal.patching.run_patches) runs each layer's two patches as one
    batch started at that layer, from the corrupted run's residual stream.

    ``outcome_classes=(positive, negative)`` (indices or label names), where the model has a logit per
    outcome: the normalised logit-difference recovery ("logit_diff", LogitDiffRecovery) too, read from
    the logits of the same patched runs (no extra forward), and the headline. ``heads=True`` (with
    outcome classes): logit_diff of every head's z patched alone ("heads", [L][H]; one clean forward
    caching z where ``runs`` lacks it, and the head patches' batched forwards). "headline" names the
    headline variant of this run, "questions" what each variant asks."""
    L = model.cfg.n_layers
    last = _last(model)
    runs = runs or pair_runs(model, positive, negative, recovery_hooks(model))
    clean, corrupt = runs.clean.cache, runs.corrupted.cache
    positions = readout_positions(model) if positions is None else positions
    at = readout_name(model) if positions == readout_positions(model) else str(positions)
    kinds = component_kinds(model)
    pooled = (clean[POOLER_OUTPUT], corrupt[POOLER_OUTPUT]) if is_attentive(model) else None
    classes = outcome_class_pair(model, outcome_classes)
    logit_diff, undefined = None, None
    if classes is not None:
        try:
            logit_diff = LogitDiffRecovery(*classes, runs.clean.logits[:1], runs.corrupted.logits[:1])
        except ValueError as e:  # the two clips' logit differences are equal: nothing to recover
            undefined = str(e)
    headline, reason = headline_for(logit_diff is not None)
    if undefined:
        reason = f"{HEADLINE_REASON}; logit-difference recovery is undefined on this pair: {undefined}"
    metric = RecoveryVariants(
        last,
        clean[last],
        corrupt[last],
        positions,
        readout=readout_positions(model),
        pooled=pooled,
        logit_diff=logit_diff,
    )
    sweep = patching.denoise(
        model,
        patching.component_patches(model, kinds),
        clean_cache=clean,
        corrupted=negative[:1],
        metric=metric,
        target_run=(runs.corrupted.logits, corrupt),
        progress=False,
    )
    values = sweep.per_example[:, 0]  # [len(kinds) L, columns], rows (kinds) per layer
    out: dict = {
        "layers": list(range(L)),
        "measured_at": last,
        "positions": at,
        "readout": readout_name(model),
        "headline": headline,
        "headline_reason": reason,
        "outcome_classes": None,
        "variants": {},
    }
    if classes is not None:
        names = [model.cfg.id2label.get(c, str(c)) for c in classes]
        out["outcome_classes"] = {
            "positive": classes[0],
            "negative": classes[1],
            "names": names,
            # m = logit(positive) - logit(negative) of the unpatched runs (the normalisation)
            "logit_diff_clean": None if logit_diff is None else logit_diff.clean_value,
            "logit_diff_corrupted": None if logit_diff is None else logit_diff.corrupt_value,
            "undefined": undefined,
        }
    keys = [k.removesuffix("_out") for k in kinds]  # "temporal_attn", "attn", "mlp"
    split = lambda v: {key: v[j :: len(kinds)] for j, key in enumerate(keys)}  # noqa: E731
    for j, name in enumerate(metric.columns):
        if name in RECOVERY_VARIANTS or name == LOGIT_DIFF_RECOVERY:
            out["variants"][name] = split(values[:, j].tolist())
        else:
            out[name] = split(values[:, j].tolist())
    out["questions"] = {name: RECOVERY_QUESTIONS[name] for name in out["variants"]}
    if heads and logit_diff is not None:
        out["heads"] = head_logit_diff_recovery(model, positive, negative, logit_diff, runs)
    return out


def head_logit_diff_recovery(
    model: HookedVideoTransformer,
    positive: torch.Tensor,
    negative: torch.Tensor,
    metric: LogitDiffRecovery,
    runs: PairRuns,
) -> dict:
    """logit_diff of each head's z (all tokens) patched alone from the positive into the negative run,
    through the batched engine: {"act": "z", "variant": "logit_diff", "labels", "values": [L][H]}."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    z = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    clean = runs.clean.cache
    if any(n not in clean for n in z):
        clean = {**clean, **run_clip(model, positive, z).cache}
    sweep = patching.denoise(
        model,
        patching.head_patches(model, "z"),
        clean_cache=clean,
        corrupted=negative[:1],
        metric=metric,
        target_run=(runs.corrupted.logits, runs.corrupted.cache),
        progress=False,
    )
    values = sweep.per_example[:, 0].view(L, H)
    return {
        "act": "z",
        "variant": LOGIT_DIFF_RECOVERY,
        "labels": [[f"L{l}H{h}" for h in range(H)] for l in range(L)],
        "values": values.tolist(),
    }


# ---------------------------------------------------------------------------------------- (c)
# class_direction, cls_row_and_values and token_dla live in hooked_vivit.causal.logit_attribution (the viewer uses them too).


# ---------------------------------------------------------------------------------------- (d)
def token_masks(model: HookedVideoTransformer, masks: np.ndarray) -> torch.Tensor:
    """Per-token share of pixels inside an object mask [T, H, W] -> [n_ctx] (a CLS token gets 0)."""
    t, h, w = model.cfg.tubelet_size
    grid = model.cfg.grid
    m = torch.from_numpy(np.asarray(masks, dtype=np.float32))
    # Only the pixels some token sees (sizes need not be tubelet multiples).
    m = m[grid.covered_frames.start : grid.covered_frames.stop, grid.covered_rows, grid.covered_cols]
    pooled = m.reshape(grid.n_frame_slots, t, grid.n_rows, h, grid.n_cols, w).mean(dim=(1, 3, 5))
    return torch.cat([torch.zeros(grid.n_prefix), pooled.flatten()])


def cls_attention(
    model: HookedVideoTransformer,
    pixel_values: torch.Tensor,
    layers: Sequence[int] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    *,
    run: ClipRun | None = None,
    differing: torch.Tensor | None = None,
) -> dict:
    """Readout attention (the CLS query row; under mean pooling the mean query row; V-JEPA 2: the
    pooler query's cross-attention, layers ["pooler"]; see readout_attention) of every head of the
    chosen layers (default readout_layers) on the token grid, and with object masks
    the share of each head's attention to patch tokens that lands on each object's tokens. ``run``:
    a ClipRun holding the dla_hooks of the clip (then no forward runs). ``differing`` (bool
    [n_patches], differing_tokens of a pair): each object's share of the tokens that differ between
    the clips beside its share of the grid (the base rate a share is measured against, two ways)."""
    cfg = model.cfg
    n_prefix = cfg.grid.n_prefix
    layers = readout_layers(model) if layers is None else list(layers)
    if run is not None:
        maps = torch.stack([readout_row(model, run.cache, l) for l in layers]).float()
    else:
        with torch.inference_mode():
            maps = readout_attention(model, pixel_values, layers)  # [layers, heads, P]
    out: dict = {
        "layers": layers,
        "readout": readout_name(model),
        "attention_to_cls": maps[..., 0].tolist() if n_prefix else None,
        "grid": cfg.grid.unflatten(maps)[1].tolist(),
    }
    if masks:
        patch_attn = maps[..., n_prefix:]
        total = patch_attn.sum(-1)
        shares = {}
        for name, mask in masks.items():
            tm = (token_masks(model, mask)[n_prefix:] > 0).float()
            shares[name] = ((patch_attn * tm).sum(-1) / total).tolist()
            shares[f"{name} (token share of the grid)"] = float(tm.mean())
            if differing is not None and bool(differing.any()):
                d = differing.to(tm.device)
                shares[f"{name} (token share of the differing tokens)"] = float(tm[d].mean())
        out["object_share"] = shares
    return out


# ---------------------------------------------------------------------------------------- (e)
def _logits(model: HookedVideoTransformer, x: torch.Tensor) -> torch.Tensor:
    """The logits of ``x``; where they read only token 0, the last block computes only that row."""
    return model(x, query_positions=[0]) if model.readout_row_suffices() else model(x)


def logits_and_readout(model: HookedVideoTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``x`` and the readout of readout_hook ([batch, d_model]: the last resid_post at
    token 0 or its token mean; V-JEPA 2's pooler output). Where the logits read token 0 alone, the
    last block computes only that row (its keys and values from every token)."""
    if model.readout_row_suffices():
        row = model(x, stop_at_layer=model.cfg.n_layers, query_positions=[0])  # [batch, 1, d_model]
        return model.readout_logits(row, [0]), row[:, 0]
    hook = readout_hook(model)
    logits, cache = model.run_with_cache(x, names_filter=[hook])
    return logits, readout(cache[hook], model)


@dataclass(frozen=True)
class RegionAblation:
    """(e): the top classes before and after ablating the pixel box around the tokens of greatest |DLA|."""

    tokens: list[int]  # the chosen tokens (indices into the token sequence) and the box of pixels covering them
    box: PixelBox
    mode: str  # how the box was ablated (ablate_pixels: "zero", ...)
    # the top-k classes of the unablated clip: rows {class, name, before, after, delta} in logits (topk_table)
    table: list[dict]
    top1_before: str  # the top class's name, before and after
    top1_after: str
    # the patch tokens the box covers (more than ``tokens`` when they are not a box), the top class's
    # logit change (after - before) and its ratio to the logit before
    box_tokens: int | None = None
    class_index: int | None = None
    change: float | None = None
    relative_change: float | None = None
    # with the pair's negative clip: the same change for control boxes matched on size and on share of
    # the pair's pixel difference (statistics.matched_boxes; found may fall short of requested), their
    # mean and sd, and the Monte-Carlo p-value (k + 1)/(n + 1) of |change| (None: no controls found)
    controls: dict | None = None
    control_mean: float | None = None
    control_std: float | None = None
    control_p: float | None = None
    # Besag-Clifford's stopping record when the controls were evaluated sequentially (control_changes)
    sequential: dict | None = None
    # the tokens are chosen on this clip and tested on it: descriptive, not a test of a hypothesis
    descriptive: bool = True

    def to_json(self) -> dict:
        """results.json's "region_ablation" (before the pipeline's caption fields)."""
        return {
            "tokens": self.tokens,
            "box": dict(self.box.__dict__),
            "mode": self.mode,
            "table": self.table,
            "top1_before": self.top1_before,
            "top1_after": self.top1_after,
            "box_tokens": self.box_tokens,
            "class": self.class_index,
            "change": self.change,
            "relative_change": self.relative_change,
            "controls": self.controls,
            "control_mean": self.control_mean,
            "control_std": self.control_std,
            "control_p": self.control_p,
            "sequential": self.sequential,
            "descriptive": self.descriptive,
        }


def control_changes(
    evaluate: Callable[[int, int], torch.Tensor],
    observed: Sequence[float],
    n: int,
    *,
    stop_after: int | None = None,
    batch: int = 20,
) -> tuple[torch.Tensor, list[float | None], list[dict | None]]:
    """The control boxes' changes [used, signals] (float64, CPU), evaluated ``batch`` boxes at a time by
    ``evaluate(i0, i1)`` -> [i1 - i0, signals], and one p-value per signal of the ``observed`` changes.
    ``stop_after`` = h: Besag & Clifford's sequential test (statistics.sequential_monte_carlo_p):
    evaluation stops once every signal has h controls at least as extreme, so a clear null costs about
    h / p boxes and a clear effect all ``n`` (p down to 1/(n + 1)); None: all ``n`` boxes, p = (k + 1)/(n + 1).
    Returns the changes, the p-values and (sequential) each signal's stopping record."""
    rows: list[torch.Tensor] = []
    used = 0
    while used < n:
        rows.append(evaluate(used, min(used + batch, n)).double().cpu())
        used += len(rows[-1])
        if stop_after is not None:
            done = torch.cat(rows)
            hits = (done.abs() >= torch.tensor(observed, dtype=torch.float64).abs()[None]).sum(0)
            if bool((hits >= stop_after).all()):
                break
    ctl = torch.cat(rows) if rows else torch.empty(0, len(observed), dtype=torch.float64)
    if not len(ctl):
        return ctl, [None] * len(observed), [None] * len(observed)
    if stop_after is None:
        return ctl, [statistics.monte_carlo_p(o, ctl[:, j]) for j, o in enumerate(observed)], [None] * len(observed)
    seq = [statistics.sequential_monte_carlo_p(o, ctl[:, j], h=stop_after) for j, o in enumerate(observed)]
    if used < n:  # stopped early: each signal's p stands at its own stopping point (checked, not assumed)
        assert all(q.stopped_early for q in seq)
    return ctl, [q.p for q in seq], [{**q.to_json(), "n_max": n, "h": stop_after} for q in seq]


def region_ablation(
    model: HookedVideoTransformer,
    pixel_values: torch.Tensor,
    dla: dict,
    *,
    n_tokens: int = 8,
    k: int = 6,
    mode: str = "zero",
    before: torch.Tensor | None = None,
    negative: torch.Tensor | None = None,
    n_controls: int = 20,
    seed: int = 0,
    stop_after: int | None = None,
) -> RegionAblation:
    """Top-k classes before and after ablating (zeroing, by default) the pixel box around the
    tokens of greatest absolute direct logit attribution (the paper's Table 1). ``before``: the
    unablated clip's logits [1, n_classes], when already computed. With ``negative`` (the pair's other
    clip), the top class's logit change is compared with ``n_controls`` boxes matched on size and on
    share of the pair's pixel difference (statistics.matched_boxes), with a Monte-Carlo p-value."""
    n_prefix = model.cfg.grid.n_prefix
    scores = dla["terms"].sum((0, 1))[n_prefix:].abs()
    top = (scores.topk(min(n_tokens, len(scores))).indices + n_prefix).tolist()
    box = PixelBox.from_tokens(model.cfg.grid, top)
    ablated = ablate_pixels(pixel_values[:1], box, mode=mode)
    with torch.inference_mode():
        before = model(pixel_values[:1]) if before is None else before
        after = _logits(model, ablated)
    T, _, H, W = pixel_values.shape[1:]
    box_mask = np.zeros((T, H, W), dtype=bool)
    box_mask[box.t0 : box.t1, box.y0 : box.y1, box.x0 : box.x1] = True
    c = int(before[0].argmax())
    change = float(after[0, c].double() - before[0, c].double())
    b = float(before[0, c])
    extra: dict = {
        "box_tokens": int((token_masks(model, box_mask)[n_prefix:] > 0).sum()),
        "class_index": c,
        "change": change,
        "relative_change": change / b if b != 0 else None,
    }
    if negative is not None and mode in ("zero", "black"):  # the modes a pixel mask ablates
        matched = statistics.matched_boxes(
            box_mask, statistics.pixel_difference(pixel_values, negative), n_controls, seed=seed
        )
        batch = 16 if model.cfg.n_ctx <= 1024 else 2

        def evaluate(i0: int, i1: int) -> torch.Tensor:
            m = matched.masks[i0:i1]
            x = ablate_pixel_mask(pixel_values[:1].expand(len(m), *pixel_values.shape[1:]), m, mode=mode)
            with torch.inference_mode():
                return (_logits(model, x)[:, c].double() - before[0, c].double())[:, None]

        ctl, (p,), (seq,) = control_changes(evaluate, [change], matched.found, stop_after=stop_after, batch=batch)
        ctl = ctl[:, 0]
        extra.update(
            controls={
                **matched.to_json(),
                "used": len(ctl),
                "control_pixels_mean": float(matched.masks.reshape(matched.found, -1).sum(1).mean())
                if matched.found
                else None,
            },
            control_mean=float(ctl.mean()) if len(ctl) else None,
            control_std=float(ctl.std()) if len(ctl) > 1 else None,
            control_p=p,
            sequential=seq,
        )
    return RegionAblation(
        tokens=top,
        box=box,
        mode=mode,
        table=topk_table(before, after, model.cfg.id2label, k),
        top1_before=top_k(before, model.cfg.id2label, 1)[0][0].label,
        top1_after=top_k(after, model.cfg.id2label, 1)[0][0].label,
        **extra,
    )


# ------------------------------------------------------------------------- outcome-targeted (c, d, e)
@dataclass(frozen=True)
class DifferentialDLA:
    """Token DLA of the positive clip minus the negative clip's, both to one class (in logits)."""

    class_index: int  # the class c and its name
    class_name: str
    logit_difference: float  # logit_c(positive) - logit_c(negative)
    attention_total: float  # the sum of every term: the part of logit_difference the attention heads write
    terms: Float[torch.Tensor, "layer head token"]  # per (layer, head, source token); not in results.json
    # sums of terms: per head [layer][head]; from the CLS source (None: no CLS token); per patch token on the
    # grid [frame slot][row][col] over layers and heads; and per frame slot of |that grid|
    per_head: list[list[float]]
    cls_source: float | None
    heatmap: list[list[list[float]]]
    per_slot_abs: list[float]

    def to_json(self) -> dict:
        """Every field but ``terms``, under the keys results.json's "differential_dla" uses."""
        return {
            "class": self.class_index,
            "class_name": self.class_name,
            "logit_difference": self.logit_difference,
            "attention_total": self.attention_total,
            "per_head": self.per_head,
            "cls_source": self.cls_source,
            "heatmap": self.heatmap,
            "per_slot_abs": self.per_slot_abs,
        }


def differential_token_dla(
    model: HookedVideoTransformer,
    positive: torch.Tensor,
    negative: torch.Tensor,
    c: int,
    *,
    positive_dla: dict | None = None,
    negative_run: ClipRun | None = None,
) -> DifferentialDLA:
    """Token DLA of the positive clip minus that of the negative clip, per (layer, head, source token),
    both to class ``c``. Tokens whose pixels are alike in both clips need not cancel (attention and values
    change downstream of the first difference), so the difference is not confined to what the outcome
    changes. Its total is logit_c(positive) - logit_c(negative) minus the difference of the
    non-attention terms."""
    pos = positive_dla or token_dla(model, positive, c)
    neg = token_dla(model, negative, c, run=negative_run)
    terms = pos["terms"] - neg["terms"]
    cls_term, grid = model.cfg.grid.unflatten(terms.sum((0, 1)))
    return DifferentialDLA(
        class_index=c,
        class_name=pos["class_name"],
        logit_difference=pos["logit"] - neg["logit"],
        attention_total=float(terms.sum()),
        terms=terms,
        per_head=terms.sum(-1).tolist(),
        cls_source=float(cls_term) if model.cfg.grid.n_prefix else None,
        heatmap=grid.tolist(),
        per_slot_abs=grid.abs().sum((1, 2)).tolist(),
    )


@dataclass(frozen=True)
class Enrichment:
    """How much of a non-negative weight (attention, |attribution|) lands on an object's patch tokens."""

    share: Float[torch.Tensor, "*leading"]  # sum(w * on) / sum(w) per leading index of the weights (0..1)
    mean_share: float  # the mean of share
    base_rate: float  # the object's share of the patch tokens (what share would be without preference)
    enrichment: float | None  # mean_share / base_rate: 1.0 = no preference; None: the object has no tokens
    # Against the tokens that differ between the two clips (the matched null): the object's share of
    # those tokens, and mean_share over it (1.0 = no more than its share of what differs). None when no
    # differing tokens were given, or the object holds none of them.
    base_rate_differing: float | None = None
    enrichment_differing: float | None = None

    def to_json(self) -> dict:
        return {
            "share": self.share.tolist() if self.share.ndim else float(self.share),
            "mean_share": self.mean_share,
            "base_rate": self.base_rate,
            "enrichment": self.enrichment,
            "base_rate_differing": self.base_rate_differing,
            "enrichment_differing": self.enrichment_differing,
        }


def enrichment(
    weights: torch.Tensor | np.ndarray,
    on_object: torch.Tensor | np.ndarray,
    differing: torch.Tensor | np.ndarray | None = None,
) -> Enrichment:
    """Share of non-negative ``weights`` [..., n_patches] on the object's patch tokens (``on_object``,
    bool [n_patches]) beside the object's base rate (its share of the tokens) and their ratio:
    share = sum(w * on) / sum(w), base_rate = mean(on), enrichment = share / base_rate (1 = no
    preference for the object). ``share`` keeps the leading dims of ``weights``. With ``differing``
    (bool [n_patches]: the tokens whose pixels differ between the two clips), also the base rate
    among those tokens, base_rate_differing = |on and differing| / |differing|, and
    enrichment_differing = share / base_rate_differing: whether the weight prefers the object more
    than the object's share of what differs (an object that is most of the difference has an
    all-token enrichment far above 1 by that alone)."""
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    on = torch.as_tensor(np.asarray(on_object), dtype=torch.float64)
    if (w < 0).any():
        raise ValueError("enrichment needs non-negative weights (attention, or |attribution|)")
    base = float(on.mean())
    share = (w * on).sum(-1) / w.sum(-1).clamp_min(1e-30)
    mean_share = float(share.mean())
    base_d = enr_d = None
    if differing is not None:
        d = torch.as_tensor(np.asarray(differing), dtype=torch.bool)
        if int(d.sum()) > 0:
            base_d = float(on[d].sum()) / int(d.sum())
            enr_d = mean_share / base_d if base_d > 0 else None
    return Enrichment(share, mean_share, base, mean_share / base if base > 0 else None, base_d, enr_d)


def differing_tokens(model: HookedVideoTransformer, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """bool [n_patches]: the patch tokens that see any pixel that differs between the two clips."""
    diff = statistics.pixel_difference(positive, negative) > 0
    return token_masks(model, diff)[model.cfg.grid.n_prefix :] > 0


def object_token_masks(
    model: HookedVideoTransformer, masks: dict[str, np.ndarray], from_frame: int = 0
) -> dict[str, torch.Tensor]:
    """Per object, bool [n_patches]: patch tokens that see any of its pixels (from frame ``from_frame``)."""
    out = {}
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool).copy()
        m[:from_frame] = False
        out[name] = token_masks(model, m)[model.cfg.grid.n_prefix :] > 0
    return out


def object_masks_union(pair_masks: dict, from_frame: int = 0) -> dict[str, np.ndarray]:
    """Each object's pixels in either clip of a rendered pair, in frames from ``from_frame`` on."""
    out = {}
    for name in pair_masks["positive"]:
        m = np.asarray(pair_masks["positive"][name], dtype=bool) | np.asarray(
            pair_masks["negative"].get(name, False), dtype=bool
        )
        m = m.copy()
        m[:from_frame] = False
        if m.any():
            out[name] = m
    return out


@dataclass(frozen=True)
class SignalValues:
    """The outcome signals of n (positive, negative) pairs of clips, one value per pair (see OutcomeSignal)."""

    direction: Float[torch.Tensor, " n"]  # along r_pos - r_neg: 1.0 = the unmodified pair's difference
    logit_gap: Float[torch.Tensor, " n"]  # logit_c(x_pos) - logit_c(x_neg), in logits
    class_logit: Float[torch.Tensor, " n"]  # logit_c(x_pos), in logits


class OutcomeSignal:
    """The outcome signal of a (positive, negative) pair, two ways, for runs of modified clips:

    direction = <r(x_pos) - r(x_neg), r_pos - r_neg> / ||r_pos - r_neg||^2, with r the last resid_post
                at the readout (CLS, or the token mean; V-JEPA 2: the pooler's output) and r_pos, r_neg the unmodified pair's (1 before any ablation; the difference
                direction of the recovery metric);
    logit_gap = logit_c(x_pos) - logit_c(x_neg), the two clips' logits of class c (the positive's
                predicted class).
    ``class_logit`` = logit_c(x_pos), the class-logit target of the class-level methods.
    ``runs``: the pair's PairRuns (logits and last resid_post), so the unmodified pair costs no forward.
    """

    def __init__(
        self,
        model: HookedVideoTransformer,
        positive: torch.Tensor,
        negative: torch.Tensor,
        c: int,
        *,
        runs: PairRuns | None = None,
    ):
        self.model, self.c = model, c
        self.hook = readout_hook(model)
        if runs is None:
            logits, r = self._run(torch.cat([positive[:1], negative[:1]]))
        else:
            logits = torch.cat([runs.clean.logits, runs.corrupted.logits]).float()
            r = readout(torch.cat([runs.clean.cache[self.hook], runs.corrupted.cache[self.hook]]), self.model).float()
        self.r_pos, self.r_neg = r[0], r[1]
        self.delta = self.r_pos - self.r_neg
        if float(self.delta.pow(2).sum()) == 0:
            raise ValueError(
                f"the two clips give the same readout ({readout_name(self.model)}, {self.hook}): there is no outcome signal"
            )
        self.base = self._signal(logits, r)

    def _run(self, x: torch.Tensor, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch or (16 if self.model.cfg.n_ctx <= 1024 else 2)  # a ViViT-B clip's forward is ~100x the organism's
        logits, acts = [], []
        for i in range(0, len(x), batch):
            with torch.inference_mode():
                lg, r = logits_and_readout(self.model, x[i : i + batch])
            logits.append(lg.float())
            acts.append(r.float())
        return torch.cat(logits), torch.cat(acts)

    def measure(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> SignalValues:
        """Per row of the [n, ...] modified positive and negative clips."""
        return self._signal(*self._run(torch.cat([x_pos, x_neg])))

    def _signal(self, logits: torch.Tensor, r: torch.Tensor) -> SignalValues:
        n = len(logits) // 2
        direction = ((r[:n] - r[n:]) @ self.delta) / self.delta.pow(2).sum()
        return SignalValues(
            direction=direction, logit_gap=logits[:n, self.c] - logits[n:, self.c], class_logit=logits[:n, self.c]
        )


SIGNALS = ("class_logit", "logit_gap", "direction")


@dataclass(frozen=True)
class SignalChange:
    """One outcome signal's change (ablated minus unablated, in the signal's units) when a region is ablated."""

    change: float  # the region's change, and its ratio to the unablated value (None when that is 0)
    relative_change: float | None
    # over the matched control boxes (equal size, equal share of the pair's pixel difference): mean and
    # standard deviation of the change, and the Monte-Carlo p-value (k + 1)/(n + 1) with k the boxes whose
    # |change| is at least the region's (never below 1/(n + 1)); None where no (or, for sd, one) box matched
    control_mean: float | None
    control_std: float | None
    control_p: float | None
    sequential: dict | None = None  # Besag-Clifford's stopping record (control_changes), when sequential

    def to_json(self) -> dict:
        return {
            "change": self.change,
            "control_mean": self.control_mean,
            "control_std": self.control_std,
            "control_p": self.control_p,
            "sequential": self.sequential,
            "relative_change": self.relative_change,
        }


@dataclass(frozen=True)
class AblatedRegion:
    """One region ablated in both clips of a pair, beside control boxes of equal size and equal share of
    the pair's pixel difference in the same frames (statistics.matched_boxes)."""

    pixels: int  # pixels in the region, and the control boxes' mean pixel count (about equal; None: none found)
    control_pixels_mean: float | None
    frames: list[int]  # the region's first and last frame
    class_logit: SignalChange  # the change of each of SIGNALS
    logit_gap: SignalChange
    direction: SignalChange
    controls: dict | None = None  # MatchedBoxes.to_json(): the matching rule, the region's share, found/requested
    # the region was selected on this pair and is tested on it (top-DLA tokens): descriptive, no test
    descriptive: bool = False

    def to_json(self) -> dict:
        return {
            "pixels": self.pixels,
            "control_pixels_mean": self.control_pixels_mean,
            "frames": self.frames,
            "controls": self.controls,
            "descriptive": self.descriptive,
            **{key: getattr(self, key).to_json() for key in SIGNALS},
        }


@dataclass(frozen=True)
class OutcomeRegionAblation:
    """outcome_region_ablation's result: each region's signal changes, beside the unablated signals."""

    n_controls: int  # matched control boxes requested per region (each region's controls.found says how many matched)
    mode: str  # how pixels were ablated (ablate_pixel_mask: "zero", ...)
    base: dict[str, float]  # each signal of the unablated pair (direction is 1.0 there by construction)
    regions: dict[str, AblatedRegion]

    def to_json(self) -> dict:
        """results.json's "ablation" of the outcome section."""
        return {
            "n_controls": self.n_controls,
            "matching": statistics.matching_rule(),
            "mode": self.mode,
            "base": self.base,
            "regions": {name: region.to_json() for name, region in self.regions.items()},
        }


def outcome_region_ablation(
    model: HookedVideoTransformer,
    positive: torch.Tensor,
    negative: torch.Tensor,
    signal: OutcomeSignal,
    regions: dict[str, np.ndarray],
    *,
    n_controls: int = 20,
    seed: int = 0,
    mode: str = "zero",
    descriptive: Sequence[str] = (),
    stop_after: int | None = None,
) -> OutcomeRegionAblation:
    """Ablate each region (bool [T, H, W] pixel mask) in both clips of the pair and measure the change
    of the class logit, the logit gap and the direction signal, beside up to ``n_controls`` control
    boxes of equal size in the same frames that hold an equal share of the pair's pixel difference
    (statistics.matched_boxes; how many matched is recorded, none fall back to unmatched boxes): mean,
    standard deviation, and the Monte-Carlo p-value (k + 1)/(n + 1) of a change at least as large in
    magnitude; with ``stop_after`` = h, Besag-Clifford's sequential p-value over up to ``n_controls``
    boxes (control_changes). Regions named in ``descriptive`` were selected on this pair: marked descriptive."""
    base = {k: float(getattr(signal.base, k)[0]) for k in ("direction", "logit_gap", "class_logit")}
    difference = statistics.pixel_difference(positive, negative)
    ablated = {}
    for i, (name, mask) in enumerate(regions.items()):
        matched = statistics.matched_boxes(mask, difference, n_controls, seed=seed + i)
        controls = matched.masks

        def measure(masks: np.ndarray) -> torch.Tensor:  # [len(masks), signals]: each signal's change
            xp = ablate_pixel_mask(positive[:1].expand(len(masks), *positive.shape[1:]), masks, mode=mode)
            xn = ablate_pixel_mask(negative[:1].expand(len(masks), *negative.shape[1:]), masks, mode=mode)
            values = signal.measure(xp, xn)
            return torch.stack(
                [(getattr(values, key) - getattr(signal.base, key)[0]).double() for key in SIGNALS], 1
            ).cpu()

        region = measure(np.asarray(mask, dtype=bool)[None])[0]
        ctl, ps, seq = control_changes(
            lambda i0, i1: measure(controls[i0:i1]), region.tolist(), len(controls), stop_after=stop_after
        )
        changes = {}
        for j, key in enumerate(SIGNALS):
            r, c = float(region[j]), ctl[:, j]
            changes[key] = SignalChange(
                change=r,
                relative_change=r / base[key] if base[key] != 0 else None,
                control_mean=float(c.mean()) if len(c) else None,
                control_std=float(c.std()) if len(c) > 1 else None,
                control_p=ps[j],
                sequential=seq[j],
            )
        ablated[name] = AblatedRegion(
            pixels=int(np.asarray(mask).sum()),
            control_pixels_mean=float(controls.reshape(len(controls), -1).sum(1).mean()) if len(controls) else None,
            frames=[int(t) for t in np.nonzero(np.asarray(mask).any((1, 2)))[0][[0, -1]]],
            controls={**matched.to_json(), "used": len(ctl)},
            descriptive=name in descriptive,
            **changes,
        )
    return OutcomeRegionAblation(n_controls, mode, base, ablated)


def top_token_region(
    model: HookedVideoTransformer,
    scores: torch.Tensor,
    n_tokens: int,
    from_frame: int,
    frames: int,
    height: int,
    width: int,
) -> tuple[list[int], np.ndarray]:
    """The ``n_tokens`` patch tokens of greatest |score| among frame slots from ``from_frame`` on, and
    the pixel mask of exactly those tokens."""
    grid = model.cfg.grid
    s = scores.abs().clone().float()
    s[: grid.n_prefix] = -1
    first_slot = grid.frame_slot_of_frame(from_frame)
    s[grid.n_prefix : grid.n_prefix + first_slot * grid.n_rows * grid.n_cols] = -1
    top = (s.topk(min(n_tokens, int((s >= 0).sum()))).indices).tolist()
    return top, token_pixel_mask(grid, top, frames, height, width)


@dataclass(frozen=True)
class OutcomeAnalysis:
    """The outcome-targeted methods on one pair (outcome_analysis)."""

    class_index: int  # the class c every method targets (the positive clip's prediction)
    # the rendered divergence frame (None: unknown) and the first frame the regions cover
    divergence_frame: int | None
    from_frame: int
    differential_dla: DifferentialDLA
    # the patch tokens of greatest |class DLA| / |differential DLA| from from_frame on (the first two regions)
    top_class_dla_tokens: list[int]
    top_differential_dla_tokens: list[int]
    ablation: OutcomeRegionAblation
    # object -> weight ("CLS attention (positive clip)", "|class DLA| (positive clip)", "|differential DLA|")
    # -> enrichment on the object's tokens; None when the pair has no object masks
    enrichment: dict[str, dict[str, Enrichment]] | None = None
    # patch tokens that see a pixel differing between the clips (the base rate enrichment_differing uses)
    differing_tokens: int | None = None
    # the two top-DLA regions are selected on this pair and tested on it: results on them are descriptive
    descriptive: str = (
        "single pair: the top-DLA token regions are selected and tested on the same pair, so their ablation "
        "is descriptive (no significance is claimed); the object regions come from the renderer's masks"
    )

    def to_json(self) -> dict:
        """results.json's "outcome" (before the pipeline's share_after_divergence)."""
        out = {
            "class": self.class_index,
            "divergence_frame": self.divergence_frame,
            "from_frame": self.from_frame,
            "differential_dla": self.differential_dla.to_json(),
            "top_class_dla_tokens": self.top_class_dla_tokens,
            "top_differential_dla_tokens": self.top_differential_dla_tokens,
            "ablation": self.ablation.to_json(),
            "differing_tokens": self.differing_tokens,
            "descriptive": self.descriptive,
        }
        if self.enrichment is not None:
            out["enrichment"] = {obj: {w: e.to_json() for w, e in per.items()} for obj, per in self.enrichment.items()}
        return out


def outcome_analysis(
    model: HookedVideoTransformer,
    positive: torch.Tensor,
    negative: torch.Tensor,
    c: int,
    *,
    pair_masks: dict | None,
    divergence_frame: int | None,
    positive_dla: dict | None = None,
    n_tokens: int = 8,
    n_controls: int = 20,
    seed: int = 0,
    runs: PairRuns | None = None,
    stop_after: int | None = None,
) -> OutcomeAnalysis:
    """The outcome-targeted methods on one pair: differential token DLA, the outcome signal, region
    ablation after the divergence (top class-DLA tokens, top differential-DLA tokens, each rendered
    object) against equal-size random boxes, and per-object attention and DLA enrichment. ``runs``
    (PairRuns holding dla_hooks) spares the unmodified runs; only the ablated clips run then."""
    runs = runs or pair_runs(model, positive, negative, dla_hooks(model))
    dla = positive_dla or token_dla(model, positive, c, run=runs.clean)
    diff = differential_token_dla(model, positive, negative, c, positive_dla=dla, negative_run=runs.corrupted)
    T, _, H, W = positive.shape[1:]
    start = divergence_frame or 0
    signal = OutcomeSignal(model, positive, negative, c, runs=runs)
    class_tokens, class_mask = top_token_region(model, dla["terms"].sum((0, 1)), n_tokens, start, T, H, W)
    diff_tokens, diff_mask = top_token_region(model, diff.terms.sum((0, 1)), n_tokens, start, T, H, W)
    regions = {"top class-DLA tokens": class_mask, "top differential-DLA tokens": diff_mask}
    objects = object_masks_union(pair_masks, start) if pair_masks else {}
    regions.update({f"object: {k}": v for k, v in objects.items()})
    selected = ("top class-DLA tokens", "top differential-DLA tokens")
    ablation = outcome_region_ablation(
        model,
        positive,
        negative,
        signal,
        regions,
        n_controls=n_controls,
        seed=seed,
        descriptive=selected,
        stop_after=stop_after,
    )
    differing = differing_tokens(model, positive, negative)
    enrichments = None
    if objects:
        tokens = object_token_masks(model, objects)
        n_prefix = model.cfg.grid.n_prefix
        attn = torch.stack([readout_row(model, runs.clean.cache, l) for l in readout_layers(model)]).float()[
            ..., n_prefix:
        ]  # [L, H, patches]
        weights = {
            "CLS attention (positive clip)": attn,
            "|class DLA| (positive clip)": dla["terms"].sum((0, 1))[n_prefix:].abs(),
            "|differential DLA|": diff.terms.sum((0, 1))[n_prefix:].abs(),
        }
        enrichments = {
            obj: {w: enrichment(val, tok, differing) for w, val in weights.items()} for obj, tok in tokens.items()
        }
    return OutcomeAnalysis(
        class_index=c,
        divergence_frame=divergence_frame,
        from_frame=start,
        differential_dla=diff,
        top_class_dla_tokens=class_tokens,
        top_differential_dla_tokens=diff_tokens,
        ablation=ablation,
        enrichment=enrichments,
        differing_tokens=int(differing.sum()),
    )


# ---------------------------------------------------------------------------------------- (f)
def probe_hooks(model: HookedVideoTransformer) -> list[str]:
    """The probed activations: resid_pre of every layer and the last resid_post."""
    L = model.cfg.n_layers
    return [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [_last(model)]


@dataclass(frozen=True)
class ProbeFeatures:
    """What the probes read, one row per clip: pair i's positive clip is row 2i (label 1), its negative
    row 2i + 1 (label 0), both in group i. Probes are indexed as probe_hooks: resid_pre 0..L-1, then
    the last resid_post."""

    # the residual stream at the CLS token (None without one: token 0 is a patch) and its mean over patch tokens
    cls: Float[torch.Tensor, "probe clip d_model"] | None
    mean: Float[torch.Tensor, "probe clip d_model"]
    # pixel baselines: each tubelet's mean colour, every token kept / the raw tubelet vector averaged over tokens
    pixels: Float[torch.Tensor, "clip tubelet_colours"]
    pixels_mean: Float[torch.Tensor, "clip tubelet_values"]
    labels: Int[np.ndarray, " clip"]  # 1 = positive clip, 0 = negative
    groups: Int[np.ndarray, " clip"]  # the pair of each clip
    predictions: Int[np.ndarray, " clip"]  # the model's predicted class of each clip

    @staticmethod
    def concat(parts: Sequence[ProbeFeatures]) -> ProbeFeatures:
        """The features of several sets of pairs, in order; pairs are renumbered 0, 1, ... (groups)."""
        n_pairs = sum(len(np.unique(p.groups)) for p in parts)
        return ProbeFeatures(
            cls=None if any(p.cls is None for p in parts) else torch.cat([p.cls for p in parts], 1),
            mean=torch.cat([p.mean for p in parts], 1),
            pixels=torch.cat([p.pixels for p in parts]),
            pixels_mean=torch.cat([p.pixels_mean for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            groups=np.repeat(np.arange(n_pairs), 2),
            predictions=np.concatenate([p.predictions for p in parts]),
        )

    def cpu(self) -> ProbeFeatures:
        """The same features with every tensor on the CPU."""
        return ProbeFeatures(
            cls=None if self.cls is None else self.cls.cpu(),
            mean=self.mean.cpu(),
            pixels=self.pixels.cpu(),
            pixels_mean=self.pixels_mean.cpu(),
            labels=self.labels,
            groups=self.groups,
            predictions=self.predictions,
        )


def probe_pair_features(
    model: HookedVideoTransformer, positive: torch.Tensor, negative: torch.Tensor, logits: torch.Tensor, acts: dict
) -> ProbeFeatures:
    """One pair's rows of ``probe_features`` from its logits [2, ...] and probe_hooks activations
    [2, P, d] (positive first), e.g. from the pair's shared runs."""
    t, h, w = model.cfg.tubelet_size
    x = torch.cat([positive[:1], negative[:1]])
    stack = torch.stack([acts[n] for n in probe_hooks(model)]).float()  # [L+1, 2, P, d]
    g = model.cfg.grid
    seen = x[:, : g.covered_frames.stop, :, g.covered_rows, g.covered_cols].float()  # pixels some token sees
    B, C = x.shape[0], x.shape[2]
    tubes = seen.reshape(B, g.n_frame_slots, t, C, g.n_rows, h, g.n_cols, w)
    n_prefix = model.cfg.grid.n_prefix
    return ProbeFeatures(
        cls=stack[:, :, 0] if n_prefix else None,  # without a CLS token there are no "cls" features
        mean=stack[:, :, n_prefix:].mean(2),
        pixels=tubes.mean(dim=(2, 5, 7)).flatten(1),
        pixels_mean=tubes.permute(0, 1, 4, 6, 2, 3, 5, 7).reshape(B, -1, t * C * h * w).mean(1),
        labels=np.array([1, 0]),
        groups=np.array([0, 0]),
        predictions=logits.argmax(-1).cpu().numpy(),
    )


def probe_features(
    model: HookedVideoTransformer,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    known: Sequence[ProbeFeatures] = (),
) -> ProbeFeatures:
    """CLS (when the model has one) and mean-token residual stream per layer (resid_pre 0..L-1 and the last resid_post),
    plus two pixel-space baselines: "pixels", spatially resolved (each tubelet's mean colour, every
    token kept), and "pixels_mean", pooled the way the mean-token features are (the raw tubelet
    vector averaged over tokens: exactly the input a mean-pooled layer-0 embedding is linear in).
    CLS has no pixel analogue beyond such a global pool. Also the predicted class of every clip.
    Each pair runs once (both clips as a batch), caching only the probed hooks and stopping after
    the last probed block; the classifier head then reads the residual stream there (no block
    runs). ``known``: probe_pair_features of the first pairs, already computed (no forward)."""
    names = probe_hooks(model)
    stop = max(int(n.split(".")[1]) for n in names) + 1  # past the last probed block
    per_pair = []
    for i, (pos, neg) in enumerate(pairs):
        if i < len(known):
            per_pair.append(known[i])
            continue
        with torch.inference_mode():
            resid, cache = model.run_with_cache(
                torch.cat([pos, neg]), names_filter=names, stop_at_layer=stop, return_cache_object=False
            )
            logits = model(resid, start_at_layer=stop)
        per_pair.append(probe_pair_features(model, pos, neg, logits, cache))
    return ProbeFeatures.concat(per_pair)


@dataclass(frozen=True)
class LayerProbes:
    """layer_probes' result: one cross-validated probe per probed activation and pooling, and the pixel baselines."""

    layers: list[str]  # the probed activations ("resid_pre 0", ..., "resid_post L-1"), indexing cls and mean
    # minimal pairs, folds and repeats of the grouped k-fold, in numbers and in words
    pairs: int
    folds: int
    repeats: int
    method: str
    cls: list[CrossValidatedProbe] | None  # on the CLS token (None without one), on the mean patch token
    mean: list[CrossValidatedProbe]
    pixels: CrossValidatedProbe  # the pixel baselines (ProbeFeatures.pixels, .pixels_mean)
    pixels_mean: CrossValidatedProbe
    # the layer x pooling choice cross-validated too (nested: the accuracy of choosing, then probing), the
    # same nested probe on a random-weights model of the same architecture (None: not run), and the
    # computed comparisons with the pixel baselines and the random-weights model (pixel_ceiling)
    nested: NestedProbe | None = None
    random_weights: NestedProbe | None = None
    random_weights_seed: int | None = None

    def pixel_ceiling(self) -> dict | None:
        """The pixel baseline as the ceiling it is: where a probe of raw pixels (no model) reaches the nested
        probe's paired accuracy (at least the low end of its interval) and decodes the outcome above
        chance itself (its interval above 0.5), the outcome is decodable from pixels alone, a fingerprint
        of the clips rather than a finding about the model. Beside it, whether the trained model's nested
        probe exceeds the random-weights model's (the low end of its interval above the random one)."""
        if self.nested is None:
            return None
        key = max(("pixels", "pixels_mean"), key=lambda k: getattr(self, k).paired_accuracy)
        px = getattr(self, key)
        lo = self.nested.paired_accuracy_ci95[0]
        out = {
            "metric": "paired_accuracy",
            "baseline": key,  # the better of the two pixel baselines
            "pixels": px.paired_accuracy,
            "pixels_ci95": px.paired_accuracy_ci95,
            "probe": self.nested.paired_accuracy,
            "probe_ci95": self.nested.paired_accuracy_ci95,
            "pixels_above_chance": bool(px.paired_accuracy_ci95[0] > 0.5),
            "pixels_reach_probe": bool(px.paired_accuracy >= lo),
        }
        out["fingerprint"] = out["pixels_above_chance"] and out["pixels_reach_probe"]
        out["rule"] = (
            "fingerprint = the better pixel baseline's paired accuracy interval lies above 0.5 and its paired accuracy "
            "reaches the low end of the nested probe's interval"
        )
        if self.random_weights is not None:
            out["random_weights"] = self.random_weights.paired_accuracy
            out["above_random_weights"] = bool(lo > self.random_weights.paired_accuracy)
        return out

    def to_json(self) -> dict:
        """results.json's "probes" (before the pipeline's seeds, domain and best)."""
        out: dict = {
            "layers": self.layers,
            "pairs": self.pairs,
            "folds": self.folds,
            "repeats": self.repeats,
            "method": self.method,
        }
        if self.cls is not None:
            out["cls"] = [p.to_json() for p in self.cls]
        out["mean"] = [p.to_json() for p in self.mean]
        out["pixels"] = self.pixels.to_json()
        out["pixels_mean"] = self.pixels_mean.to_json()
        out["train_pairs_per_fold"] = self.pixels.train_pairs_per_fold
        out["test_pairs_per_fold"] = self.pixels.test_pairs_per_fold
        if self.nested is not None:
            out["nested"] = self.nested.to_json()
        if self.random_weights is not None:
            out["random_weights"] = {"seed": self.random_weights_seed, **self.random_weights.to_json()}
        if self.nested is not None:
            out["pixel_ceiling"] = self.pixel_ceiling()
        return out


def layer_probes(
    model: HookedVideoTransformer,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    seed: int = 0,
    k: int = 5,
    repeats: int = 5,
    features: ProbeFeatures | None = None,
    nested_repeats: int = 2,
    random_weights: bool = True,
    random_seed: int = 0,
    random_model: HookedVideoTransformer | None = None,
    random_features: ProbeFeatures | None = None,
) -> LayerProbes:
    """Outcome probes per layer on CLS and on mean-pooled tokens, repeated grouped k-fold over pairs
    (hooked_vivit.causal.probes.cross_validated_probe: accuracy and paired accuracy with bootstrap 95 %
    intervals over pairs, the shuffled-within-pair control, selectivity), and the two pixel
    baselines ("pixels": spatially resolved, "pixels_mean": pooled like the mean-token features).

    The best layer x pooling is a choice among these: ``nested`` is its accuracy cross-validated with
    the choice inside (nested_cross_validated_probe, ``nested_repeats`` repeats of k outer folds, each
    choosing by an inner 4-fold CV on its training pairs), the same with the control task. With
    ``random_weights`` the nested probe also reads a model of the same architecture and config with
    re-initialised weights (random_weights_model(model, random_seed), or ``random_model`` where given,
    built by it: a forward of every pair; or ``random_features``, its probe_features of the same pairs)."""
    f = features or probe_features(model, pairs)
    L = model.cfg.n_layers
    run = lambda feat: cross_validated_probe(feat, f.labels, f.groups, k=k, repeats=repeats, seed=seed)  # noqa: E731
    layers = [f"resid_pre {l}" for l in range(L)] + [f"resid_post {L - 1}"]

    def nested(g: ProbeFeatures) -> NestedProbe:
        configs = {
            f"{kind} {name}": feat
            for kind in ("cls", "mean")
            if getattr(g, kind) is not None
            for name, feat in zip(layers, getattr(g, kind))
        }
        return nested_cross_validated_probe(configs, g.labels, g.groups, k=k, repeats=nested_repeats, seed=seed)

    rand = None
    if random_weights:
        if random_features is None:
            if not pairs:
                raise ValueError(
                    "the random-weights control needs the pairs (or random_features); random_weights=False skips it"
                )
            random_features = probe_features(random_model or random_weights_model(model, random_seed), pairs)
        rand = nested(random_features)
    return LayerProbes(
        layers=layers,
        pairs=len(np.unique(f.groups)),
        folds=k,
        repeats=repeats,
        method=f"repeated grouped {k}-fold ({repeats} repeats, groups = pairs), bootstrap 95 % intervals over pairs",
        cls=None if f.cls is None else [run(feat) for feat in f.cls],
        mean=[run(feat) for feat in f.mean],
        pixels=run(f.pixels),
        pixels_mean=run(f.pixels_mean),
        nested=nested(f),
        random_weights=rand,
        random_weights_seed=random_seed if random_weights else None,
    )


def random_weights_model(model: HookedVideoTransformer, seed: int = 0) -> HookedVideoTransformer:
    """The random-weights control: the same architecture and config as ``model`` (its class built from a
    copy of its cfg), weights re-initialised by the class's init_weights(seed) (as training starts), on
    the model's device and dtype."""
    import copy

    p = next(model.parameters())
    rand = type(model)(copy.deepcopy(model.cfg), init_weights=False)
    rand.init_weights(seed=seed)
    return rand.to(device=p.device, dtype=p.dtype)
