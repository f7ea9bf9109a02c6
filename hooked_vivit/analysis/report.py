"""Figures and the self-contained HTML report, drawn from the experiments' data."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"resid_pre": "#1f77b4", "resid_post": "#9467bd", "attn_out": "#ff7f0e", "mlp_out": "#2ca02c", "attn": "#ff7f0e", "mlp": "#2ca02c"}


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
        ax.set_title("at CLS" if where == "cls" else "mean over tokens")
        ax.set_xlabel("layer")
        ax.set_ylabel("||positive - negative||")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def fig_recovery(rec: dict, path: Path, kind: str = "projection", ci: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    L = len(rec[kind]["attn"])
    x = np.arange(L)
    for offset, comp in ((-0.2, "attn"), (0.2, "mlp")):
        values = np.array(rec[kind][comp]) * 100
        err = None
        if ci and comp in ci:
            lo, hi = np.array(ci[comp][0]) * 100, np.array(ci[comp][1]) * 100
            err = np.stack([values - lo, hi - values])
        ax.bar(x + offset, values, 0.4, color=COLORS[comp], label=f"{comp} block", yerr=err, capsize=2)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xlabel("patched layer")
    ax.set_ylabel(f"recovery of last-layer difference (%)\n[{kind}]")
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


def fig_cls_attention(att: dict, frames: np.ndarray, tubelet_t: int, path: Path, layer_index: int = -1,
                      patch_size: tuple[int, int] | None = None) -> Path:
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
            ax.imshow(grid[h, t], cmap="magma", alpha=0.55, extent=(0, W, H, 0), interpolation="nearest", vmin=0, vmax=grid[h].max())
            ax.set_xticks([]), ax.set_yticks([])
            if h == 0:
                ax.set_title(f"frame {t * tubelet_t}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"head {h}", fontsize=8)
    fig.suptitle(f"CLS attention, layer {att['layers'][layer_index]}", fontsize=9)
    return _save(fig, path)


def fig_probes(probes: dict, path: Path, ci: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(probes["layers"]))
    for kind, color in (("cls", "#1f77b4"), ("mean", "#2ca02c")):
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
        "<tr>" + "".join(f"<td>{html.escape(format(r[c], fmt.get(c, '')) if not isinstance(r[c], str) else r[c])}</td>" for c in columns) + "</tr>"
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
