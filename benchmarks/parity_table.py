"""The parity figures: every small test config and the ViViT-B shape, against transformers (eager
with patterns, and sdpa), every parameter perturbed. ``python -m benchmarks.parity_table``."""

from __future__ import annotations

import torch
from transformers import VivitConfig

from hooked_vivit import HookedViViT
from hooked_vivit.parity import compare
from hooked_vivit.testing import SMALL_CONFIGS, make_hf, pixels


def main() -> int:
    configs = dict(SMALL_CONFIGS)
    base = VivitConfig().to_dict()
    configs["vivit-b/kinetics400 (3137 tokens)"] = {
        k: base[k]
        for k in (
            "image_size",
            "num_frames",
            "tubelet_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
        )
    } | {"num_labels": 400}
    print("| config | worst (eager: logits, resid, patterns) | where | sdpa logits |")
    print("|---|---|---|---|")
    for name, kw in configs.items():
        hf = make_hf(kw, attn="eager")
        model = HookedViViT.from_hf_model(hf)
        x = pixels(kw, batch=1 if "vivit-b" in name else 2)
        report = compare(model, hf, x, attn="eager")
        hf.set_attn_implementation("sdpa")
        with torch.inference_mode():
            ref = hf(x).logits
            sdpa = float((model(x) - ref).abs().max() / max(1.0, float(ref.abs().max())))
        worst = report.worst()
        print(f"| {name} | {worst.max_rel:.2e} | {worst.name} | {sdpa:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
