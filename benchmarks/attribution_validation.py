"""Attribution patching against real patching on the organism's rendered pairs: Pearson correlation
per hook type. ``python -m benchmarks.attribution_validation [--pairs N]``."""

from __future__ import annotations

import argparse
import json

import numpy as np

from hooked_vivit import organism
from hooked_vivit.analysis.pipeline import model_pixels
from hooked_vivit.causal import patching
from hooked_vivit.causal.attribution import attribution_patch
from hooked_vivit.causal.metrics import SignalRecovery
from hooked_vivit.synthetic import render_pair


def correlations(model, domain: str, seed: int) -> dict:
    cfg = model.cfg
    pos, neg, _ = render_pair(domain, seed, num_frames=cfg.num_frames, size=cfg.image_size[0])
    clean, corrupted = model_pixels(model, pos), model_pixels(model, neg)
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    _, clean_cache = model.run_with_cache(clean)
    _, corrupt_cache = model.run_with_cache(corrupted, names_filter=last)
    metric = SignalRecovery(last, clean_cache[last], corrupt_cache[last], positions=0)
    attr = attribution_patch(model, clean, corrupted, metric, clean_cache=clean_cache)

    def real(patches):
        sweep = patching.denoise(
            model, patches, clean_cache=clean_cache, corrupted=corrupted, metric=metric, progress=False
        )
        return (sweep.values - sweep.baseline).numpy()

    pairs = {
        "resid_pre by layer x frame slot": (
            attr.by_frame_slot("resid_pre").numpy().ravel(),
            real(patching.frame_slot_patches(model)),
        ),
        "resid_pre by layer x token": (
            attr.scores["resid_pre"].numpy().ravel(),
            real(patching.token_patches(model, "resid_pre")),
        ),
        "attn_out by layer": (
            attr.by_component("attn_out").numpy(),
            real(patching.component_patches(model, ("attn_out",))),
        ),
        "mlp_out by layer": (
            attr.by_component("mlp_out").numpy(),
            real(patching.component_patches(model, ("mlp_out",))),
        ),
        "z by layer x head": (attr.by_head("z").numpy().ravel(), real(patching.head_patches(model, "z"))),
        "attn_out by layer x frame slot": (
            attr.by_frame_slot("attn_out").numpy().ravel(),
            real(patching.frame_slot_patches(model, "attn_out")),
        ),
        "mlp_out by layer x frame slot": (
            attr.by_frame_slot("mlp_out").numpy().ravel(),
            real(patching.frame_slot_patches(model, "mlp_out")),
        ),
    }
    return {k: float(np.corrcoef(a, b)[0, 1]) for k, (a, b) in pairs.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=5)
    args = p.parse_args(argv)
    model = organism.load()
    results = {}
    for domain in ("bowling", "golf"):
        rows = [correlations(model, domain, 7_000_000 + i) for i in range(args.pairs)]
        results[domain] = {
            k: {"mean": float(np.mean([r[k] for r in rows])), "min": float(np.min([r[k] for r in rows]))}
            for k in rows[0]
        }
    print(json.dumps(results, indent=2))
    print("| hook type | bowling mean r (min) | golf mean r (min) |\n|---|---|---|")
    for k in results["bowling"]:
        b, g = results["bowling"][k], results["golf"][k]
        print(f"| {k} | {b['mean']:.3f} ({b['min']:.3f}) | {g['mean']:.3f} ({g['min']:.3f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
