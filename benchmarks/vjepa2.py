"""HookedVJEPA2 forward vs transformers' VJEPA2ForVideoClassification (sdpa and eager), same weights, same input.

    python -m benchmarks.vjepa2 --device cpu --out benchmarks/results        # ViT-L, 16 frames, 256 px
    python -m benchmarks.vjepa2 --layers 2 --reps 5 --eager                   # fewer encoder layers, a quicker look

Round-robin, median kept (benchmarks.run.time_cases). Random weights: V-JEPA 2 ViT-L (d_model 1024, 16 heads,
24 layers, 3 pooler blocks) at 16 frames x 256 px = 2048 tokens, 174 classes (the SSv2 head). Also times the
explicit path the hooked model takes when the patterns are hooked (``use_sdpa=False``) against HF eager (``--eager``).
Writes vjepa2.json / vjepa2.md beside the other results (its own files: benchmarks/run.py's stay as they are).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from transformers import VJEPA2Config, VJEPA2ForVideoClassification

from benchmarks.run import time_cases
from hooked_vivit import HookedVJEPA2

GOAL = 1.05  # hooked / hf_sdpa


def vjepa2_benchmark(
    device: str, dtype: torch.dtype, batch: int, layers: int, frames: int, warmup: int, reps: int, eager: bool
) -> dict:
    config = dict(frames_per_clip=frames, num_labels=174, num_hidden_layers=layers, pred_num_hidden_layers=1)
    torch.manual_seed(0)
    hf = (
        VJEPA2ForVideoClassification._from_config(VJEPA2Config(**config), attn_implementation="sdpa")
        .eval()
        .to(device, dtype)
    )
    hooked = HookedVJEPA2.from_hf_model(hf).to(device)
    x = torch.randn(batch, frames, 3, 256, 256, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def hooked_explicit():
        hooked.cfg.use_sdpa = False
        try:
            return hooked(x)
        finally:
            hooked.cfg.use_sdpa = True

    cases = {"hf_sdpa": lambda: hf(x), "hooked": lambda: hooked(x)}
    if eager:
        hf_eager = (
            VJEPA2ForVideoClassification._from_config(VJEPA2Config(**config), attn_implementation="eager")
            .eval()
            .to(device, dtype)
        )
        hf_eager.load_state_dict(hf.state_dict())
        cases.update({"hf_eager": lambda: hf_eager(x), "hooked explicit (use_sdpa=False)": hooked_explicit})
    with torch.inference_mode():
        diff = float((hooked(x) - hf(x).logits).abs().max())
        times = time_cases(cases, device, warmup, reps)
    ratios = {"hooked V-JEPA 2 / hf_sdpa": times["hooked"] / times["hf_sdpa"]}
    if eager:
        ratios["hooked V-JEPA 2 explicit / hf_eager"] = times["hooked explicit (use_sdpa=False)"] / times["hf_eager"]
    return {
        "config": {"frames": frames, "image_size": 256, "tokens": hooked.cfg.n_ctx, "layers": layers, "batch": batch},
        "max_abs_logit_diff": diff,
        "seconds": times,
        "ratios": ratios,
    }


def to_markdown(results: dict) -> str:
    c = results["config"]
    lines = [
        f"# V-JEPA 2 forward ({results['meta']['device_name']}, {results['meta']['dtype']}, batch {c['batch']}, "
        f"{c['layers']} encoder layers, {c['frames']} frames x 256 px = {c['tokens']} tokens)",
        "",
        "| ratio | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for name, value in results["ratios"].items():
        goal = GOAL if name.endswith("/ hf_sdpa") else None
        lines.append(
            f"| {name} | {value:.3f} | {'' if goal is None else f'<= {goal}'} | {'' if goal is None else ('yes' if value <= goal else 'no')} |"
        )
    lines += ["", "| case | median seconds |", "|---|---|"] + [
        f"| {k} | {v:.3f} |" for k, v in results["seconds"].items()
    ]
    lines += ["", f"max |hooked - hf_sdpa| on the logits: {results['max_abs_logit_diff']:.2e}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--eager", action="store_true", help="also time HF eager against the hooked explicit path (use_sdpa=False)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    results = vjepa2_benchmark(
        args.device, dtype, args.batch, args.layers, args.frames, args.warmup, args.reps, args.eager
    )
    results["meta"] = {
        "device": args.device,
        "device_name": device_name,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "reps": args.reps,
    }
    md = to_markdown(results)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "vjepa2.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "vjepa2.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
