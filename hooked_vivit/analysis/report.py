"""Figures and the self-contained HTML report, drawn from the experiments' data."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

COLORS = {
    "resid_pre": "#1f77b4",
    "resid_post": "#9467bd",
    "attn_out": "#ff7f0e",
    "mlp_out": "#2ca02c",
    "attn": "#ff7f0e",
    "mlp": "#2ca02c",
    "temporal_attn": "#d62728",
}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _layer_axis(ax, n: int, labels: list | None = None, label: str = "layer", axis: str = "x", **kw) -> None:
    """An axis of layers: one integer tick per layer (never 0.5 or -0.5), labelled."""
    ticks = list(range(n))
    names = [str(v) for v in (labels if labels is not None else ticks)]
    if axis == "x":
        ax.set_xticks(ticks, names, **kw)
        ax.set_xlabel(label)
    else:
        ax.set_yticks(ticks, names, **kw)
        ax.set_ylabel(label)


def fig_deltas(deltas: dict, path: Path, ci: dict | None = None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    n = max(len(v) for where in ("cls", "tokens") for v in deltas[where].values())
    for ax, where in zip(axes, ("cls", "tokens")):
        for kind, values in deltas[where].items():
            x = np.arange(len(values))
            ax.plot(x, values, "o-", color=COLORS[kind], label=kind, ms=4)
            if ci and where in ci and kind in ci[where]:
                lo, hi = ci[where][kind]
                ax.fill_between(x, lo, hi, color=COLORS[kind], alpha=0.2)
        ro = deltas.get("readout", "CLS")
        ax.set_title(
            f"at the {ro} token"
            if where == "cls" and ro == "CLS"
            else f"at the {ro}"
            if where == "cls"
            else "mean over tokens"
        )
        _layer_axis(ax, n, deltas.get("layers"), "layer (block index; resid_pre enters it, the rest leave it)")
        ax.set_ylabel(
            "L2 norm of positive - negative\n(residual-stream units)"
            if where == "cls"
            else "mean per-token L2 norm of\npositive - negative (residual-stream units)"
        )
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def _component_bars(per_component: dict) -> list[tuple[float, str, float]]:
    """(offset, component, width) of each component's bars: attn and mlp, and TimeSformer's temporal_attn first."""
    comps = [c for c in ("temporal_attn", "attn", "mlp") if c in per_component]
    width = 0.8 / len(comps)
    return [(width * (i - (len(comps) - 1) / 2), c, width) for i, c in enumerate(comps)]


def fig_recovery(rec: dict, path: Path, kind: str = "projection", ci: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    L = len(rec[kind]["attn"])
    x = np.arange(L)
    for offset, comp, width in _component_bars(rec[kind]):
        values = np.array(rec[kind][comp]) * 100
        err = None
        if ci and comp in ci:
            lo, hi = np.array(ci[comp][0]) * 100, np.array(ci[comp][1]) * 100
            err = np.stack([values - lo, hi - values])
        ax.bar(x + offset, values, width, color=COLORS[comp], label=f"{comp} block", yerr=err, capsize=2)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.axhline(0, color="k", lw=0.5)
    _layer_axis(ax, L, label="patched layer (block index)")
    ax.set_ylabel(RECOVERY_UNITS.get(kind, f"{kind} (%)"), fontsize=8)
    ax.set_title(VARIANT_LABELS.get(kind, kind), fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_dla(dla: dict, path: Path) -> Path:
    heat = np.array(dla["heatmap"])  # [slots, rows, cols]
    T = heat.shape[0]
    cols = min(T, 8)
    rows = int(np.ceil(T / cols))
    vmax = np.abs(heat).max() or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows + 0.4), squeeze=False)
    for t in range(rows * cols):
        ax = axes[t // cols][t % cols]
        ax.axis("off")
        if t < T:
            im = ax.imshow(heat[t], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"slot {t}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"direct attribution to '{dla['class_name']}' (logits)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def fig_cls_attention(
    att: dict,
    frames: np.ndarray,
    tubelet_t: int,
    path: Path,
    layer_index: int = -1,
    patch_size: tuple[int, int] | None = None,
) -> Path:
    grid = np.array(att["grid"])[layer_index]  # [heads, slots, rows, cols]
    heads, T = grid.shape[0], grid.shape[1]
    slots = sorted(set(np.linspace(0, T - 1, min(T, 6)).round().astype(int).tolist()))
    fig, axes = plt.subplots(heads, len(slots), figsize=(1.7 * len(slots), 1.7 * heads), squeeze=False)
    H, W = frames.shape[1:3]
    if patch_size is not None:  # the tokens' pixels only: the bottom/right remainder no token sees stays bare
        H, W = grid.shape[2] * patch_size[0], grid.shape[3] * patch_size[1]
    for h in range(heads):
        for j, t in enumerate(slots):
            ax = axes[h][j]
            ax.imshow(frames[t * tubelet_t])
            # One colour scale per head across frames, so frames compare.
            ax.imshow(
                grid[h, t],
                cmap="magma",
                alpha=0.55,
                extent=(0, W, H, 0),
                interpolation="nearest",
                vmin=0,
                vmax=grid[h].max(),
            )
            ax.set_xticks([]), ax.set_yticks([])
            if h == 0:
                ax.set_title(f"frame {t * tubelet_t}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"head {h}", fontsize=8)
    fig.suptitle(
        "pooler query attention (its cross-attention over the last layer's tokens)"
        if att["layers"][layer_index] == "pooler"
        else f"{'CLS' if att.get('readout', 'CLS') == 'CLS' else att['readout']} attention, layer {att['layers'][layer_index]}",
        fontsize=9,
    )
    return _save(fig, path)


def fig_frames(pos: np.ndarray, neg: np.ndarray, names: tuple[str, str], path: Path) -> Path:
    from hooked_vivit.synthetic import frame_grid

    img = frame_grid([pos, neg], labels=list(names))
    fig, ax = plt.subplots(figsize=(12, 3.4))
    ax.imshow(img)
    ax.axis("off")
    return _save(fig, path)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def write_html(out: Path, title: str, intro: str, sections: list[tuple[str, Path | None, str, str]]) -> Path:
    """sections: (heading, figure, caption, extra HTML)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}p.caption{color:#444;font-style:italic}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "code{background:#f4f4f4;padding:1px 4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro,
    ]
    for heading, fig, caption, extra in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if fig is not None:
            parts.append(_img(fig))
        parts.append(f"<p class='caption'>{html.escape(caption)}</p>")
        parts.append(extra)
    parts.append("<p>Every number behind every figure is in <code>results.json</code>.</p></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def table_html(rows: list[dict], columns: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(format(r[c], fmt.get(c, '')) if not isinstance(r[c], str) else r[c])}</td>"
            for c in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def to_jsonable(obj: Any) -> Any:
    import torch

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(to_jsonable(data), indent=1) + "\n")


# ------------------------------------------------------------------------------ generated sentences
def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path of results ("recovery.variants.cls_projection.attn.2"; integers,
    negative too, index lists)."""
    for part in path.split("."):
        if isinstance(data, list):
            data = data[int(part)]
        else:
            data = data[part]
    return data


class Caption:
    """Builds a sentence from values of ``results``, remembering where every number came from, so a
    test can check each number of the text against results.json: ``v(path, fmt)`` formats the value at
    ``path``; ``record(section, text)`` stores {"section", "text", "numbers": [[path, fmt], ...]}."""

    def __init__(self, results: dict):
        self.results = results
        self.numbers: list[list[str]] = []
        self.captions: list[dict] = results.setdefault("captions", [])

    def v(self, path: str, fmt: str = "") -> str:
        self.numbers.append([path, fmt])
        return format_number(lookup(self.results, path), fmt)

    def record(self, section: str, text: str) -> str:
        self.captions.append({"section": section, "text": text, "numbers": self.numbers})
        self.numbers = []
        return text


def format_number(value: Any, fmt: str) -> str:
    return format(value, fmt)


NUMBER = r"[+-]?\d+(?:\.\d+)?%?"


def numbers_in(text: str, strip: tuple[str, ...] = ()) -> list[str]:
    """The numbers written in a sentence (after removing verbatim names such as the model's)."""
    import re

    for s in sorted(strip, key=len, reverse=True):
        if s:
            text = text.replace(s, " ")
    return re.findall(NUMBER, text)


# ------------------------------------------------------------------------------------------- scope
# The reference paper's claims (docs/reference-paper.md), in its order. Its model has 12 layers (0-11).
PAPER_LAYERS = 12
PAPER_CLAIMS = (
    {
        "id": "deltas",
        "claim": "The activation difference of the two clips rises sharply from layer 5 to layer 11 (an 'amplification "
        "cascade', Figure 1)",
        "method": "(a) activation differences per layer",
    },
    {
        "id": "attention_recovery",
        "claim": "A single attention block recovers 45-65 % of the layer-11 signal difference (Figure 2)",
        "method": "(b) component patching",
    },
    {
        "id": "mlp_recovery",
        "claim": "Any single MLP block from layer 4 on recovers more than 100 % of the layer-11 signal difference (Figure 2)",
        "method": "(b) component patching",
    },
    {
        "id": "dla_objects",
        "claim": "Direct logit attribution to the class concentrates on the tokens of the ball and pins in the later "
        "frames, near impact (Figure 3)",
        "method": "(c) token attribution and its enrichment on each object",
    },
    {
        "id": "cls_attention",
        "claim": "CLS attention at layers 9 and 10 concentrates on the ball-pin region in later frames (Figure 4)",
        "method": "(d) CLS attention per layer and head",
    },
    {
        "id": "region_ablation",
        "claim": "Zeroing the critical ball-pin region barely moves the class logit (Table 1)",
        "method": "(e) region ablation of the class logit, against matched boxes",
    },
    {
        "id": "probe_fingerprint",
        "claim": "A linear probe on CLS at 100 % from layer 0 on is a fingerprint of pixel differences, not a concept "
        "(Figure 5)",
        "method": "(f) outcome probes beside pixel baselines",
    },
    {
        "id": "gather_compose",
        "claim": "Attention gathers the evidence, MLPs compose the concept (the paper's title)",
        "method": "(b) component patching on the outcome logit difference",
    },
)
TESTABLE, MAPPED, NOT_TESTABLE = "testable", "testable, layers mapped", "not testable"


def paper_layer(layer: int, n_layers: int) -> int:
    """The layer of an ``n_layers`` model at the proportional depth of the paper's ``layer`` (of 12)."""
    return int(round(layer / (PAPER_LAYERS - 1) * (n_layers - 1)))


def has_outcome_logits(cfg) -> bool:
    """Whether the model's labels name both outcomes of a rendered domain ("bowling strike", "bowling gutter")."""
    from hooked_vivit import synthetic

    labels = set((cfg.label2id or {}).keys()) | {str(v) for v in cfg.id2label.values()}
    return any(all(f"{key} {o}" in labels for o in synthetic.OUTCOMES[dom]) for key, dom in synthetic.DOMAINS.items())


def _claim_status(cfg, readout: str, outcome_logits: bool) -> list[dict]:
    """Each paper claim: whether this model can test it, why, and what is mapped."""
    L = cfg.n_layers
    same = L == PAPER_LAYERS
    depth = "the paper's layers" if same else f"by proportional depth (paper layer l of 12 -> round(l / 11 x {L - 1}))"
    lo, hi = paper_layer(5, L), paper_layer(11, L)
    m4, m9, m10 = paper_layer(4, L), paper_layer(9, L), paper_layer(10, L)
    out = []
    for c in PAPER_CLAIMS:
        status, why, mapped = TESTABLE, "", None
        if c["id"] == "deltas":
            mapped = {"paper": [5, 11], "here": [lo, hi]}
            if hi - lo + 1 < 3:
                status, why = (
                    NOT_TESTABLE,
                    (
                        f"layers 5-11 of 12 map to layers {lo}-{hi} of this {L}-layer model, fewer than 3 layers: no trend "
                        "over depth can be tested"
                    ),
                )
            else:
                status = TESTABLE if same else MAPPED
                why = f"layers 5-11 mapped {depth} to layers {lo}-{hi}; a rise is tested by Spearman's correlation of the mean per-token difference with the layer"
        elif c["id"] == "attention_recovery":
            why = (
                f"the paper's 'layer-11 signal difference' is read as cls_projection on the last layer's resid_post (layer {L - 1}); "
                "one pair, like the paper's; the study gives intervals over pairs"
            )
            status = TESTABLE if same else MAPPED
        elif c["id"] == "mlp_recovery":
            mapped = {"paper": [4], "here": [m4]}
            status = TESTABLE if same else MAPPED
            why = f"layer 4 mapped {depth} to layer {m4}; recovery read as cls_projection on the last layer"
        elif c["id"] == "dla_objects":
            why = "needs the renderer's object masks: a rendered pair (--domain), not two video files"
        elif c["id"] == "cls_attention":
            mapped = {"paper": [9, 10], "here": [m9, m10]}
            if readout != "CLS":
                status, why = (
                    NOT_TESTABLE,
                    (
                        f"the model has no CLS token (its classifier reads the {readout}); the report shows that readout's "
                        "attention instead"
                    ),
                )
            else:
                status = TESTABLE if same else MAPPED
                why = f"layers 9 and 10 mapped {depth} to layers {m9} and {m10}; needs object masks (a rendered pair)"
        elif c["id"] == "region_ablation":
            why = (
                "the class is the positive clip's top class (the paper's is Kinetics-400 class 31, bowling); "
                "the box is chosen on the pair and tested on it, so the test is descriptive"
            )
        elif c["id"] == "probe_fingerprint":
            why = "needs probes on many rendered pairs of a domain (--probe-pairs >= 5); the paper used one pair"
        elif c["id"] == "gather_compose":
            if not outcome_logits:
                status, why = (
                    NOT_TESTABLE,
                    (
                        "the model has no logit per outcome (it was never trained on outcomes, and no --outcome-classes "
                        "were given), so whether a block restores the outcome decision (logit-difference recovery) cannot "
                        "be asked; only which blocks restore the representation (claims 2 and 3)"
                    ),
                )
            else:
                why = "logit-difference recovery of the outcome logits; one pair is descriptive, the study tests it over pairs"
        out.append(
            {
                "id": c["id"],
                "claim": c["claim"],
                "method": c["method"],
                "status": status,
                "testable": status != NOT_TESTABLE,
                "needs": why,
                "mapped_layers": mapped,
            }
        )
    return out


def scope(model: HookedVideoTransformer, trained_on: str | None = None, *, outcome_logits: bool | None = None) -> dict:
    """What the report is about: the model's shape, its training data and, for each of the reference
    paper's eight claims, whether this model can test it, why, and which of its layers stand for the
    paper's (scope_findings adds what a run found)."""
    from hooked_vivit.causal.logit_attribution import readout_name

    cfg = model.cfg
    g = cfg.grid
    organism = cfg.model_name == "hooked-vivit-organism"
    if trained_on is None:
        if organism:
            trained_on = (
                "procedurally rendered clips of 6 actions (hooked_vivit.synthetic; MODEL_CARD.md), outcomes never labels; "
                "seeds listed in seed_ranges.json"
            )
        elif len(cfg.id2label) == 400 and cfg.id2label.get(31) == "bowling":
            trained_on = "Kinetics-400 (by its label set)"
        else:
            trained_on = f"not known to hooked-vivit ({len(cfg.id2label)} classes)"
    if outcome_logits is None:
        outcome_logits = has_outcome_logits(cfg)
    return {
        "model": cfg.model_name,
        "layers": cfg.n_layers,
        "heads": cfg.n_heads,
        "d_model": cfg.d_model,
        "frames": cfg.num_frames,
        "pixels": list(cfg.image_size),
        "tubelet": list(cfg.tubelet_size),
        "tokens": g.n_ctx,
        "token_grid": list(g.shape),
        "classes": len(cfg.id2label),
        "trained_on": trained_on,
        "claims": _claim_status(cfg, readout_name(model), outcome_logits),
        "organism": organism,
        "organism_note": (
            f"Findings in this report are about {cfg.model_name}, a {cfg.n_layers}-layer model trained on rendered clips, "
            "not about ViViT-B: they show what the methods measure, not what ViViT-B does."
        )
        if organism
        else None,
    }


def spearman_rise(values: list[float]) -> dict:
    """Spearman's rank correlation of ``values`` with their index, and the one-sided p-value of a rise
    (rho at least the observed under random order): exact over every permutation up to 8 values, else
    scipy's. {"n", "rho", "p", "exact"}."""
    import itertools

    from scipy import stats

    v = np.asarray(values, dtype=float)
    n = len(v)
    rho = float(stats.spearmanr(np.arange(n), v).statistic) if n > 1 else float("nan")
    if n <= 8:
        r = stats.rankdata(v)
        x = np.arange(n) - (n - 1) / 2
        obs = float(x @ (r - r.mean()))
        perms = [float(x @ (np.array(p) - r.mean())) for p in itertools.permutations(r)]
        p = float(np.mean([q >= obs - 1e-12 for q in perms]))
        return {"n": n, "rho": rho, "p": p, "exact": True}
    return {
        "n": n,
        "rho": rho,
        "p": float(stats.spearmanr(np.arange(n), v, alternative="greater").pvalue),
        "exact": False,
    }


def _claim_tests(results: dict, alpha: float) -> dict[str, dict | None]:
    """The numbers each claim's finding is read from, computed from results (None: nothing to read)."""
    out: dict[str, dict | None] = {}
    claims = {c["id"]: c for c in results["scope"]["claims"]}
    # 1: the mean per-token difference after each layer over the mapped range, a one-sided Spearman test of a rise
    c = claims["deltas"]
    if c["testable"]:
        lo, hi = c["mapped_layers"]["here"]
        vals = results["deltas"]["tokens"]["resid_post"][lo : hi + 1]
        t = spearman_rise(vals)
        out["deltas"] = {
            **t,
            "layers": [lo, hi],
            "first": vals[0],
            "last": vals[-1],
            "alpha": alpha,
            "rises": bool(t["rho"] > 0 and t["p"] <= alpha),
        }
    rec = results["recovery"]["variants"].get("cls_projection")
    if rec is not None:
        a = rec["attn"]
        out["attention_recovery"] = {
            "variant": "cls_projection",
            "min": min(a),
            "max": max(a),
            "paper_range": [0.45, 0.65],
            "in_range": sum(0.45 <= v <= 0.65 for v in a),
            "of": len(a),
        }
        m4 = claims["mlp_recovery"]["mapped_layers"]["here"][0]
        m = rec["mlp"][m4:]
        out["mlp_recovery"] = {
            "variant": "cls_projection",
            "from_layer": m4,
            "min": min(m),
            "max": max(m),
            "threshold": 1.0,
            "above": sum(v > 1.0 for v in m),
            "of": len(m),
        }
    enr = results.get("outcome", {}).get("enrichment")
    if enr:
        w = "|class DLA| (positive clip)"
        out["dla_objects"] = {
            "objects": {
                o: {"enrichment": e[w]["enrichment"], "enrichment_differing": e[w].get("enrichment_differing")}
                for o, e in enr.items()
            },
            "top_tokens_before_divergence": results["dla"].get("top_tokens_before_divergence"),
            "top_tokens_n": results["dla"].get("top_tokens_n"),
        }
    ca = results.get("cls_attention", {})
    shares = ca.get("object_share")
    if claims["cls_attention"]["testable"] and shares:
        layers = claims["cls_attention"]["mapped_layers"]["here"]
        objs = {}
        for o in [k for k in shares if not k.endswith(")")]:
            share = float(np.mean([np.mean(shares[o][l]) for l in sorted(set(layers))]))
            base = shares.get(f"{o} (token share of the grid)")
            objs[o] = {"share": share, "base_rate": base, "enrichment": share / base if base else None}
        out["cls_attention"] = {"layers": sorted(set(layers)), "objects": objs}
    ra = results.get("region_ablation", {})
    if ra.get("change") is not None:
        out["region_ablation"] = {
            k: ra.get(k)
            for k in (
                "change",
                "relative_change",
                "control_mean",
                "control_p",
                "control_p_holm",
                "box_tokens",
                "n_tokens",
            )
        }
        out["region_ablation"]["alpha"] = alpha
    pc = results.get("probes", {}).get("pixel_ceiling")
    if pc:
        out["probe_fingerprint"] = pc
    if results["recovery"].get("headline") == "logit_diff" and "logit_diff" in results["recovery"]["variants"]:
        ld = results["recovery"]["variants"]["logit_diff"]
        out["gather_compose"] = {"attn_mean": float(np.mean(ld["attn"])), "mlp_mean": float(np.mean(ld["mlp"]))}
    return out


def scope_findings(results: dict, cap: Caption | None = None, alpha: float = 0.05) -> dict[str, str]:
    """After an analysis: each testable claim's finding, a sentence generated from results (every number
    through ``cap``, so it is checked against results.json like a caption), the numbers it reads kept
    under results["scope"]["claims"][i]["test"]; claim 8 becomes testable where the run read outcome logits."""
    cap = cap or Caption(results)
    sc = results["scope"]
    if results["recovery"].get("headline") == "logit_diff":
        for c in sc["claims"]:
            if c["id"] == "gather_compose":
                c.update(
                    status=TESTABLE,
                    testable=True,
                    needs="logit-difference recovery of the outcome logits; one pair is descriptive, the study tests it over pairs",
                )
    tests = _claim_tests(results, alpha)
    out = {}
    for i, c in enumerate(sc["claims"]):
        c["test"] = tests.get(c["id"])
        b = f"scope.claims.{i}.test"
        t = c["test"]
        if not c["testable"] or t is None:
            c["finding"] = None
            continue
        if c["id"] == "deltas":
            text = (
                f"Mean per-token difference after layers {cap.v(b + '.layers.0')} to {cap.v(b + '.layers.1')}: "
                f"{cap.v(b + '.first', '.3f')} to {cap.v(b + '.last', '.3f')}; Spearman rho with the layer "
                f"{cap.v(b + '.rho', '+.2f')}, one-sided {'exact ' if t['exact'] else ''}p = {cap.v(b + '.p', '.3f')} over "
                f"{cap.v(b + '.n')} layers: "
                + ("it rises at the " if t["rises"] else "no rise shown at the ")
                + f"{cap.v(b + '.alpha', '.0%')} level."
            )
        elif c["id"] == "attention_recovery":
            text = (
                f"Attention blocks recover {cap.v(b + '.min', '.0%')} to {cap.v(b + '.max', '.0%')} (cls_projection); "
                f"{cap.v(b + '.in_range')} of {cap.v(b + '.of')} lie in the paper's {cap.v(b + '.paper_range.0', '.0%')} to "
                f"{cap.v(b + '.paper_range.1', '.0%')} (one pair, no interval)."
            )
        elif c["id"] == "mlp_recovery":
            text = (
                f"MLP blocks from layer {cap.v(b + '.from_layer')} on recover {cap.v(b + '.min', '.0%')} to "
                f"{cap.v(b + '.max', '.0%')} (cls_projection); {cap.v(b + '.above')} of {cap.v(b + '.of')} exceed "
                f"{cap.v(b + '.threshold', '.0%')} (one pair, no interval)."
            )
        elif c["id"] == "dla_objects":
            parts = [
                f"{o}: enrichment {cap.v(f'{b}.objects.{o}.enrichment', '.2f')} over all tokens"
                + (
                    f", {cap.v(f'{b}.objects.{o}.enrichment_differing', '.2f')} over the differing tokens"
                    if e["enrichment_differing"] is not None
                    else ""
                )
                for o, e in t["objects"].items()
            ]
            text = (
                "|Class attribution| on each object (share over base rate; one = no preference): "
                + "; ".join(parts)
                + "."
            )
            if t["top_tokens_before_divergence"] is not None:
                text += (
                    f" {cap.v(b + '.top_tokens_before_divergence')} of the {cap.v(b + '.top_tokens_n')} tokens of greatest "
                    "|attribution| lie before the divergence, where the clips are identical."
                )
        elif c["id"] == "cls_attention":
            parts = [
                f"{o}: {cap.v(f'{b}.objects.{o}.share', '.1%')} of CLS attention against a base rate of "
                f"{cap.v(f'{b}.objects.{o}.base_rate', '.1%')} (enrichment {cap.v(f'{b}.objects.{o}.enrichment', '.2f')})"
                for o in t["objects"]
            ]
            lay = " and ".join(cap.v(f"{b}.layers.{j}") for j in range(len(t["layers"])))
            text = f"Mean over heads at layer{'s' if len(t['layers']) > 1 else ''} {lay}: " + "; ".join(parts) + "."
        elif c["id"] == "region_ablation":
            text = (
                f"The class logit changes by {cap.v(b + '.change', '+.3f')}"
                + (f" ({cap.v(b + '.relative_change', '+.0%')})" if t["relative_change"] is not None else "")
                + f" when the box of {cap.v(b + '.box_tokens')} tokens around the {cap.v(b + '.n_tokens')} tokens of greatest "
                "|attribution| is zeroed"
                + (
                    f"; matched boxes {cap.v(b + '.control_mean', '+.3f')}, p = {cap.v(b + '.control_p', '.3f')}"
                    + (f", Holm p = {cap.v(b + '.control_p_holm', '.3f')}" if t["control_p_holm"] is not None else "")
                    + (
                        ", above "
                        if (t["control_p_holm"] if t["control_p_holm"] is not None else t["control_p"]) > alpha
                        else ", below "
                    )
                    + f"{cap.v(b + '.alpha', '.0%')}; descriptive, not claimed significant: the box is chosen on this pair "
                    "and tested on it."
                    if t["control_p"] is not None
                    else "; no matched boxes, so no test."
                )
            )
        elif c["id"] == "probe_fingerprint":
            text = (
                f"Nested probe paired accuracy {cap.v(b + '.probe', '.0%')} [{cap.v(b + '.probe_ci95.0', '.0%')}, "
                f"{cap.v(b + '.probe_ci95.1', '.0%')}]; the better pixel baseline ({t['baseline']}) {cap.v(b + '.pixels', '.0%')} "
                f"[{cap.v(b + '.pixels_ci95.0', '.0%')}, {cap.v(b + '.pixels_ci95.1', '.0%')}]: "
                + (
                    "a pixel fingerprint by the report's rule"
                    if t["fingerprint"]
                    else "not a pixel fingerprint by the report's rule"
                )
                + " (the pixel baseline's interval above chance and reaching the probe's)."
            )
        elif c["id"] == "gather_compose":
            text = (
                f"Logit-difference recovery, mean over layers: attention blocks {cap.v(b + '.attn_mean', '.0%')}, MLP blocks "
                f"{cap.v(b + '.mlp_mean', '.0%')} (one pair, descriptive; hooked-vivit study tests it over pairs)."
            )
        else:  # pragma: no cover - every claim is handled above
            continue
        c["finding"] = cap.record(f"scope: {c['id']}", text)
        out[c["id"]] = text
    return out


def scope_html(sc: dict) -> str:
    rows = "".join(
        f"<li>{i}. {html.escape(c['claim'])}: "
        + (
            f"<b>{c.get('status', 'not testable')}</b>"
            if not c["testable"]
            else html.escape(c.get("status", "testable"))
        )
        + f" here ({html.escape(c['needs'])})"
        + (
            f"<br><i>This run:</i> {html.escape(c['finding'])}"
            if c.get("finding")
            else "<br><i>Not measured in this run.</i>"
            if c["testable"] and "finding" in c
            else ""
        )
        + "</li>"
        for i, c in enumerate(sc["claims"], 1)
    )
    note = f"<p><b>{html.escape(sc['organism_note'])}</b></p>" if sc.get("organism_note") else ""
    return (
        "<div style='border:2px solid #888;padding:0.5em 1em;margin:1em 0;background:#fafafa'><b>Scope.</b> "
        f"Model <code>{html.escape(sc['model'])}</code>: {sc['layers']} layers, {sc['heads']} heads, d_model {sc['d_model']}, "
        f"{sc['frames']} frames of {sc['pixels'][0]}x{sc['pixels'][1]} px, tubelets {tuple(sc['tubelet'])}, "
        f"{sc['tokens']} tokens ({'1 CLS + ' if sc['tokens'] > int(np.prod(sc['token_grid'])) else ''}{'x'.join(map(str, sc['token_grid']))}), {sc['classes']} classes; trained on "
        f"{html.escape(sc['trained_on'])}. The reference paper's claims, and which this model can test:<ol style='list-style:none;padding-left:0'>{rows}</ol>{note}</div>"
    )


# ------------------------------------------------------------------------------------- new figures
VARIANT_LABELS = {
    "logit_diff": "logit-difference recovery (outcome decision)",
    "cls_projection": "projection at CLS",
    "token_projection": "projection, all tokens",
    "norm_ratio_cls": "norm ratio at CLS",
    "norm_ratio_tokens": "norm ratio, all tokens",
    "norm_recovery": "norm recovery at CLS (bounded)",
    "projection": "projection at CLS",
    "norm": "norm recovery at CLS (bounded)",
}
# The y-axis of each recovery variant: what 100 % is (hooked_vivit.causal.metrics has the formulas).
RECOVERY_UNITS = {
    "logit_diff": "recovery (% of the positive-minus-negative\noutcome logit difference)",
    "cls_projection": "recovery (% of the clean-minus-corrupted\ndifference at CLS, last layer, projected)",
    "projection": "recovery (% of the clean-minus-corrupted\ndifference at CLS, last layer, projected)",
    "token_projection": "recovery (% of the clean-minus-corrupted\ndifference over all tokens, last layer, projected)",
    "norm_ratio_cls": "movement (% of the norm of the clean-minus-\ncorrupted difference at CLS, any direction)",
    "norm_ratio_tokens": "movement (% of the norm of the clean-minus-\ncorrupted difference, all tokens, any direction)",
    "norm_recovery": "recovery (% of the clean-minus-corrupted\ndistance at CLS closed, at most 100 %)",
    "norm": "recovery (% of the clean-minus-corrupted\ndistance at CLS closed, at most 100 %)",
}
# The outcome signals of the outcome-targeted ablation (experiments.OutcomeSignal): title and unit.
SIGNAL_LABELS = {
    "class_logit": ("class logit of the positive clip", "change of the class logit (logits)"),
    "logit_gap": ("logit gap, positive minus negative clip", "change of the logit gap (logits)"),
    "direction": (
        "outcome direction at the readout",
        "change of the direction signal\n(1 = the pair's whole difference)",
    ),
}


def fig_recovery_variants(variants: dict, path: Path, ci: dict | None = None) -> Path:
    """One panel per recovery variant: attention and MLP block of each layer (ci: variant -> comp -> [lo, hi])."""
    names = list(variants)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), sharey=False, squeeze=False)
    for ax, name in zip(axes[0], names):
        L = len(variants[name]["attn"])
        x = np.arange(L)
        for offset, comp, width in _component_bars(variants[name]):
            values = np.array(variants[name][comp]) * 100
            err = None
            if ci and name in ci and comp in ci[name]:
                lo, hi = np.array(ci[name][comp][0]) * 100, np.array(ci[name][comp][1]) * 100
                err = np.stack([values - lo, hi - values])
            ax.bar(x + offset, values, width, color=COLORS[comp], label=comp, yerr=err, capsize=2)
        ax.axhline(100, color="k", lw=0.8, ls="--")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(VARIANT_LABELS.get(name, name), fontsize=8)
        _layer_axis(ax, L, label="patched layer (block index)", fontsize=8)
        ax.xaxis.label.set_fontsize(8)
        ax.set_ylabel(RECOVERY_UNITS.get(name, f"{name} (%)"), fontsize=7)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def fig_outcome_ablation(ablation: dict, path: Path, labels: dict[str, str] | None = None) -> Path:
    """Per region, the change of each outcome signal against the matched control boxes (mean +- sd).
    ``labels``: region -> the name to show (with its size in tokens, where the caller knows it); by
    default the region's name and, where the ablation records it, its size in pixels."""
    regions = list(ablation["regions"])
    signals = ("class_logit", "logit_gap", "direction")

    def name(r: str) -> str:
        if labels and r in labels:
            return labels[r]
        px = ablation["regions"][r].get("pixels")
        return r if px is None else f"{r} ({px} px)"

    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 + 0.45 * len(regions) + 1.6), squeeze=False)
    y = np.arange(len(regions))
    for ax, sig in zip(axes[0], signals):
        ch = [ablation["regions"][r][sig]["change"] for r in regions]
        # no matched box (None): no control bar
        cm = [np.nan if (v := ablation["regions"][r][sig]["control_mean"]) is None else v for r in regions]
        cs = [np.nan if (v := ablation["regions"][r][sig]["control_std"]) is None else v for r in regions]
        ax.barh(y + 0.2, ch, 0.4, color="#d62728", label="the region ablated")
        ax.barh(
            y - 0.2,
            cm,
            0.4,
            xerr=cs,
            color="#aaaaaa",
            label=f"up to {ablation['n_controls']} boxes matched on size and pixel difference (mean, sd)",
            capsize=2,
        )
        ax.axvline(0, color="k", lw=0.5)
        ax.set_yticks(y, [name(r) for r in regions] if sig == "class_logit" else [""] * len(regions), fontsize=7)
        title, unit = SIGNAL_LABELS[sig]
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
    axes[0][0].set_ylabel("region ablated in both clips", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig_enrichment(enr: dict, path: Path, ci: dict | None = None) -> Path:
    """Enrichment (share / base rate) per object and weighting; 1 = no preference."""
    objects = list(enr)
    kinds = list(enr[objects[0]]) if objects else []
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        vals = [enr[o][kind]["enrichment"] or 0.0 for o in objects]
        err = None
        if ci:
            err = np.array([[vals[j] - ci[o][kind][0], ci[o][kind][1] - vals[j]] for j, o in enumerate(objects)]).T
        ax.bar(
            np.arange(len(objects)) + (i - (len(kinds) - 1) / 2) * width, vals, width, label=kind, yerr=err, capsize=2
        )
    ax.axhline(1, color="k", ls="--", lw=0.8)
    ax.set_xticks(np.arange(len(objects)), objects)
    ax.set_xlabel("rendered object")
    ax.set_ylabel("enrichment = share / base rate\n(ratio; 1 = no preference)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def fig_probes_ci(probes: dict, path: Path) -> Path:
    """Accuracy and paired accuracy per layer with bootstrap intervals, controls and both pixel baselines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    x = np.arange(len(probes["layers"]))
    for ax, metric in zip(axes, ("accuracy", "paired_accuracy")):
        for kind, color in [
            (k, c) for k, c in (("cls", "#1f77b4"), ("mean", "#2ca02c")) if k in probes
        ]:  # no CLS: "mean" only
            acc = np.array([r[metric] for r in probes[kind]]) * 100
            lo = np.array([r[f"{metric}_ci95"][0] for r in probes[kind]]) * 100
            hi = np.array([r[f"{metric}_ci95"][1] for r in probes[kind]]) * 100
            ax.errorbar(
                x, acc, yerr=np.stack([acc - lo, hi - acc]), fmt="o-", color=color, label=f"{kind} probe", capsize=2
            )
            ctl = np.array([r[f"control_{metric}"] for r in probes[kind]]) * 100
            ax.plot(x, ctl, "x:", color=color, label=f"{kind} control (swapped within pairs)")
        for key, ls in (("pixels", "--"), ("pixels_mean", "-.")):
            if key in probes:
                ax.axhline(probes[key][metric] * 100, color="gray", ls=ls, label=f"{key} baseline")
        if "nested" in probes:  # the best layer x pooling with the choice cross-validated: its value and interval
            n = probes["nested"]
            lo, hi = (v * 100 for v in n[f"{metric}_ci95"])
            ax.axhspan(lo, hi, color="#d62728", alpha=0.12, lw=0, label="best, choice cross-validated (nested, CI)")
            ax.axhline(n[metric] * 100, color="#d62728", lw=1)
        if "random_weights" in probes:
            ax.axhline(
                probes["random_weights"][metric] * 100, color="#9467bd", ls=":", label="random-weights model (nested)"
            )
        ax.axhline(50, color="k", lw=0.5)
        _layer_axis(ax, len(probes["layers"]), probes["layers"], "probed activation (layer)", rotation=30, fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_ylabel(f"held-out {metric.replace('_', ' ')} (%)")
    axes[0].legend(fontsize=6)
    return _save(fig, path)
