"""The TimeSformer parity figures: every small test config and the TimeSformer-B / K400 shape
against transformers (its one, eager, attention), every parameter perturbed: logits, every hidden
state, every spatial and temporal pattern; the hooked model's fused path (the default) and its
explicit path. ``python -m benchmarks.parity_table_timesformer``."""

from __future__ import annotations

import torch

from hooked_vivit import HookedTimeSformer
from hooked_vivit.parity import compare
from hooked_vivit.testing import TIMESFORMER_CONFIGS as CONFIGS
from hooked_vivit.testing import make_timesformer as make_hf
from hooked_vivit.testing import timesformer_pixels as pixels


def main() -> int:
    configs = dict(CONFIGS)
    configs["timesformer-b/kinetics400 (1569 tokens)"] = {"num_labels": 400, "image_size": 224, "num_frames": 8}
    print("| config | worst, explicit path (logits, resid, both patterns) | where | worst logits/resid, fused path |")
    print("|---|---|---|---|")
    for name, kw in configs.items():
        hf = make_hf(kw)
        model = HookedTimeSformer.from_hf_model(hf)
        x = pixels(kw, batch=1 if "timesformer-b" in name else 2)
        report = compare(model, hf, x, attn="eager")  # caching the patterns runs the explicit path
        with torch.inference_mode():
            ref = hf(x, output_hidden_states=True)
            order = model.hf_token_order()
            _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_resid_post", "hook_resid_pre")))
            fused = [float((model(x) - ref.logits).abs().max() / max(1.0, float(ref.logits.abs().max())))]
            for l in range(model.cfg.n_layers):
                h = ref.hidden_states[l + 1][:, order]
                fused.append(float((cache["resid_post", l] - h).abs().max() / max(1.0, float(h.abs().max()))))
        worst = report.worst()
        print(f"| {name} | {worst.max_rel:.2e} | {worst.name} | {max(fused):.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
