"""How good an SAE is on held-out clips: reconstruction, sparsity, what splicing costs the
classifier, and how steady its features are in time.

- ``fvu``: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over every
  token (``explained_variance`` = 1 - fvu);
- ``l0``: mean number of active features per token; ``dead``: features never active on the
  evaluation tokens (``dead_definition`` says so in evaluation.json: cfg.json's ``num_dead_features``
  is SAELens's count over the last training batches, a different number); ``dense``: features
  active on more than ``DENSE_FREQUENCY`` of them;
- ``kl`` / ``accuracy``: mean KL(unspliced || spliced) of the class distributions and class accuracy,
  spliced WITHOUT the error term (the reconstruction replaces the activation), beside the
  unspliced accuracy;
- ``temporal_coherence``: per feature, the Pearson correlation of its activation at frame slot t
  and t + 1 at the same (row, col) over every clip and position (lag-1 autocorrelation along
  time); the summary is the mean over features active on at least ``MIN_ACTIVE`` tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hooked_vivit.sae.activations import ActivationSource
from hooked_vivit.sae.splice import splice

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

DENSE_FREQUENCY = 0.1
MIN_ACTIVE = 10


@torch.no_grad()
def reconstruction(sae: Any, acts: torch.Tensor, chunk: int = 16384) -> dict[str, Any]:
    """fvu, explained variance, l0, per-feature frequency, dead / dense counts of ``acts`` [n, d_in]."""
    sq_err = torch.zeros((), dtype=torch.float64)
    freq = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0 = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(acts), chunk):
        x = acts[i : i + chunk].to(sae.W_dec.device)
        f = sae.encode(x)
        sq_err += (sae.decode(f) - x).double().pow(2).sum().cpu()
        active = (f > 0).double()
        freq += active.sum(0).cpu()
        l0 += active.sum().cpu()
    x = acts.double()
    total = (x - x.mean(0)).pow(2).sum()
    n = len(acts)
    freq /= n
    fvu = float(sq_err / total)
    return {
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "l0": float(l0 / n),
        "tokens": n,
        "dead": int((freq == 0).sum()),
        "dead_definition": (
            f"features active on none of these {n} evaluation tokens "
            "(cfg.json's num_dead_features counts the last training batches instead)"
        ),
        "dense": int((freq > DENSE_FREQUENCY).sum()),
        "d_sae": sae.cfg.d_sae,
        "dense_frequency": DENSE_FREQUENCY,
        "frequency": freq.float(),
    }


def temporal_coherence(features: torch.Tensor, grid: Any, min_active: int = MIN_ACTIVE) -> dict[str, Any]:
    """Lag-1 autocorrelation of each feature along frame slots at fixed (row, col).

    ``features``: [clips, n_ctx, d_sae] feature activations (prefix tokens are ignored)."""
    _, patches = grid.unflatten(features.double(), dim=1)  # [clips, slots, rows, cols, d_sae]
    if patches.shape[1] < 2:
        raise ValueError("temporal coherence needs at least two frame slots")
    a = patches[:, :-1].reshape(-1, patches.shape[-1])
    b = patches[:, 1:].reshape(-1, patches.shape[-1])
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = (a.pow(2).sum(0) * b.pow(2).sum(0)).sqrt()
    corr = (a * b).sum(0) / denom.clamp_min(1e-30)
    active = (patches > 0).reshape(-1, patches.shape[-1]).sum(0)
    ok = (active >= min_active) & (denom > 0)
    per = torch.where(ok, corr, torch.full_like(corr, float("nan")))
    return {
        "mean": float(per[ok].mean()) if ok.any() else float("nan"),
        "median": float(per[ok].median()) if ok.any() else float("nan"),
        "features": int(ok.sum()),
        "min_active": min_active,
        "per_feature": per.float(),
    }


def evaluate(
    model: HookedVideoTransformer, sae: Any, source: ActivationSource, *, labels: list[int] | None = None
) -> dict[str, Any]:
    """Every metric of the module docstring on the clips of ``source`` (unshuffled, all tokens).

    ``labels`` (class index per clip) default to the clip set's own (synthetic clips on the organism)."""
    hook = source.hook
    acts_all, logits_clean, logits_spliced, feats = [], [], [], []
    name = f"{hook}.hook_sae_acts_post"
    for pixel_values, _ in source.loader():
        pixel_values = pixel_values.to(source.device)
        with torch.inference_mode():
            logits_clean.append(model(pixel_values).float().cpu())
            with splice(model, sae, hook, use_error_term=False):
                lg, cache = model.run_with_cache(pixel_values, names_filter=[name, f"{hook}.hook_sae_input"])
            logits_spliced.append(lg.float().cpu())
            acts_all.append(cache[f"{hook}.hook_sae_input"].reshape(-1, source.d_in).float().cpu())
            feats.append(cache[name].float().cpu())
    acts = torch.cat(acts_all)
    rec = reconstruction(sae, acts)
    clean, spliced = torch.cat(logits_clean), torch.cat(logits_spliced)
    logp, logq = clean.log_softmax(-1), spliced.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    out = {
        "hook": hook,
        **{k: v for k, v in rec.items() if k != "frequency"},
        "clips": len(clean),
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
    }
    if labels is None:
        labels = [source.clips.label(i) for i in range(len(source.clips))]
    if all(lab is not None for lab in labels):
        y = torch.tensor(labels)
        out["accuracy_unspliced"] = float((clean.argmax(-1) == y).float().mean())
        out["accuracy_spliced"] = float((spliced.argmax(-1) == y).float().mean())
    out["agreement_spliced"] = float((clean.argmax(-1) == spliced.argmax(-1)).float().mean())
    tc = temporal_coherence(torch.cat(feats), model.cfg.grid)
    out["temporal_coherence"] = {k: v for k, v in tc.items() if k != "per_feature"}
    out["per_feature"] = {
        "frequency": rec["frequency"].tolist(),
        "temporal_coherence": [None if v != v else round(v, 6) for v in tc["per_feature"].tolist()],
    }  # NaN: too rare
    return out
