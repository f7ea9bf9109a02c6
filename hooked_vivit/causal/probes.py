"""Linear probes with honest controls.

``probe_accuracy`` fits an L2-regularised logistic regression (full-batch L-BFGS, standardised
features) on a training split and scores a held-out split. Splits are made by *group* (a minimal
pair's two clips share a group), so a probe never sees one clip of a test pair while training:
with one pair, as in the reference paper, any feature that differs between the two clips is
100 % "decodable", a fingerprint rather than a concept. ``control=True`` also fits the same probe
to shuffled labels (Hewitt & Liang's control task); selectivity = accuracy - control accuracy.

``cross_validated_probe`` is the powered version: repeated grouped k-fold (every pair is tested once
per repeat, by a probe that never saw either of its clips), accuracy and paired accuracy (the share
of pairs whose positive clip scores above its own negative) with percentile-bootstrap intervals
over pairs, and the same for the control task (labels swapped within a random half of the pairs).

``nested_cross_validated_probe`` is the estimate for a probe whose layer / pooling was *chosen*: the
argmax over configurations of their cross-validated accuracies is inflated by the choice (on pure
noise it sits above chance), so each outer fold chooses by an inner grouped cross-validation on its own
training pairs and only then scores its held-out pairs; the control task runs through the same
procedure, choice included (selectivity of the whole procedure). Everything here uses the probe above
(the batched L2 logistic regression and grouped folds), not scikit-learn, so the nested and per-layer
numbers come from one and the same probe.
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
        return {
            "accuracy": self.accuracy,
            "train_accuracy": self.train_accuracy,
            "control_accuracy": self.control_accuracy,
            "selectivity": self.selectivity,
        }


@dataclass(frozen=True)
class CrossValidatedProbe:
    """cross_validated_probe's result. Accuracies are shares of clips (0.5 = chance, 1.0 = every clip
    right); paired accuracies shares of pairs whose positive clip scores above its negative (ties count
    half); each *_ci95 is its percentile-bootstrap 95 % interval over pairs, [low, high]."""

    pairs: int  # minimal pairs, folds, repeats, and the pairs each fold trains and tests on (at least / at most)
    folds: int
    repeats: int
    train_pairs_per_fold: int
    test_pairs_per_fold: int
    train_accuracy: float  # the probes' accuracy on their own training rows, mean over folds and repeats
    accuracy: float  # out of fold, mean over repeats
    accuracy_ci95: list[float]
    paired_accuracy: float
    paired_accuracy_ci95: list[float]
    # the same on the control task (labels swapped within a random half of the pairs); None without it
    control_accuracy: float | None = None
    control_accuracy_ci95: list[float] | None = None
    control_paired_accuracy: float | None = None
    control_paired_accuracy_ci95: list[float] | None = None

    @property
    def selectivity(self) -> float | None:
        """accuracy - control_accuracy (0 = the probe decodes the outcome no better than the control task)."""
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    def to_json(self) -> dict:
        out = {
            "pairs": self.pairs,
            "folds": self.folds,
            "repeats": self.repeats,
            "train_pairs_per_fold": self.train_pairs_per_fold,
            "test_pairs_per_fold": self.test_pairs_per_fold,
            "train_accuracy": self.train_accuracy,
            "accuracy": self.accuracy,
            "accuracy_ci95": self.accuracy_ci95,
            "paired_accuracy": self.paired_accuracy,
            "paired_accuracy_ci95": self.paired_accuracy_ci95,
            "control_accuracy": self.control_accuracy,
        }
        if self.control_accuracy is not None:
            out["control_accuracy_ci95"] = self.control_accuracy_ci95
            out["control_paired_accuracy"] = self.control_paired_accuracy
            out["control_paired_accuracy_ci95"] = self.control_paired_accuracy_ci95
        out["selectivity"] = self.selectivity
        return out


def group_split(groups: np.ndarray, test_fraction: float = 0.34, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train / test masks that keep every group on one side."""
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("a held-out split needs at least two groups (pairs)")
    rng = np.random.default_rng(seed)
    test_groups = rng.choice(unique, size=max(1, int(round(len(unique) * test_fraction))), replace=False)
    test = np.isin(groups, test_groups)
    return ~test, test


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
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
        return float((pred[test_t] == yy[test_t]).double().mean()), float(
            (pred[train_t] == yy[train_t]).double().mean()
        )

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


def bootstrap_ci(
    values: np.ndarray, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over axis 0 (rows resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 rows, got {len(v)}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(1)  # [n resamples, ...]
    a = (1 - level) / 2
    return np.quantile(means, a, axis=0), np.quantile(means, 1 - a, axis=0)


def _pair_index(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique groups, row of each group's positive, row of its negative); each group must be one pair."""
    uniq = np.unique(groups)
    pos, neg = np.empty(len(uniq), int), np.empty(len(uniq), int)
    for i, g in enumerate(uniq):
        rows = np.nonzero(groups == g)[0]
        if len(rows) != 2 or sorted(labels[rows].tolist()) != [0, 1]:
            raise ValueError(f"group {g} must hold exactly two clips, one labelled 1 and one 0 (a minimal pair)")
        pos[i], neg[i] = rows[labels[rows] == 1][0], rows[labels[rows] == 0][0]
    return uniq, pos, neg


def _spd_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """H^-1 g for a batch of symmetric positive-definite H (Newton systems: Hessian + ridge) by Cholesky;
    LU only for a system Cholesky refuses. (Batched LU through MKL fails for systems of ~200 unknowns
    once torch.set_num_threads has been called: DLASWP errors, then "pivots ... >= 1"; Cholesky does not.)"""
    L, info = torch.linalg.cholesky_ex(H)
    out = torch.cholesky_solve(g, L)
    bad = info != 0
    if bad.any():
        out[bad] = torch.linalg.solve(H[bad], g[bad])
    return out


def fit_logistic_batched(
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    l2: float = 1e-2,
    steps: int = 50,
    x_index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fit_logistic``'s objective (mean training BCE + l2 ||w||^2, b free) for P independent problems
    at once, by damped Newton: x [P, n, d] (standardised per problem), y [P, n] in {0, 1}, train
    [P, n] bool (the rows each problem fits); returns w [P, d], b [P].

    The L2 optimum w lies in the span of the training rows, so each problem is solved in the
    coordinates of that span (an orthonormal basis V of it: w = V beta, ||w|| = ||beta||), which
    makes the Newton system at most (n + 1)-dimensional however wide the features are. Problems
    that share features and training rows (a probe and its control task) can share x: then x is
    [G, n, d] and ``x_index`` [P] names each problem's row of it (the span is computed once per G)."""
    x, y, m = x.double(), y.double(), train.double()
    if x_index is None:
        x_index = torch.arange(x.shape[0])
    G, n, d = x.shape
    P = len(x_index)
    first = {int(g): p for p, g in reversed(list(enumerate(x_index.tolist())))}  # a problem per shared x
    if d <= n:
        z = x
    else:  # coordinates in an orthonormal basis containing the training rows' span (test rows zeroed first)
        m_g = m[[first[g] for g in range(G)]]
        # float32 QR is ~5x faster than float64 here; its basis is orthonormal to ~1e-7, far inside the fit's tolerance.
        V = torch.linalg.qr((x * m_g[..., None]).transpose(1, 2).float()).Q.double()  # [G, d, n]
        z = x @ V
    r = z.shape[2]
    z = torch.cat([z[x_index], torch.ones(P, n, 1, dtype=torch.float64)], -1)  # [P, n, r + 1]
    reg = torch.full((r + 1,), 2 * l2, dtype=torch.float64)
    reg[-1] = 1e-10  # the bias is not penalised
    n_train = m.sum(1, keepdim=True)

    def loss(theta):
        logits = (z @ theta[..., None])[..., 0]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return (bce * m).sum(1) / n_train[:, 0] + l2 * theta[:, :-1].pow(2).sum(1)

    theta = torch.zeros(P, r + 1, dtype=torch.float64)
    current = loss(theta)
    for _ in range(steps):
        p = torch.sigmoid((z @ theta[..., None])[..., 0])
        g = (z.transpose(1, 2) @ ((p - y) * m / n_train)[..., None])[..., 0] + reg * theta
        H = (z * (p * (1 - p) * m / n_train)[..., None]).transpose(1, 2) @ z + torch.diag(reg)
        step = _spd_solve(H, g[..., None])[..., 0]
        t = torch.ones(P, 1, dtype=torch.float64)
        for _ in range(30):  # halve the step of the problems whose loss would rise
            new = loss(theta - t * step)
            worse = new > current + 1e-15
            if not worse.any():
                break
            t[worse] /= 2
        theta = theta - t * step
        previous, current = current, loss(theta)
        if (previous - current).abs().max() < 1e-13:
            break
    w = theta[:, :-1] if d <= n else (V[x_index] @ theta[:, :-1, None])[..., 0]
    return w, theta[:, -1]


def cross_validated_probe(
    features: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    k: int = 5,
    repeats: int = 5,
    l2: float = 1e-2,
    control: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
) -> CrossValidatedProbe:
    """Repeated grouped k-fold probe for binary ``labels``, groups = minimal pairs.

    accuracy: mean over repeats of the out-of-fold accuracy; paired_accuracy: share of pairs whose
    positive clip's out-of-fold score exceeds its negative's; both with a percentile-bootstrap 95 %
    interval over pairs (each pair's value averaged over repeats). control_*: the same with the
    labels swapped within a random half of the pairs (redrawn each repeat); selectivity =
    accuracy - control_accuracy."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if set(np.unique(labels).tolist()) - {0, 1}:
        raise ValueError("probe labels must be 0/1")
    uniq, pos, neg = _pair_index(labels, groups)
    if len(uniq) < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} pairs, got {len(uniq)}")
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64).flatten(1)
    group_pos = {g: i for i, g in enumerate(uniq)}
    pair_of_row = np.array([group_pos[g] for g in groups])
    rng = np.random.default_rng(seed)
    task_names = ("probe", "control") if control else ("probe",)
    problems = []  # (repeat, task, fold, labels, fold_of_row)
    for r in range(repeats):
        fold_of_pair = np.empty(len(uniq), int)
        fold_of_pair[rng.permutation(len(uniq))] = np.arange(len(uniq)) % k
        fold_of_row = fold_of_pair[pair_of_row]
        flips = np.nonzero(rng.random(len(uniq)) < 0.5)[0]
        for task in task_names:
            y_np = labels.copy()
            if task == "control":
                swap = np.isin(pair_of_row, flips)
                y_np[swap] = 1 - y_np[swap]
            for f in range(k):
                problems.append((r, task, f, y_np, fold_of_row))
    train = torch.from_numpy(np.stack([fr != f for _, _, f, _, fr in problems]))
    ys = torch.as_tensor(np.stack([yy for _, _, _, yy, _ in problems]), dtype=torch.float64)
    # A probe and its control share the fold (same training rows): standardise and span once per (repeat, fold).
    folds = sorted({(r, f) for r, _, f, _, _ in problems})
    x_index = torch.tensor([folds.index((r, f)) for r, _, f, _, _ in problems])
    xs = []
    for r, f in folds:  # standardise with the training rows' statistics only
        tr = train[[i for i, (rr, _, ff, _, _) in enumerate(problems) if (rr, ff) == (r, f)][0]]
        mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-8)
        xs.append((x - mu) / sd)
    xs = torch.stack(xs)
    w, b = fit_logistic_batched(xs, ys, train, l2, x_index=x_index)
    scores_all = torch.einsum("pnd,pd->pn", xs[x_index], w) + b[:, None]
    tasks: dict = {t: [] for t in task_names}
    train_accs = []
    for r in range(repeats):
        for task in task_names:
            idx = [i for i, (rr, tt, _, _, _) in enumerate(problems) if rr == r and tt == task]
            y_np = problems[idx[0]][3]
            s = np.empty(len(labels))
            for i in idx:
                test = ~train[i].numpy()
                s[test] = scores_all[i].numpy()[test]
                if task == "probe":
                    tr = train[i].numpy()
                    train_accs.append(float(((scores_all[i].numpy()[tr] > 0) == (y_np[tr] == 1)).mean()))
            correct = ((s > 0) == (y_np == 1)).astype(float)
            p_rows, n_rows = np.where(y_np[pos] == 1, pos, neg), np.where(y_np[pos] == 1, neg, pos)
            # Ties (identical features, e.g. CLS before the first layer) count half.
            paired = (s[p_rows] > s[n_rows]) + 0.5 * (s[p_rows] == s[n_rows])
            tasks[task].append(((correct[pos] + correct[neg]) / 2, paired.astype(float)))
    # Folds differ by at most one pair: at least n - ceil(n/k) pairs train, at most ceil(n/k) test.
    measured: dict = {}
    for task, prefix in (("probe", ""), ("control", "control_")):
        if task not in tasks:
            continue
        acc = np.mean([a for a, _ in tasks[task]], 0)  # per pair, over repeats
        paired = np.mean([p for _, p in tasks[task]], 0)
        for name, v in (("accuracy", acc), ("paired_accuracy", paired)):
            lo, hi = bootstrap_ci(v, n_boot, seed)
            measured[f"{prefix}{name}"] = float(v.mean())
            measured[f"{prefix}{name}_ci95"] = [float(lo), float(hi)]
    return CrossValidatedProbe(
        pairs=int(len(uniq)),
        folds=k,
        repeats=repeats,
        train_pairs_per_fold=int(len(uniq) - int(np.ceil(len(uniq) / k))),
        test_pairs_per_fold=int(np.ceil(len(uniq) / k)),
        train_accuracy=float(np.mean(train_accs)),
        **measured,
    )


# ------------------------------------------------------------------------------ nested selection
def _standardised_fits(
    x: torch.Tensor, trains: np.ndarray, ys: np.ndarray, x_index: np.ndarray, l2: float, max_bytes: float = 2**28
) -> np.ndarray:
    """Scores [P, n] of P logistic probes on x [n, d]: problem p fits labels ys[p] on the rows
    trains[x_index[p]] (x standardised with those rows' statistics) and scores every row. Problems
    that share a training set share its standardised x and span; fitted in chunks of training sets."""
    n, d = x.shape
    G = len(trains)
    chunk = max(1, int(max_bytes // max(1, 8 * n * d)))
    scores = np.empty((len(x_index), n))
    for g0 in range(0, G, chunk):
        gs = list(range(g0, min(G, g0 + chunk)))
        probs = np.nonzero((x_index >= g0) & (x_index < g0 + len(gs)))[0]
        if not len(probs):
            continue
        xs = []
        for g in gs:
            tr = torch.from_numpy(trains[g])
            mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-8)
            xs.append((x - mu) / sd)
        xs = torch.stack(xs)
        local = torch.from_numpy(x_index[probs] - g0)
        train = torch.from_numpy(trains[x_index[probs]])
        w, b = fit_logistic_batched(xs, torch.as_tensor(ys[probs], dtype=torch.float64), train, l2, x_index=local)
        scores[probs] = (torch.einsum("pnd,pd->pn", xs[local], w) + b[:, None]).numpy()
    return scores


def _pair_scores(
    s: np.ndarray, y: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair: accuracy of its two clips, paired accuracy (ties half) and the mean log-loss of its clips."""
    correct = ((s > 0) == (y == 1)).astype(float)
    p_rows, n_rows = np.where(y[pos] == 1, pos, neg), np.where(y[pos] == 1, neg, pos)
    paired = (s[p_rows] > s[n_rows]) + 0.5 * (s[p_rows] == s[n_rows])
    loss = np.logaddexp(0, -np.where(y == 1, s, -s))  # binary cross-entropy of each row's score
    return (correct[pos] + correct[neg]) / 2, paired.astype(float), (loss[pos] + loss[neg]) / 2


@dataclass(frozen=True)
class NestedProbe:
    """nested_cross_validated_probe's result: the accuracy of *choosing a configuration and then probing
    with it*, estimated on pairs that neither the choice nor the fit saw. Accuracies as in
    CrossValidatedProbe (paired accuracy: share of pairs whose positive clip scores above its
    negative); ``chosen[r][f]`` is the configuration the inner cross-validation of outer fold f in
    repeat r picked (highest inner paired accuracy, ties by lower inner log-loss)."""

    configurations: list[str]
    pairs: int
    folds: int  # outer folds
    inner_folds: int  # at most; fewer where an outer training set has fewer pairs
    repeats: int
    accuracy: float
    accuracy_ci95: list[float]
    paired_accuracy: float
    paired_accuracy_ci95: list[float]
    chosen: list[list[str]]
    control_accuracy: float | None = None  # the same procedure on the control task (labels swapped in half the pairs)
    control_accuracy_ci95: list[float] | None = None
    control_paired_accuracy: float | None = None
    control_paired_accuracy_ci95: list[float] | None = None
    control_chosen: list[list[str]] | None = None
    # each pair's held-out paired accuracy (positive above negative, ties half), mean over repeats (probe task)
    per_pair_paired_accuracy: list[float] | None = None

    @property
    def selectivity(self) -> float | None:
        """accuracy - control_accuracy (Hewitt & Liang), both of the whole select-then-probe procedure."""
        return None if self.control_accuracy is None else self.accuracy - self.control_accuracy

    @property
    def chosen_counts(self) -> dict[str, int]:
        """How many outer folds (over all repeats) chose each configuration, most chosen first."""
        flat = [c for rep in self.chosen for c in rep]
        counts = {c: flat.count(c) for c in self.configurations if c in flat}
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict:
        out = {
            "configurations": self.configurations,
            "pairs": self.pairs,
            "folds": self.folds,
            "inner_folds": self.inner_folds,
            "repeats": self.repeats,
            "selection": "inner grouped cross-validation on the outer training pairs: highest paired accuracy, ties by lower log-loss",
            "accuracy": self.accuracy,
            "accuracy_ci95": self.accuracy_ci95,
            "paired_accuracy": self.paired_accuracy,
            "paired_accuracy_ci95": self.paired_accuracy_ci95,
            "chosen": self.chosen,
            # most chosen first; a list (its layout does not depend on the configurations' names)
            "chosen_counts": [{"configuration": c, "folds": n} for c, n in self.chosen_counts.items()],
            "control_accuracy": self.control_accuracy,
        }
        if self.control_accuracy is not None:
            out["control_accuracy_ci95"] = self.control_accuracy_ci95
            out["control_paired_accuracy"] = self.control_paired_accuracy
            out["control_paired_accuracy_ci95"] = self.control_paired_accuracy_ci95
            out["control_chosen"] = self.control_chosen
        out["selectivity"] = self.selectivity
        return out


def nested_cross_validated_probe(
    features: dict[str, torch.Tensor | np.ndarray],
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    k: int = 5,
    inner_k: int = 4,
    repeats: int = 5,
    l2: float = 1e-2,
    control: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
) -> NestedProbe:
    """Nested grouped cross-validation of "pick the best configuration, then probe with it".

    ``features``: name -> [n, ...] features of the same rows, one per candidate configuration (e.g.
    layer x pooling). Each repeat splits the pairs into k outer folds exactly as
    ``cross_validated_probe`` with the same seed does (same folds, same control labels); within each
    outer training set an inner grouped ``inner_k``-fold (pairs again; at most one pair per inner fold
    when fewer pairs train) scores every configuration, the best one (inner paired accuracy, ties by
    inner log-loss, then by order) is refitted on the whole outer training set and scores the outer
    test pairs. The outer test pairs take no part in the choice, so the estimate is not inflated by it
    (the argmax of per-configuration cross-validated accuracies is). Intervals: percentile bootstrap
    over pairs of each pair's value averaged over repeats. ``control``: the whole procedure again on
    the control task (choice included); selectivity = accuracy - control accuracy."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if set(np.unique(labels).tolist()) - {0, 1}:
        raise ValueError("probe labels must be 0/1")
    names = list(features)
    if not names:
        raise ValueError("nested_cross_validated_probe needs at least one configuration")
    uniq, pos, neg = _pair_index(labels, groups)
    n_pairs = len(uniq)
    if n_pairs < k or n_pairs - int(np.ceil(n_pairs / k)) < 2:
        raise ValueError(f"nested {k}-fold cross-validation needs at least {max(k, 3)} pairs, got {n_pairs}")
    if inner_k < 2:
        raise ValueError(f"the inner cross-validation needs at least 2 folds, got {inner_k}")
    group_pos = {g: i for i, g in enumerate(uniq)}
    pair_of_row = np.array([group_pos[g] for g in groups])
    rng = np.random.default_rng(seed)  # the outer folds and control labels: cross_validated_probe's draws
    inner_rng = np.random.default_rng([seed, 1])
    task_names = ("probe", "control") if control else ("probe",)
    trains, fits = [], []  # training row masks; (repeat, outer fold, inner fold or -1, train index)
    task_labels = []  # per repeat: {task: labels}
    outer_of_pair = []
    inner_max = 0
    for r in range(repeats):
        outer = np.empty(n_pairs, int)
        outer[rng.permutation(n_pairs)] = np.arange(n_pairs) % k
        outer_of_pair.append(outer)
        flips = np.nonzero(rng.random(n_pairs) < 0.5)[0]
        per_task = {"probe": labels.copy()}
        if control:
            y_c = labels.copy()
            swap = np.isin(pair_of_row, flips)
            y_c[swap] = 1 - y_c[swap]
            per_task["control"] = y_c
        task_labels.append(per_task)
        for f in range(k):
            train_pairs = np.nonzero(outer != f)[0]
            ki = min(inner_k, len(train_pairs))
            inner_max = max(inner_max, ki)
            inner = np.full(n_pairs, -1)
            inner[inner_rng.permutation(train_pairs)] = np.arange(len(train_pairs)) % ki
            fits.append((r, f, -1, len(trains)))
            trains.append((outer != f)[pair_of_row])
            for j in range(ki):
                fits.append((r, f, j, len(trains)))
                trains.append(((inner >= 0) & (inner != j))[pair_of_row])
    trains_np = np.stack(trains)
    # Every problem: (fit, task); a probe and its control share the training set (and so the span).
    problems = [(fit, t) for fit in fits for t in task_names]
    ys = np.stack([task_labels[fit[0]][t] for fit, t in problems])
    x_index = np.array([fit[3] for fit, _ in problems])
    where = {(fit[:3], t): p for p, (fit, t) in enumerate(problems)}
    scores = {}
    for name in names:
        x = torch.as_tensor(np.asarray(features[name]), dtype=torch.float64).flatten(1)
        scores[name] = _standardised_fits(x, trains_np, ys, x_index, l2)
    measured: dict = {}
    chosen_by_task: dict = {}
    for task, prefix in zip(task_names, ("", "control_")):
        accs, paireds, chosen = [], [], []
        for r in range(repeats):
            y = task_labels[r][task]
            outer = outer_of_pair[r]
            s_outer = np.empty(len(labels))
            chosen_r = []
            for f in range(k):
                train_pair = outer != f
                inner_fits = [fit for fit in fits if fit[:2] == (r, f) and fit[2] >= 0]
                best = None
                for ci, name in enumerate(names):
                    s_in = np.zeros(len(labels))
                    for fit in inner_fits:
                        test_rows = trains_np[[ff[3] for ff in fits if ff[:3] == (r, f, -1)][0]] & ~trains_np[fit[3]]
                        s_in[test_rows] = scores[name][where[(fit[:3], task)]][test_rows]
                    _, paired_in, loss_in = _pair_scores(s_in, y, pos, neg)
                    key = (-paired_in[train_pair].mean(), loss_in[train_pair].mean(), ci)
                    if best is None or key < best[0]:
                        best = (key, name)
                name = best[1]
                chosen_r.append(name)
                test_rows = ~train_pair[pair_of_row]
                s_outer[test_rows] = scores[name][where[((r, f, -1), task)]][test_rows]
            a, p, _ = _pair_scores(s_outer, y, pos, neg)
            accs.append(a)
            paireds.append(p)
            chosen.append(chosen_r)
        chosen_by_task[task] = chosen
        if task == "probe":
            per_pair = np.mean(paireds, 0).tolist()
        for metric, v in (("accuracy", np.mean(accs, 0)), ("paired_accuracy", np.mean(paireds, 0))):
            lo, hi = bootstrap_ci(v, n_boot, seed)
            measured[f"{prefix}{metric}"] = float(v.mean())
            measured[f"{prefix}{metric}_ci95"] = [float(lo), float(hi)]
    return NestedProbe(
        configurations=names,
        pairs=int(n_pairs),
        folds=k,
        inner_folds=int(inner_max),
        repeats=repeats,
        chosen=chosen_by_task["probe"],
        control_chosen=chosen_by_task.get("control"),
        per_pair_paired_accuracy=per_pair,
        **measured,
    )
