"""Attribution patching: a first-order estimate of every patch at once.

For an activation a and metric M, patching a from the clean run into the corrupted run changes M by
about  (a_clean - a_corrupt) . dM/da  (gradient taken on the corrupted run). One clean forward
(or a clean cache you already have), one corrupted forward and one backward give the estimate for
every (layer, position) of resid_pre / attn_out / mlp_out and every (layer, position, head) of z.
Only input gradients are taken (``torch.autograd.grad``), never parameter gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float

from hooked_vivit.patching import _metric_rows

DEFAULT_ACTS = ("resid_pre", "attn_out", "mlp_out", "z")


@dataclass
class AttributionResult:
    """``scores[act]``: [n_layers, n_ctx] for resid/attn_out/mlp_out, [n_layers, n_ctx, n_heads] for
    z (and q/k/v). ``baseline`` is the metric on the corrupted run."""

    scores: dict[str, torch.Tensor]
    baseline: float
    grid: Any

    def by_frame_slot(self, act: str) -> Float[torch.Tensor, "n_layers n_frame_slots"]:
        """Sum over the patch tokens of each frame slot: the estimate for patching the slot whole."""
        s = self.scores[act]
        if s.ndim != 2:
            s = s.sum(-1)
        return self.grid.unflatten(s, dim=1)[1].sum(dim=(-1, -2))

    def by_component(self, act: str) -> Float[torch.Tensor, "n_layers"]:
        """Sum over all tokens: the estimate for patching the whole component of each layer."""
        s = self.scores[act]
        return s.sum(dim=tuple(range(1, s.ndim)))

    def by_head(self, act: str = "z") -> Float[torch.Tensor, "n_layers n_heads"]:
        return self.scores[act].sum(1)


def attribution_patch(
    model: Any,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    metric: Callable,
    *,
    acts: Sequence[str] = DEFAULT_ACTS,
    clean_cache: Any = None,
) -> AttributionResult:
    """Estimate denoising patches (clean into corrupted) for every (layer, position[, head])."""
    from transformer_lens.utilities import get_act_name

    n_layers = model.cfg.n_layers
    names = [get_act_name(a, l) for a in acts for l in range(n_layers)]
    model._check_hook_names(names)
    metric_hooks = tuple(getattr(metric, "hooks", ()))
    if clean_cache is None:
        with torch.inference_mode():
            _, clean_cache = model.run_with_cache(clean, names_filter=names)
    corrupted = model.validate_input(corrupted)

    stored: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook) -> torch.Tensor:
        stored[hook.name] = act
        return act

    with torch.enable_grad():
        x = corrupted.detach().clone().requires_grad_(True)  # a graph even if parameters are frozen
        with model.hooks(fwd_hooks=[(n, keep) for n in dict.fromkeys(names + list(metric_hooks))]):
            logits = model(x)
        values = _metric_rows(metric, logits, {h: stored[h] for h in metric_hooks})
        if values.shape != (x.shape[0],):
            raise ValueError(
                f"the metric must return one value per batch row, shape ({x.shape[0]},), got shape {tuple(values.shape)} "
                "(a [batch, classes] tensor? pick a class: hooked_vivit.metrics.ClassLogit(c) or LogitDiff(c, other))"
            )
        targets = [stored[n] for n in names]
        grads = torch.autograd.grad(values.sum(), targets, allow_unused=True)

    scores: dict[str, list[torch.Tensor]] = {a: [] for a in acts}
    for (name, act, grad), a in zip(((n, stored[n], g) for n, g in zip(names, grads)), [a for a in acts for _ in range(n_layers)]):
        delta = clean_cache[name].to(act.device, act.dtype) - act.detach()
        g = torch.zeros_like(act) if grad is None else grad
        # Sum over the feature axis, mean over the batch: one number per position (and head),
        # on the same scale as run_patches' batch-mean values.
        scores[a].append((delta * g).sum(-1).mean(0).detach().float().cpu())
    return AttributionResult(
        scores={a: torch.stack(v) for a, v in scores.items()},
        baseline=float(values.detach().float().mean()),
        grid=model.cfg.grid,
    )
