"""The ``hooked-vivit`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    from hooked_vivit import HookedViViT

    model = HookedViViT.from_pretrained(args.model, device=args.device)
    print(model)
    if args.hooks:
        for name in model.hook_dict:
            print(name)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import json

    import cv2

    from hooked_vivit import synthetic
    from hooked_vivit.atomic import atomic_directory
    from hooked_vivit.video import write_video

    pos, neg, meta = synthetic.render_pair(args.domain, args.seed, num_frames=args.frames, size=args.size)
    with atomic_directory(args.out) as tmp:
        write_video(pos, tmp / "positive.mp4", fps=args.fps)
        write_video(neg, tmp / "negative.mp4", fps=args.fps)
        grid = synthetic.frame_grid([pos, neg], labels=[meta["outcomes"]["positive"], meta["outcomes"]["negative"]])
        cv2.imwrite(str(tmp / "frames.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        (tmp / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "masks"}, indent=2) + "\n")
    print(f"wrote {args.out}: positive.mp4 ({meta['outcomes']['positive']}), negative.mp4 "
          f"({meta['outcomes']['negative']}), diverging at frame {meta['divergence_frame']}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import pipeline

    if bool(args.clean) != bool(args.corrupted):
        raise ValueError("give both --clean and --corrupted video files, or neither (then a pair is rendered)")
    model = pipeline.load_model(args.model, args.device)
    if args.clean:
        pair = pipeline.video_pair(model, args.clean, args.corrupted)
    else:
        pair = pipeline.rendered_pair(model, args.domain, args.seed)
    results = pipeline.analyze_pair(model, pair, probe_pairs=args.probe_pairs, progress=not args.quiet)
    pipeline.write_analysis(args.out, model, pair, results, overwrite=args.overwrite)
    rec = results["recovery"]["projection"]
    print(f"wrote {args.out}/report.html ({results['seconds']:.1f} s): attention blocks recover "
          f"{min(rec['attn']):.0%}..{max(rec['attn']):.0%}, MLP blocks {min(rec['mlp']):.0%}..{max(rec['mlp']):.0%}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from hooked_vivit.analysis import pipeline

    model = pipeline.load_model(args.model, args.device)
    studies = pipeline.run_study(model, args.domain, args.pairs, args.out, progress=not args.quiet, overwrite=args.overwrite)
    for st in studies:
        g = st["mlp_minus_attn"]
        print(f"{st['domain']}: MLP - attention recovery {g['mean']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}] over {st['pairs']} pairs")
    print(f"wrote {args.out}/report.html")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    import torch
    from transformers import VivitForVideoClassification, VivitModel

    from hooked_vivit import HookedViViT
    from hooked_vivit.config import to_dtype
    from hooked_vivit.loading import resolve_checkpoint
    from hooked_vivit.parity import compare
    from hooked_vivit.video import load_video, preprocess

    if args.model == "organism":
        from hooked_vivit import organism

        path = organism.checkpoint_path()
    else:
        path = resolve_checkpoint(args.model)
    dtype = to_dtype(args.dtype)
    hooked = HookedViViT.from_pretrained(path, device=args.device, dtype=dtype)
    hf_cls = VivitModel if hooked.unembed is None else VivitForVideoClassification  # a backbone has no classifier
    hf = hf_cls.from_pretrained(path, attn_implementation="eager", dtype=dtype).to(args.device).eval()
    cfg = hooked.cfg
    if args.video:
        x = preprocess(load_video(args.video, cfg.num_frames), config=cfg)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(1, cfg.num_frames, cfg.n_channels, *cfg.image_size, generator=gen)
    report = compare(hooked, hf, x, attn="eager")
    print(report.to_markdown(args.tol))
    return 0 if report.ok(args.tol) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hooked-vivit", description="Hooked ViViT: interpretability for video transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe the hooked model")
    info.add_argument("--model", required=True, help="checkpoint directory or hub id")
    info.add_argument("--device", default="cpu")
    info.add_argument("--hooks", action="store_true", help="list every hook name")
    info.set_defaults(func=_cmd_info)

    render = sub.add_parser("render", help="render a procedural minimal pair to mp4 files")
    render.add_argument("--domain", required=True, choices=["bowling", "golf", "basketball"])
    render.add_argument("--seed", type=int, default=4_000_000)
    render.add_argument("--frames", type=int, default=32)
    render.add_argument("--size", type=int, default=224)
    render.add_argument("--fps", type=float, default=25.0)
    render.add_argument("--out", required=True, type=Path)
    render.set_defaults(func=_cmd_render)

    analyze = sub.add_parser("analyze", help="the reference paper's whole analysis of one pair, as a report")
    analyze.add_argument("--clean", type=Path, help="positive video file (e.g. the strike)")
    analyze.add_argument("--corrupted", type=Path, help="negative video file (e.g. the gutter ball)")
    analyze.add_argument("--domain", default="bowling", choices=["bowling", "golf", "basketball"], help="render a pair (without --clean/--corrupted)")
    analyze.add_argument("--seed", type=int, default=4_000_000, help="render seed; 4,000,000-6,999,999 are held out from the organism (default: 4,000,000)")
    analyze.add_argument("--model", default="organism", help="checkpoint directory or hub id; default: the shipped organism")
    analyze.add_argument("--device", default="cpu")
    analyze.add_argument("--probe-pairs", type=int, default=100, help="rendered pairs for the outcome probes (0: skip)")
    analyze.add_argument("--out", type=Path, required=True)
    analyze.add_argument("--overwrite", action="store_true")
    analyze.add_argument("--quiet", action="store_true")
    analyze.set_defaults(func=_cmd_analyze)

    study = sub.add_parser("study", help="(a), (b) and (f) over many rendered pairs, with bootstrap intervals")
    study.add_argument("--domain", nargs="+", default=["bowling", "golf"], choices=["bowling", "golf", "basketball"])
    study.add_argument("--pairs", type=int, default=50)
    study.add_argument("--model", default="organism")
    study.add_argument("--device", default="cpu")
    study.add_argument("--out", type=Path, required=True)
    study.add_argument("--overwrite", action="store_true")
    study.add_argument("--quiet", action="store_true")
    study.set_defaults(func=_cmd_study)

    parity = sub.add_parser("parity", help="compare the hooked model with transformers on a checkpoint (exit 1 above tolerance)")
    parity.add_argument("--model", default="organism", help="checkpoint directory or hub id; default: the shipped organism")
    parity.add_argument("--video", type=Path, help="a clip to run (default: seeded random pixels)")
    parity.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parity.add_argument("--device", default="cpu")
    parity.add_argument("--seed", type=int, default=0)
    parity.add_argument("--tol", type=float, default=None, help="override the dtype's tolerance (fp32 1e-5, fp16 1e-2, bf16 5e-2)")
    parity.set_defaults(func=_cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"hooked-vivit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
