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


def fig_deltas(deltas: dict, path: Path, ci: dict | None = None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for ax, where in zip(axes, ("cls", "tokens")):
        for kind, values in deltas[where].items():
            x = np.arange(len(values))
            ax.plot(x, values, "o-", color=COLORS[kind], label=kind, ms=4)
            if ci and where in ci and kind in ci[where]:
                lo, hi = ci[where][kind]
                ax.fill_between(x, lo, hi, color=COLORS[kind], alpha=0.2)
        ax.set_title(f"at the {deltas.get('readout', 'CLS')}" if where == "cls" else "mean over tokens")
        ax.set_xlabel("layer")
        ax.set_ylabel("||positive - negative||")
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
    ax.set_xlabel("patched layer")
    what = "outcome logit difference" if kind == "logit_diff" else "last-layer difference"
    ax.set_ylabel(f"recovery of {what} (%)\n[{kind}]")
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
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"direct attribution to '{dla['class_name']}'")
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


def fig_probes(probes: dict, path: Path, ci: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(probes["layers"]))
    for kind, color in [
        (k, c) for k, c in (("cls", "#1f77b4"), ("mean", "#2ca02c")) if k in probes
    ]:  # no CLS: "mean" only
        acc = np.array([r["accuracy"] for r in probes[kind]]) * 100
        ctl = np.array([r["control_accuracy"] for r in probes[kind]]) * 100
        ax.plot(x, acc, "o-", color=color, label=f"{kind} probe")
        ax.plot(x, ctl, "x:", color=color, label=f"{kind} control (shuffled by pair)")
    ax.axhline(probes["pixels"]["accuracy"] * 100, color="gray", ls="--", label="pixel-space baseline")
    ax.axhline(50, color="k", lw=0.5)
    ax.set_xticks(x, probes["layers"], rotation=30, fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_ylabel("held-out outcome accuracy (%)")
    ax.legend(fontsize=7)
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
PAPER_CLAIMS = (
    (
        "Single MLP blocks from layer 4 on recover more than 100 % of the final-layer signal",
        "at least 5 layers",
        lambda cfg: cfg.n_layers >= 5,
    ),
    ("The signal is measured at layer 11, the last of 12", "12 layers", lambda cfg: cfg.n_layers == 12),
    (
        "Both clips are classified as class 31 'bowling'",
        "the Kinetics-400 label set (class 31 = bowling)",
        lambda cfg: cfg.id2label.get(31) == "bowling",
    ),
    (
        "Attention blocks gather evidence, MLP blocks compose the concept (component patching)",
        "any model",
        lambda cfg: True,
    ),
    (
        "The outcome is encoded in the representation (probes, one pair in the paper)",
        "rendered pairs of a domain the model knows",
        lambda cfg: any(v in ("bowling", "golf putting", "shooting basketball") for v in cfg.id2label.values()),
    ),
)


def scope(model: HookedVideoTransformer, trained_on: str | None = None) -> dict:
    """What the report is about: the model's shape, its training data and which of the reference
    paper's claims it can and cannot test."""
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
    claims = [{"claim": c, "needs": needs, "testable": bool(test(cfg))} for c, needs, test in PAPER_CLAIMS]
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
        "claims": claims,
        "organism": organism,
        "organism_note": (
            f"Findings in this report are about {cfg.model_name}, a {cfg.n_layers}-layer model trained on rendered clips, "
            "not about ViViT-B: they show what the methods measure, not what ViViT-B does."
        )
        if organism
        else None,
    }


def scope_html(sc: dict) -> str:
    rows = "".join(
        f"<li>{'can' if c['testable'] else '<b>cannot</b>'} test: {html.escape(c['claim'])} (needs {html.escape(c['needs'])})</li>"
        for c in sc["claims"]
    )
    note = f"<p><b>{html.escape(sc['organism_note'])}</b></p>" if sc.get("organism_note") else ""
    return (
        "<div style='border:2px solid #888;padding:0.5em 1em;margin:1em 0;background:#fafafa'><b>Scope.</b> "
        f"Model <code>{html.escape(sc['model'])}</code>: {sc['layers']} layers, {sc['heads']} heads, d_model {sc['d_model']}, "
        f"{sc['frames']} frames of {sc['pixels'][0]}x{sc['pixels'][1]} px, tubelets {tuple(sc['tubelet'])}, "
        f"{sc['tokens']} tokens ({'1 CLS + ' if sc['tokens'] > int(np.prod(sc['token_grid'])) else ''}{'x'.join(map(str, sc['token_grid']))}), {sc['classes']} classes; trained on "
        f"{html.escape(sc['trained_on'])}.<ul>{rows}</ul>{note}</div>"
    )


# ------------------------------------------------------------------------------------- new figures
VARIANT_LABELS = {
    "logit_diff": "logit-difference recovery (outcome decision)",
    "cls_projection": "projection at CLS",
    "token_projection": "projection, all tokens",
    "norm_ratio_cls": "norm ratio at CLS",
    "norm_ratio_tokens": "norm ratio, all tokens",
    "norm_recovery": "norm recovery at CLS (bounded)",
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
        ax.set_xlabel("patched layer", fontsize=8)
        ax.set_xticks(x)
    axes[0][0].set_ylabel("% recovered (logit difference or last-layer difference; see titles)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def fig_outcome_ablation(ablation: dict, path: Path) -> Path:
    """Per region, the change of each outcome signal against the matched control boxes (mean +- sd)."""
    regions = list(ablation["regions"])
    signals = ("class_logit", "logit_gap", "direction")
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 + 0.45 * len(regions) + 1.2), squeeze=False)
    y = np.arange(len(regions))
    for ax, sig in zip(axes[0], signals):
        ch = [ablation["regions"][r][sig]["change"] for r in regions]
        # no matched box (None): no control bar
        cm = [np.nan if (v := ablation["regions"][r][sig]["control_mean"]) is None else v for r in regions]
        cs = [np.nan if (v := ablation["regions"][r][sig]["control_std"]) is None else v for r in regions]
        ax.barh(y + 0.2, ch, 0.4, color="#d62728", label="region")
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
        ax.set_yticks(y, regions if sig == "class_logit" else [""] * len(regions), fontsize=7)
        ax.set_title(f"change of {sig}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


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
    ax.set_ylabel("enrichment = share / base rate")
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
        ax.set_xticks(x, probes["layers"], rotation=30, fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    axes[0].set_ylabel("held-out (%)")
    axes[0].legend(fontsize=6)
    return _save(fig, path)
