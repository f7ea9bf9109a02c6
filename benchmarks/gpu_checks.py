"""Parity of the full ViViT-B shape on a GPU, fp32 and bf16, against `transformers` on the same device.

    python -m benchmarks.gpu_checks --device cuda --out DIR

Random weights with every parameter perturbed (HF initialises LayerNorms to 1 and biases to 0, which
would let a wrong mapping pass). For each dtype it compares the hooked model with HF eager (logits,
every residual stream, every attention pattern) and HF sdpa (logits, residual streams), and puts the
hooked model's low-precision error beside HF's own: both against the fp32 HF logits, so a bf16 figure
reads as "as far from fp32 as transformers itself is".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import VivitForVideoClassification

from hooked_vivit import HookedViViT
from hooked_vivit.parity import compare
from hooked_vivit.testing import make_hf


def perturbed_vivit_b(seed: int = 0, layers: int = 12) -> VivitForVideoClassification:
    """ViViT-B's shape (Kinetics-400 head) with every parameter perturbed, eager attention."""
    return make_hf({"num_labels": 400, "num_hidden_layers": layers}, attn="eager", seed=seed)


def relative_logit_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).abs().max() / ref.abs().max().clamp(min=1))


def run(device: str, layers: int) -> dict:
    hf = perturbed_vivit_b(layers=layers).to(device)
    x = torch.randn(1, 32, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        ref_fp32 = hf(x).logits.float()
    results: dict = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "torch": torch.__version__,
        "layers": layers,
        "tokens": 3137,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    for dtype in (torch.float32, torch.bfloat16):
        hf_d = hf.to(dtype)
        hooked = HookedViViT.from_hf_model(hf_d).to(device)
        entry: dict = {}
        for attn in ("eager", "sdpa"):
            report = compare(hooked, hf_d, x, attn=attn)
            worst = report.worst()
            entry[attn] = {
                "ok": report.ok(),
                "tolerance": report.tolerance,
                "worst": worst.name,
                "worst_rel": worst.max_rel,
                "logits_rel": report.rows[-1].max_rel,
            }
        with torch.inference_mode():
            hf_d.set_attn_implementation("sdpa")
            entry["hf_vs_fp32_logits_rel"] = relative_logit_error(hf_d(x.to(dtype)).logits, ref_fp32)
            entry["hooked_vs_fp32_logits_rel"] = relative_logit_error(hooked(x.to(dtype)), ref_fp32)
        results[str(dtype).removeprefix("torch.")] = entry
        hf = hf_d.float()
        del hooked
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    results = run(args.device, args.layers)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_parity.json").write_text(text + "\n")
    ok = all(results[d][a]["ok"] for d in ("float32", "bfloat16") for a in ("eager", "sdpa"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
