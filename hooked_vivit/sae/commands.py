"""``hooked-vivit sae train`` and ``hooked-vivit sae report``: what the commands do, callable from Python."""

from __future__ import annotations

import html
import json
import resource
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hooked_vivit.sae.activations import SAE_SEEDS, ActivationSource, SyntheticClips, VideoFolder

SHIPPED = "organism_blocks.2.hook_resid_post"


def shipped_sae_path() -> Path:
    """The SAE shipped in the package for the shipped organism (blocks.2.hook_resid_post, TopK)."""
    path = Path(str(resources.files("hooked_vivit.sae").joinpath("pretrained", SHIPPED)))
    if not (path / "cfg.json").exists():
        raise FileNotFoundError(f"the shipped SAE is missing from {path}; train one with `hooked-vivit sae train`")
    return path


def _load_model(name: str, device: str):
    from hooked_vivit.analysis.pipeline import load_model

    return load_model(name, device)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def train(
    *,
    model_name: str,
    hook: str,
    clips: int,
    out: Path,
    architecture: str = "topk",
    d_sae: int = 512,
    k: int = 32,
    l1_coefficient: float = 5.0,
    epochs: int = 2,
    batch_size: int = 2048,
    eval_clips: int = 60,
    videos: Path | None = None,
    workers: int = 1,
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    local_model: Path | None = None,
) -> dict:
    """Train, evaluate on held-out clips, write SAELens's format + provenance.json + evaluation.json."""
    from hooked_vivit.loading import weights_fingerprint
    from hooked_vivit.output_dir import OutputDir
    from hooked_vivit.sae.evaluate import evaluate
    from hooked_vivit.sae.train import environment, require_sae_lens, save_sae, train_sae

    require_sae_lens()
    inputs = [videos, local_model]
    with OutputDir(out, overwrite=overwrite, inputs=inputs, writer="hooked-vivit sae train") as od:
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        model = _load_model(model_name, device)
        if videos is not None:
            data = VideoFolder(model.cfg, videos)
            held_out = data  # no labels and no second folder: evaluated on the training videos (recorded below)
            data_record = {
                "kind": "videos",
                "folder": str(videos),
                "clips": len(data),
                "files": [s["path"] for s in data.specs],
            }
        else:
            data = SyntheticClips(model.cfg, clips, seed0=SAE_SEEDS["train"])
            held_out = SyntheticClips(model.cfg, eval_clips, seed0=SAE_SEEDS["eval"])
            data_record = {
                "kind": "synthetic",
                "clips": clips,
                "seeds": [SAE_SEEDS["train"], SAE_SEEDS["train"] + clips - 1],
                "actions": list(data.actions),
                "outcomes": "balanced per action",
            }
        source = ActivationSource(model, hook, data, batch_size=batch_size, num_workers=workers, seed=seed)
        data_record["tokens_per_epoch"] = source.n_tokens
        meta = {
            "model_name": model_name,
            "hook_name": hook,
            "dataset_path": data_record.get("folder", "hooked_vivit.synthetic"),
        }
        sae, run = train_sae(
            source,
            architecture=architecture,
            d_sae=d_sae,
            k=k,
            l1_coefficient=l1_coefficient,
            epochs=epochs,
            device=device,
            seed=seed,
            metadata=meta,
        )
        ev_source = ActivationSource(model, hook, held_out, shuffle=False, num_workers=workers)
        evaluation = evaluate(model, sae, ev_source)
        evaluation["data"] = (
            {
                "kind": "synthetic",
                "clips": len(held_out),
                "seeds": [SAE_SEEDS["eval"], SAE_SEEDS["eval"] + len(held_out) - 1],
            }
            if videos is None
            else {"kind": "videos", "clips": len(held_out), "overlaps_training": True}
        )
        run["command_wall_seconds"] = time.perf_counter() - wall0
        run["command_cpu_seconds"] = _cpu_seconds() - cpu0  # this process and its DataLoader workers
        provenance = {
            "hook": hook,
            "model": {
                "name": model_name,
                "model_type": model.model_type,
                "d_model": model.cfg.d_model,
                "n_layers": model.cfg.n_layers,
                "n_ctx": model.cfg.n_ctx,
                "weights_fingerprint": weights_fingerprint(model),
            },
            "data": data_record,
            "training": run,
            "environment": environment(),
            "token_layout": "every token, CLS included (provenance columns: clip, token, slot, row, col, is_prefix)",
        }
        with od.writing() as tmp:
            save_sae(sae, tmp, provenance, evaluation)
    return {"provenance": provenance, "evaluation": evaluation}


# ------------------------------------------------------------------------------------------ report
def _png(path: Path, image: np.ndarray) -> Path:
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    return path


def _label(image: np.ndarray, text: str) -> np.ndarray:
    import cv2

    image = np.ascontiguousarray(image)
    cv2.putText(image, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def report(
    *,
    sae_dir: Path | None,
    out: Path,
    clips: int = 48,
    features: int = 6,
    domain: str = "bowling",
    seed: int = 4_000_000,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict:
    """The feature report: the SAE's evaluation, the features that differ most between a minimal
    pair after its divergence frame (maps on both clips, feature-level patching recovery) and, for
    each, its top-activating held-out clips and tokens with the feature drawn on the frames."""
    from hooked_vivit import synthetic
    from hooked_vivit.analysis import report as rp
    from hooked_vivit.analysis.pipeline import model_pixels
    from hooked_vivit.output_dir import OutputDir
    from hooked_vivit.sae import features as ft
    from hooked_vivit.sae.train import EVALUATION_FILE, load_sae

    sae_path = Path(sae_dir).expanduser() if sae_dir is not None else shipped_sae_path()
    with OutputDir(out, overwrite=overwrite, inputs=[sae_path], writer="hooked-vivit sae report") as od:
        t0 = time.perf_counter()
        sae, prov = load_sae(sae_path, device=device)
        hook = prov.get("hook") or sae.cfg.metadata.get("hook_name")
        model_name = prov.get("model", {}).get("name") or "actions"
        if not hook:
            raise ValueError(f"{sae_path}: provenance.json names no hook (write the SAE with hooked-vivit sae train)")
        model = _load_model(model_name, device)
        grid = model.cfg.grid
        evaluation = (
            json.loads((sae_path / EVALUATION_FILE).read_text()) if (sae_path / EVALUATION_FILE).is_file() else None
        )

        # Minimal pair: which features differ after the divergence frame, and what patching them restores.
        pos, neg, meta = synthetic.render_pair(
            domain, seed, num_frames=model.cfg.num_frames, size=min(model.cfg.image_size)
        )
        xp, xn = model_pixels(model, pos), model_pixels(model, neg)
        pair = ft.pair_differences(model, sae, hook, xp, xn, meta["divergence_frame"])
        shown = [int(f) for f in pair["order"][:features]]
        sets = [[f] for f in shown] + [shown]
        patching = ft.feature_patching(model, sae, hook, xp, xn, sets)

        # Held-out clips: where each shown feature is strongest.
        data = SyntheticClips(model.cfg, clips, seed0=SAE_SEEDS["eval"])
        feats = ft.clip_features(model, sae, hook, data)
        results: dict[str, Any] = {
            "sae": str(sae_path),
            "hook": hook,
            "model": model_name,
            "evaluation_summary": None,
            "pair": {
                "domain": meta["domain"],
                "seed": seed,
                "outcomes": meta["outcomes"],
                "divergence_frame": meta["divergence_frame"],
                "from_slot": pair["from_slot"],
            },
            "pair_features": [],
            "patching": patching,
            "clips": [s for s in data.specs],
        }
        if evaluation is not None:
            results["evaluation_summary"] = {k: v for k, v in evaluation.items() if k != "per_feature"}
        sections = []
        with od.writing() as tmp:
            recovery = patching["variants"]
            rows = []
            for i, f in enumerate(shown):
                d = float(pair["difference"][f])
                entry = {
                    "feature": f,
                    "difference": d,
                    "recovery": {k: v[i] for k, v in recovery.items()},
                    "top_tokens": ft.top_tokens(feats, f, grid, k=8),
                    "top_clips": ft.top_clips(feats, f, k=3),
                }
                if evaluation is not None:
                    entry["frequency"] = evaluation["per_feature"]["frequency"][f]
                    entry["temporal_coherence"] = evaluation["per_feature"]["temporal_coherence"][f]
                results["pair_features"].append(entry)
                rows.append(
                    {
                        "feature": str(f),
                        "pos - neg after divergence": d,
                        "cls_projection recovery": entry["recovery"]["cls_projection"],
                        "token_projection recovery": entry["recovery"]["token_projection"],
                        "frequency": entry.get("frequency", float("nan")),
                        "temporal coherence": entry.get("temporal_coherence")
                        if entry.get("temporal_coherence") is not None
                        else float("nan"),
                    }
                )
                # The pair, with the feature on both clips (one colour scale).
                _, mp = ft.feature_map(pair["positive"], f, grid)
                _, mn = ft.feature_map(pair["negative"], f, grid)
                vmax = float(max(np.abs(mp).max(), np.abs(mn).max())) or 1.0
                strip = np.concatenate(
                    [
                        _label(ft.overlay_strip(model, pos, mp, vmax), meta["outcomes"]["positive"]),
                        _label(ft.overlay_strip(model, neg, mn, vmax), meta["outcomes"]["negative"]),
                    ],
                    axis=0,
                )
                pair_png = _png(tmp / f"feature_{f}_pair.png", strip)
                top_rows = []
                for clip, peak in entry["top_clips"]:
                    _, m = ft.feature_map(feats[clip], f, grid)
                    spec = data.specs[clip]
                    top_rows.append(
                        _label(
                            ft.overlay_strip(model, data.frames(clip), m),
                            f"{spec['action']} {spec['seed']} max {peak:.2f}",
                        )
                    )
                top_png = _png(tmp / f"feature_{f}_top_clips.png", np.concatenate(top_rows, axis=0))
                caption = (
                    f"Feature {f}: summed activation after the divergence frame {d:+.3f} ({meta['outcomes']['positive']} minus "
                    f"{meta['outcomes']['negative']}); patching it alone into the {meta['outcomes']['negative']} run restores "
                    f"{entry['recovery']['cls_projection']:.1%} of the CLS projection at {patching['measured_at']}. "
                    "Top: the pair (first frame of each frame slot); below: its top held-out clips."
                )
                tok = rp.table_html(
                    [
                        {
                            **r,
                            "action": data.specs[r["clip"]]["action"],
                            "where": "CLS" if r["slot"] is None else f"t{r['slot']} r{r['row']} c{r['col']}",
                        }
                        for r in entry["top_tokens"]
                    ],
                    ["clip", "action", "where", "activation"],
                    {"activation": ".3f"},
                )
                sections.append((f"Feature {f}", pair_png, caption, rp._img(top_png) + tok))
            together = {k: v[-1] for k, v in recovery.items()}
            results["patching_all_shown"] = together
            summary = rp.table_html(rows, list(rows[0]), {k: ".3f" for k in rows[0] if k != "feature"})
            ev_html = ""
            if evaluation is not None:
                e = results["evaluation_summary"]
                ev_rows = [
                    {"metric": k, "value": f"{e[k]:.4g}" if isinstance(e[k], float) else str(e[k])}
                    for k in (
                        "fvu",
                        "explained_variance",
                        "l0",
                        "dead",
                        "dense",
                        "d_sae",
                        "kl",
                        "accuracy_unspliced",
                        "accuracy_spliced",
                        "agreement_spliced",
                        "clips",
                        "tokens",
                    )
                    if k in e
                ]
                ev_rows.append(
                    {
                        "metric": "temporal coherence (mean lag-1 autocorrelation)",
                        "value": f"{e['temporal_coherence']['mean']:.3f}",
                    }
                )
                ev_html = rp.table_html(ev_rows, ["metric", "value"])
            intro = (
                f"<p>SAE <code>{html.escape(str(sae_path))}</code> on <code>{html.escape(hook)}</code> of "
                f"<code>{html.escape(model_name)}</code>. Minimal pair: {html.escape(meta['domain'])}, seed {seed}, "
                f"{html.escape(meta['outcomes']['positive'])} vs {html.escape(meta['outcomes']['negative'])}, diverging at frame "
                f"{meta['divergence_frame']} (frame slot {pair['from_slot']}). Patching all {len(shown)} features together restores "
                f"{together['cls_projection']:.1%} of the CLS projection.</p>"
            )
            sections.insert(
                0,
                (
                    "Evaluation (held-out clips, spliced without the error term for KL and accuracy)",
                    None,
                    "From evaluation.json, written when the SAE was trained.",
                    ev_html,
                ),
            )
            sections.insert(
                1,
                (
                    "Features that differ most after the divergence frame",
                    None,
                    "Ranked by |summed activation difference| over the patch tokens from the divergence frame's slot on; "
                    "recovery: that feature alone patched from the positive into the negative run (spliced with the error term).",
                    summary,
                ),
            )
            rp.write_html(tmp, "SAE feature report", intro, sections)
            results["seconds"] = time.perf_counter() - t0
            rp.write_json(tmp / "results.json", results)
    return results
