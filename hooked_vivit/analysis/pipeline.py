"""``hooked-vivit analyze`` and ``hooked-vivit study``: the whole analysis of a pair, and of many.

analyze: (a) activation deltas, (b) component patching recovery, (c) token-level direct logit
attribution, (d) CLS attention (with object shares for rendered pairs), (e) region ablation,
(f) outcome probes on rendered pairs of the same domain. Writes report.html, results.json and the
PNG figures into a directory that appears whole or not at all.

study: (a), (b) and (f) over many rendered pairs per domain, with bootstrap 95 % intervals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hooked_vivit import synthetic
from hooked_vivit.analysis import experiments as ex
from hooked_vivit.analysis import report as rp
from hooked_vivit.output_dir import OutputDir, output_directory
from hooked_vivit.video import load_video, preprocess

DEFAULT_MODEL = "organism"


def load_model(name_or_path: str | None, device: str = "cpu"):
    from hooked_vivit.model import HookedViViT

    if name_or_path in (None, "", DEFAULT_MODEL):
        from hooked_vivit import organism

        return HookedViViT.from_pretrained(organism.checkpoint_path(), device=device)
    return HookedViViT.from_pretrained(name_or_path, device=device)


@dataclass
class Pair:
    positive: np.ndarray  # uint8 frames [T, H, W, 3]
    negative: np.ndarray
    names: tuple[str, str]
    domain: str | None = None
    seed: int | None = None
    masks: dict | None = None
    divergence_frame: int | None = None


def rendered_pair(model: Any, domain: str, seed: int) -> Pair:
    cfg = model.cfg
    pos, neg, meta = synthetic.render_pair(domain, seed, num_frames=cfg.num_frames, size=min(cfg.image_size))
    return Pair(pos, neg, (meta["outcomes"]["positive"], meta["outcomes"]["negative"]), meta["domain"], seed,
                meta["masks"], meta["divergence_frame"])


def video_pair(model: Any, clean: Path, corrupted: Path) -> Pair:
    """Both clips read and checked before any analysis: one size (the report shows them side by side)."""
    n = model.cfg.num_frames
    pos, neg = load_video(clean, n), load_video(corrupted, n)
    if pos.shape[1:3] != neg.shape[1:3]:
        raise ValueError(
            f"the clips differ in size: {clean} is {pos.shape[2]}x{pos.shape[1]}, {corrupted} is {neg.shape[2]}x{neg.shape[1]} "
            "pixels (width x height); give two clips of one size (a minimal pair differs only in its outcome)"
        )
    names = (Path(clean).stem, Path(corrupted).stem)
    if names[0] == names[1]:  # a/clip.mp4 vs b/clip.mp4: name them by path
        names = (str(clean), str(corrupted))
    return Pair(pos, neg, names)


def model_pixels(model: Any, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames -> pixel values [1, T, 3, H, W] sized by the model's config, on its device."""
    return preprocess(frames, config=model.cfg).to(model.W_E.device)


def rendered_probe_pairs(model: Any, domain: str, n: int, seed0: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n rendered (positive, negative) pixel pairs of a domain, seeds seed0.., for the probes."""
    cfg = model.cfg
    out = []
    for i in range(n):
        pos, neg, _ = synthetic.render_pair(domain, seed0 + i, num_frames=cfg.num_frames, size=min(cfg.image_size))
        out.append((model_pixels(model, pos), model_pixels(model, neg)))
    return out


def analyze_pair(model: Any, pair: Pair, *, probe_pairs: int = 40, probe_seed: int = 5_000_000, progress: bool = True) -> dict:
    """Run experiments (a)-(f) on one pair; returns every number."""
    from tqdm.auto import tqdm

    if isinstance(probe_pairs, bool) or not isinstance(probe_pairs, int) or (probe_pairs != 0 and probe_pairs < 3):
        raise ValueError(f"--probe-pairs (probe_pairs) must be 0 (skip the probes) or an integer >= 3 (held out by pair), got {probe_pairs!r}")
    steps = tqdm(total=6, desc="analyze", disable=not progress)
    pos, neg = model_pixels(model, pair.positive), model_pixels(model, pair.negative)
    with torch.inference_mode():
        logits = model(torch.cat([pos, neg]))
    c = int(logits[0].argmax())
    results: dict = {
        "model": model.cfg.model_name,
        "pair": {"names": list(pair.names), "domain": pair.domain, "seed": pair.seed, "divergence_frame": pair.divergence_frame},
        # Keyed by role: two clips may share a name.
        "prediction": {role: {"clip": name, "class": int(l.argmax()), "name": model.cfg.id2label[int(l.argmax())], "logit": float(l.max())}
                       for role, name, l in zip(("positive", "negative"), pair.names, logits)},
    }
    t0 = time.time()
    results["deltas"] = ex.activation_deltas(model, pos, neg); steps.update()  # noqa: E702
    results["recovery"] = ex.component_recovery(model, pos, neg); steps.update()  # noqa: E702
    dla = ex.token_dla(model, pos, c)
    results["dla"] = {k: v for k, v in dla.items() if k != "terms"}; steps.update()  # noqa: E702
    masks = pair.masks["positive"] if pair.masks else None
    results["cls_attention"] = ex.cls_attention(model, pos, masks=masks); steps.update()  # noqa: E702
    results["region_ablation"] = ex.region_ablation(model, pos, dla); steps.update()  # noqa: E702
    if pair.domain is not None and pair.domain in synthetic.OUTCOMES and probe_pairs >= 3:
        domain_key = next(k for k, v in synthetic.DOMAINS.items() if v == pair.domain)
        results["probes"] = ex.layer_probes(model, rendered_probe_pairs(model, domain_key, probe_pairs, probe_seed))
    steps.update()
    steps.close()
    results["seconds"] = round(time.time() - t0, 2)
    results["_dla_terms"] = dla["terms"]
    return results


def write_analysis(out: Path | OutputDir, model: Any, pair: Pair, results: dict, *, overwrite: bool = False) -> Path:
    """Write the report into ``out`` (see hooked_vivit.output_dir; pass a reserved ``OutputDir`` to have it
    checked and locked before the analysis runs)."""
    with output_directory(out, overwrite=overwrite, writer="hooked-vivit analyze") as tmp:
        figs = {
            "frames": rp.fig_frames(pair.positive, pair.negative, pair.names, tmp / "frames.png"),
            "deltas": rp.fig_deltas(results["deltas"], tmp / "fig1_activation_deltas.png"),
            "recovery": rp.fig_recovery(results["recovery"], tmp / "fig2_component_recovery.png"),
            "dla": rp.fig_dla(results["dla"], tmp / "fig3_token_dla.png"),
            "attention": rp.fig_cls_attention(results["cls_attention"], pair.positive, model.cfg.tubelet_size[0], tmp / "fig4_cls_attention.png",
                                                patch_size=model.cfg.tubelet_size[1:]),
        }
        if "probes" in results:
            figs["probes"] = rp.fig_probes(results["probes"], tmp / "fig5_probes.png")
        rp.write_json(tmp / "results.json", {k: v for k, v in results.items() if not k.startswith("_")})
        pos_name, neg_name = pair.names
        rec = results["recovery"]["projection"]
        shares = results["cls_attention"].get("object_share", {})
        share_txt = "; ".join(f"{k}: {np.mean(v):.0%} of CLS attention (mean over heads and layers)" for k, v in shares.items() if isinstance(v, list))
        abl = results["region_ablation"]
        pred = results["prediction"]
        intro = (
            f"<p>Model <code>{model.cfg.model_name}</code>. Positive clip <b>{pos_name}</b> is classified "
            f"<b>{pred['positive']['name']}</b>, negative clip <b>{neg_name}</b> <b>{pred['negative']['name']}</b>."
            + (f" Rendered {pair.domain} pair, seed {pair.seed}; the clips are identical before frame {pair.divergence_frame}." if pair.domain else "")
            + "</p>"
        )
        sections = [
            ("The pair", figs["frames"], f"Frames of the positive ({pos_name}, top) and negative ({neg_name}, bottom) clip.", ""),
            ("(a) Activation differences per layer", figs["deltas"],
             "L2 norm of the positive-minus-negative activation at each layer, at the CLS token (left) and averaged over "
             f"tokens (right). At CLS the residual difference goes from {results['deltas']['cls']['resid_pre'][0]:.2f} at layer 0 "
             f"to {results['deltas']['cls']['resid_post'][-1]:.2f} after the last layer.", ""),
            ("(b) Component patching: what restores the positive run's representation?", figs["recovery"],
             "Denoising one component at a time (the attention or MLP block output of one layer, all tokens, positive "
             "into negative run), measured as the share of the last layer's CLS residual difference recovered "
             f"(projection; 100 % = fully restored, above 100 % = overshoot). Attention blocks: {min(rec['attn']):.0%}-{max(rec['attn']):.0%}; "
             f"MLP blocks: {min(rec['mlp']):.0%}-{max(rec['mlp']):.0%}.",
             rp.table_html([{"layer": l, "attn": a, "mlp": m, "attn (norm)": an, "mlp (norm)": mn} for l, a, m, an, mn in zip(
                 range(len(rec["attn"])), rec["attn"], rec["mlp"], results["recovery"]["norm"]["attn"], results["recovery"]["norm"]["mlp"])],
                 ["layer", "attn", "mlp", "attn (norm)", "mlp (norm)"], {c: ".1%" for c in ("attn", "mlp", "attn (norm)", "mlp (norm)")})),
            ("(c) Direct logit attribution over space and time", figs["dla"],
             f"Direct contribution of each source token, through every head's CLS attention and the final LayerNorm, to the "
             f"'{results['dla']['class_name']}' logit of the positive clip, summed over layers and heads, one panel per frame slot "
             "(red raises the logit, blue lowers it).", ""),
            ("(d) CLS attention", figs["attention"],
             "Where the CLS token looks in the last layer, per head, over the positive clip's frames. " + (share_txt + "." if share_txt else ""), ""),
            ("(e) Region ablation", None,
             f"Top classes of the positive clip before and after {abl['mode']}-ablating the pixel box around the {len(abl['tokens'])} "
             f"tokens of greatest attribution (frames {abl['box']['t0']}-{abl['box']['t1'] - 1}, rows {abl['box']['y0']}-{abl['box']['y1'] - 1}, "
             f"cols {abl['box']['x0']}-{abl['box']['x1'] - 1}). Top-1: {abl['top1_before']} -> {abl['top1_after']}.",
             rp.table_html(abl["table"], ["class", "name", "before", "after", "delta"], {"before": ".4f", "after": ".4f", "delta": "+.4f"})),
        ]
        if "probes" in results:
            pr = results["probes"]
            sections.append(("(f) Linear probes for the outcome", figs["probes"],
                             f"Held-out accuracy of a linear probe for the outcome per layer, trained on {pr['pairs']} other rendered pairs "
                             "and split by pair, on the CLS token and on mean-pooled tokens; dotted: the same probe on labels shuffled "
                             f"by pair (control); dashed: a probe on the raw pixels ({pr['pixels']['accuracy']:.0%}). With one pair any "
                             "difference is 100 % decodable; across pairs only a shared representation is.", ""))
        rp.write_html(tmp, f"hooked-vivit analysis: {pos_name} vs {neg_name}", intro, sections)
    return out.path if isinstance(out, OutputDir) else Path(out)


# ---------------------------------------------------------------------------------------- study
def bootstrap(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap 95 % interval of the mean over axis 0."""
    from hooked_vivit.compat import bootstrap_ci, derive_generator

    lo, hi = bootstrap_ci(torch.as_tensor(values, dtype=torch.float64), dim=0, n_resamples=n, generator=derive_generator(seed, "study"))
    return lo.numpy(), hi.numpy()


def study_domain(model: Any, domain: str, n_pairs: int, *, seed0: int = 6_000_000, probe_pairs: int | None = None, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    deltas_cls, deltas_tok, rec_attn, rec_mlp = [], [], [], []
    pairs = []
    for i in tqdm(range(n_pairs), desc=f"study {domain}", disable=not progress):
        pos, neg, _ = synthetic.render_pair(domain, seed0 + i, num_frames=model.cfg.num_frames, size=min(model.cfg.image_size))
        p, n = model_pixels(model, pos), model_pixels(model, neg)
        pairs.append((p, n))
        d = ex.activation_deltas(model, p, n)
        deltas_cls.append([d["cls"][k] for k in ex.KINDS])
        deltas_tok.append([d["tokens"][k] for k in ex.KINDS])
        r = ex.component_recovery(model, p, n)["projection"]
        rec_attn.append(r["attn"])
        rec_mlp.append(r["mlp"])
    arrays = {"deltas_cls": np.array(deltas_cls), "deltas_tokens": np.array(deltas_tok), "attn": np.array(rec_attn), "mlp": np.array(rec_mlp)}
    out: dict = {"domain": domain, "pairs": n_pairs, "seeds": [seed0, seed0 + n_pairs - 1], "kinds": list(ex.KINDS)}
    for key, arr in arrays.items():
        lo, hi = bootstrap(arr)
        out[key] = {"mean": arr.mean(0).tolist(), "ci95": [lo.tolist(), hi.tolist()], "per_pair": arr.tolist()}
    # Does "attention gathers, MLPs compose" hold? Per pair: mean MLP recovery minus mean attention recovery.
    gap = arrays["mlp"].mean(1) - arrays["attn"].mean(1)
    lo, hi = bootstrap(gap)
    out["mlp_minus_attn"] = {"mean": float(gap.mean()), "ci95": [float(lo), float(hi)], "share_of_pairs_mlp_higher": float((gap > 0).mean())}
    out["probes"] = ex.layer_probes(model, pairs if probe_pairs is None else pairs[:probe_pairs])
    return out


def write_study(out: Path | OutputDir, model: Any, studies: list[dict], *, overwrite: bool = False) -> Path:
    with output_directory(out, overwrite=overwrite, writer="hooked-vivit study") as tmp:
        sections = []
        for st in studies:
            dom = st["domain"]
            deltas = {where: {k: st[f"deltas_{where}"]["mean"][i] for i, k in enumerate(st["kinds"])} for where in ("cls", "tokens")}
            ci = {where: {k: (st[f"deltas_{where}"]["ci95"][0][i], st[f"deltas_{where}"]["ci95"][1][i]) for i, k in enumerate(st["kinds"])}
                  for where in ("cls", "tokens")}
            f1 = rp.fig_deltas(deltas, tmp / f"{dom}_deltas.png", ci)
            rec = {"projection": {"attn": st["attn"]["mean"], "mlp": st["mlp"]["mean"]}}
            f2 = rp.fig_recovery(rec, tmp / f"{dom}_recovery.png", ci={"attn": st["attn"]["ci95"], "mlp": st["mlp"]["ci95"]})
            f3 = rp.fig_probes(st["probes"], tmp / f"{dom}_probes.png")
            g = st["mlp_minus_attn"]
            sections += [
                (f"{dom}: activation differences ({st['pairs']} pairs)", f1, "Mean over pairs with bootstrap 95 % intervals (shaded).", ""),
                (f"{dom}: component recovery", f2,
                 f"Mean recovery per component with bootstrap 95 % intervals. MLP minus attention recovery (mean over layers), per pair: "
                 f"{g['mean']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}]; MLP higher in {g['share_of_pairs_mlp_higher']:.0%} of pairs.", ""),
                (f"{dom}: outcome probes", f3, f"Probes trained and tested across {st['probes']['pairs']} pairs, held out by pair.", ""),
            ]
        rp.write_json(tmp / "results.json", {"model": model.cfg.model_name, "studies": studies})
        verdict = "; ".join(f"{s['domain']}: MLP - attention = {s['mlp_minus_attn']['mean']:+.1%} "
                            f"[{s['mlp_minus_attn']['ci95'][0]:+.1%}, {s['mlp_minus_attn']['ci95'][1]:+.1%}]" for s in studies)
        intro = (f"<p>Model <code>{model.cfg.model_name}</code>. Does \"attention gathers evidence, MLPs compose the concept\" hold "
                 f"across pairs and domains? {verdict} (95 % bootstrap intervals over pairs).</p>")
        rp.write_html(tmp, "hooked-vivit multi-pair study", intro, sections)
    return out.path if isinstance(out, OutputDir) else Path(out)


def run_study(model: Any, domains: Sequence[str], n_pairs: int, out: Path | OutputDir, *, progress: bool = True, overwrite: bool = False) -> list[dict]:
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 3:
        raise ValueError(f"--pairs (n_pairs) must be an integer >= 3 (intervals and held-out probes over pairs), got {n_pairs!r}")
    studies = [study_domain(model, d, n_pairs, progress=progress) for d in domains]
    write_study(out, model, studies, overwrite=overwrite)
    return studies
