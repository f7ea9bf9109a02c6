"""Linear probes with honest controls.

``probe_accuracy`` fits an L2-regularised logistic regression (full-batch L-BFGS, standardised
features) on a training split and scores a held-out split. Splits are made by *group* (a minimal
pair's two clips share a group), so a probe never sees one clip of a test pair while training:
with one pair, as in the reference paper, any feature that differs between the two clips is
100 % "decodable", a fingerprint rather than a concept. ``control=True`` also fits the same probe
to shuffled labels (Hewitt & Liang's control task); selectivity = accuracy - control accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ProbeResult:
    accuracy: float
    train_accuracy: float
    control_accuracy: float | None = None

    @property
    def selectivity(self) -> float | None:
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "train_accuracy": self.train_accuracy,
                "control_accuracy": self.control_accuracy, "selectivity": self.selectivity}


def group_split(groups: np.ndarray, test_fraction: float = 0.34, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train / test masks that keep every group on one side."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("a held-out split needs at least two groups (pairs)")
    rng = np.random.default_rng(seed)
    test_groups = rng.choice(unique, size=max(1, int(round(len(unique) * test_fraction))), replace=False)
    test = np.isin(groups, test_groups)
    return ~test, test


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary logistic regression weights (w, b) on standardised x; y in {0, 1}."""
    x, y = x.double(), y.double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(
    features: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    l2: float = 1e-2,
    control: bool = True,
    seed: int = 0,
) -> ProbeResult:
    """Held-out accuracy of a linear probe for binary ``labels`` from ``features`` [n, d]."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64).flatten(1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
    if set(np.unique(labels).tolist()) - {0, 1}:
        raise ValueError("probe labels must be 0/1")
    train, test = group_split(np.asarray(groups), seed=seed)
    train_t, test_t = torch.from_numpy(train), torch.from_numpy(test)
    mu, sd = x[train_t].mean(0), x[train_t].std(0).clamp_min(1e-8)
    x = (x - mu) / sd

    def run(yy: torch.Tensor) -> tuple[float, float]:
        w, b = fit_logistic(x[train_t], yy[train_t], l2)
        pred = (x @ w + b > 0).double()
        return float((pred[test_t] == yy[test_t]).double().mean()), float((pred[train_t] == yy[train_t]).double().mean())

    acc, train_acc = run(y)
    control_acc = None
    if control:
        # Shuffle labels *by group*: each pair keeps one random label per clip order, so the
        # control task has the same structure but no relation to the outcome.
        rng = np.random.default_rng(seed + 1)
        flipped = y.clone()
        for g in np.unique(groups):
            if rng.random() < 0.5:
                idx = torch.from_numpy(np.asarray(groups) == g)
                flipped[idx] = 1 - flipped[idx]
        control_acc = run(flipped)[0]
    return ProbeResult(acc, train_acc, control_acc)
